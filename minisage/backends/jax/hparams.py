"""Hyperparameters of the jax transformations: numbers, schedules, traced values, dtypes.

A numeric hyperparameter reaches a transformation of :mod:`minisage.backends.jax.optimizers` in
one of three forms:

- a Python number (the usual call), checked by the spec preset's own checks and used as a Python
  number: weakly typed, so each array operation takes it in the array's dtype, as NumPy does in
  the spec;
- a concrete scalar array (``optax.inject_hyperparams`` at ``init``, or in an eager ``update``):
  made a Python number, then as above;
- a traced scalar (``optax.inject_hyperparams`` inside ``jit``): it has no value to check yet; it
  is used as an array in the scalar dtype and cast to each leaf's compute dtype where it meets one.

``lr`` may also be a schedule, ``count -> lr`` (``count`` = steps already taken, 0 first).

Dtypes: a leaf's statistics are computed and kept in its *compute dtype*, float32 for float16 and
bfloat16 parameters (:func:`compute_dtype`); scalar factors (bias corrections, schedules) in the
*scalar dtype*, float64 when x64 is on, else float32 (:func:`scalar_dtype`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from minisage import spec

Schedule = Callable[[jax.Array], Any]

_HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def scalar_dtype():
    """float64 when ``jax_enable_x64`` is on, else float32: the dtype of the scalar factors."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype a leaf's update is computed in and its state kept in: float32 for float16 and
    bfloat16 parameters (their ``eps**2 = 1e-12`` is 0 and ``0.25 * |p * g|`` underflows), else
    the parameter's own dtype."""
    return jnp.promote_types(dtype, jnp.float32)


def is_traced(x) -> bool:
    """Whether ``x`` is a jax tracer (a value known only when the compiled function runs)."""
    return isinstance(x, jax.core.Tracer)


def at(dtype, x):
    """The scalar hyperparameter ``x`` for arithmetic with arrays of ``dtype``: a Python number
    as it is (weakly typed), an array cast to ``dtype``."""
    return x if isinstance(x, (int, float)) else jnp.asarray(x).astype(dtype)


def _number(name: str, where: str, value):
    """A concrete scalar array as a Python number; anything else unchanged, for the spec's checks.
    """
    if not isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return value
    if np.ndim(value) != 0:
        raise ValueError(f"{where}: {name} must be a scalar, got an array of shape "
                         f"{np.shape(value)}")
    return value.item()


def _is_half(value) -> bool:
    return hasattr(value, "dtype") and jnp.dtype(value.dtype) in _HALF


def resolve(preset: str, where: str, **given: Any) -> dict[str, Any]:
    """``given`` checked by ``spec.make(preset, ...)`` and resolved with the preset's defaults.

    Traced values are not checked (the check sees the default, or ``lr=0`` where the preset
    requires one) and come back as scalar-dtype arrays; a schedule given as ``lr`` is checked
    by its value at count 0 and comes back as it is. Hyperparameters that arrive in half
    precision (``optax.inject_hyperparams`` casts them to the parameters' dtype) get a warning.
    """
    checked, kept = {}, {}
    half = [name for name, value in given.items() if _is_half(value)]
    if half:
        warnings.warn(f"{where}: {', '.join(half)} arrived as half-precision scalars "
                      "(optax.inject_hyperparams casts hyperparameters to the parameters' "
                      "dtype; float16 rounds eps=1e-6 to 1.0133e-06): pass "
                      "hyperparam_dtype=jnp.float32 to keep them exact", stacklevel=3)
    for name, value in given.items():
        if callable(value):
            if name != "lr":
                raise ValueError(f"{where}: {name} must be a number, got the callable {value!r} "
                                 "(only lr takes a schedule)")
            kept[name] = value
            value = value(jnp.zeros([], jnp.int32))
        if is_traced(value):
            kept[name] = jnp.asarray(value).astype(scalar_dtype())
            if name == "lr":
                checked["lr"] = 0.0
            continue
        checked[name] = _number(name, where, value)
    h = spec.make(preset, **checked).hparams
    h.update(kept)
    return h


def one_minus_pow(beta, t: jax.Array) -> jax.Array:
    """``1 - beta**t`` for an integer ``t >= 1``, without float32 cancellation.

    ``1 - beta**t`` in float32 loses the digits of ``beta`` itself: float32's 0.999 is
    0.99900001287..., so ``1 - beta2`` is off by 1.3e-5 relative. ``-expm1(t log beta)``, with
    ``log beta`` of a Python ``beta`` taken in double, is accurate to a few float32 ulps (a traced
    ``beta`` arrives already rounded to its dtype; ``beta = 0`` gives ``-expm1(-inf) = 1``).
    """
    sdt = scalar_dtype()
    if isinstance(beta, (int, float)):
        if beta == 0:
            return jnp.ones((), sdt)
        return -jnp.expm1(t.astype(sdt) * math.log(beta))
    return -jnp.expm1(t.astype(sdt) * jnp.log(beta))


def _official_lr(lr, step: jax.Array, t_total, warmup, schedule: str) -> jax.Array:
    """:func:`minisage.spec.official_lr` for ``t_total != -1``, with a traced step count (and
    possibly traced hyperparameters: no Python branch on them)."""
    sdt = scalar_dtype()
    x = step.astype(sdt) / t_total
    if schedule == "warmup_linear":
        after = 1.0 - x
    elif schedule == "warmup_constant":
        after = jnp.ones((), sdt)
    elif schedule == "warmup_linear_xdl":
        after = (1.0 - x) / (1.0 - warmup)
    else:  # the spec has already rejected it
        raise ValueError(f"unknown official schedule {schedule!r}")
    during = x / (jnp.where(warmup != 0, warmup, 1.0) if is_traced(warmup)
                  else (warmup if warmup != 0 else 1.0))
    return lr * jnp.where(x < warmup, during, after)


def _value(lr, count: jax.Array) -> jax.Array:
    """``lr(count)`` for a schedule, else ``lr``, in the scalar dtype."""
    return jnp.asarray(lr(count) if callable(lr) else lr).astype(scalar_dtype())


def check_one_schedule(where: str, h: dict[str, Any], lr_schedule) -> None:
    """Refuse two schedules at once: the official one (``t_total``) and ``lr_schedule`` or a
    schedule given as ``lr`` (traced ``t_total`` are checked when ``init`` runs)."""
    t_total = h.get("t_total", -1)
    if is_traced(t_total) or t_total == -1:
        if callable(h["lr"]) and lr_schedule is not None:
            raise ValueError(f"{where}: give a schedule as lr or lr_schedule, not both")
        return
    if lr_schedule is not None or callable(h["lr"]):
        raise ValueError(f"{where}: give a schedule (as lr or lr_schedule) or the official "
                         f"schedule (t_total={t_total}), not both")


def step_lr(h: dict[str, Any], lr_schedule, step: jax.Array, count: jax.Array) -> jax.Array:
    """This step's ``lr_t``, in the scalar dtype: the official schedule at ``step`` when
    ``t_total != -1``; else ``lr_schedule`` (a schedule at ``count``, or its value, as
    ``optax.inject_hyperparams`` passes it); else ``lr`` (a schedule at ``count``, or a number).
    """
    own = _value(h["lr"] if lr_schedule is None else lr_schedule, count)
    t_total = h.get("t_total", -1)
    if not is_traced(t_total) and t_total == -1:
        return own
    official = _official_lr(h["lr"], step, t_total, h["warmup"], h["schedule"])
    return jnp.where(t_total == -1, own, official) if is_traced(t_total) else official


def base_lr(h: dict[str, Any], count: jax.Array):
    """The lr of the AdamW pair's decay: the base ``lr``, or, for a schedule given as ``lr``, its
    value at ``count`` (as a torch lr scheduler sets the group's lr)."""
    return _value(h["lr"], count) if callable(h["lr"]) else h["lr"]


def maybe_positive(x) -> bool:
    """Whether ``x > 0`` may hold: true of a traced value (its branch is computed; with ``x = 0``
    it changes nothing), else ``x > 0``."""
    return is_traced(x) or x > 0
