"""Validation helpers shared by the spec rules: clear errors that name the culprit and its range."""

from __future__ import annotations

import math
import numbers

import numpy as np


def real(preset: str, name: str, value, *, lo=None, lo_open=False, hi=None, hi_open=False,
         range_text: str, reason: str = "") -> float:
    """``value`` as a Python float, or ValueError naming ``name`` and ``range_text`` (and, when
    ``value`` is the excluded bound ``lo``, ``reason``: why it is excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{preset}: {name} must be a real number in {range_text}, got {value!r}")
    x = float(value)
    ok = math.isfinite(x)
    if ok and lo is not None:
        ok = x > lo if lo_open else x >= lo
    if ok and hi is not None:
        ok = x < hi if hi_open else x <= hi
    if not ok:
        why = f": {reason}" if reason and x == lo else ""
        raise ValueError(f"{preset}: {name} must be in {range_text}, got {value!r}{why}")
    return x


def nonneg(preset: str, name: str, value) -> float:
    """A finite number >= 0 (learning rates, eps, weight decay)."""
    return real(preset, name, value, lo=0.0, range_text="[0, inf)")


def divisor_eps(preset: str, name: str, value, *, squared: bool = False) -> float:
    """An epsilon added to a denominator (``sqrt(v) + eps``, ``Ibar + eps``, ...): > 0, and still
    > 0 in float32 (squared, where the rule squares it). At 0 an entry whose gradient has been 0
    at every step (or, in SAGE's ``r``, an entry that is exactly 0) becomes 0 / 0 = NaN."""
    nan = ("an entry whose gradient has always been 0 (or, in SAGE's r, whose value is 0) "
           "would become 0 / 0 = NaN")
    x = real(preset, name, value, lo=0.0, lo_open=True, range_text="(0, inf)",
             reason=f"with {name} = 0 {nan}")
    used, text = (x * x, f"{name}**2") if squared else (x, name)
    if np.float32(used) == 0:
        raise ValueError(f"{preset}: {name} must be in (0, inf) with {text} > 0 in float32 (at "
                         f"least 1.4e-45), got {value!r}: {text} = {used:.3g} rounds to 0 in "
                         f"float32, and {nan}")
    return x


def sage_beta3(preset: str, value) -> float:
    """SAGE's sensitivity average rate, in (0, 1). At 0 the average ``Ibar`` is each step's own
    ``I``, so ``U = |I - Ibar| = 0`` and ``r = 0``: no SAGE entry would ever move."""
    return real(preset, "beta3", value, lo=0.0, lo_open=True, hi=1.0, hi_open=True,
                range_text="(0, 1)",
                reason="at beta3 = 0 the average Ibar is each step's own I, so U = |I - Ibar| = 0 "
                       "and r = 0: no SAGE entry would ever move")


def beta(preset: str, name: str, value) -> float:
    """A decay rate in [0, 1)."""
    return real(preset, name, value, lo=0.0, hi=1.0, hi_open=True, range_text="[0, 1)")


def betas(preset: str, value) -> tuple[float, float]:
    """A pair (beta1, beta2), each in [0, 1)."""
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"{preset}: betas must be a pair (beta1, beta2), each in [0, 1), "
                         f"got {value!r}")
    return beta(preset, "betas[0]", pair[0]), beta(preset, "betas[1]", pair[1])


def flag(preset: str, name: str, value) -> bool:
    """A boolean (numpy booleans accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{preset}: {name} must be True or False, got {value!r}")
    return bool(value)


def integer(preset: str, name: str, value, *, allowed_text: str) -> int:
    """An integer (a float with an integral value is accepted)."""
    if isinstance(value, bool):
        raise ValueError(f"{preset}: {name} must be {allowed_text}, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{preset}: {name} must be {allowed_text}, got {value!r}")


def step_count(preset: str, value, label: str) -> int:
    """The step count kept in a state: an integer >= 0."""
    try:
        t = integer(preset, "state['step']", value, allowed_text="an integer >= 0")
    except ValueError as err:
        raise ValueError(f"{err} ({label})") from None
    if t < 0:
        raise ValueError(f"{preset}: state['step'] must be an integer >= 0, got {value!r} "
                         f"({label})")
    return t
