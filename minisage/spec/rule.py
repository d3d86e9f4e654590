"""The base class of every spec rule: hyperparameter checking, input checking, purity.

A rule is made once from its hyperparameters and is then a pure function of
``(param, grad, state, lr)``::

    rule = spec.make("adamw-sage", lr=1e-3)
    state = rule.init(param)                      # {"step": 0, "exp_avg": zeros, ...}
    param, state, trace = rule.step(param, grad, state, lr=None)

``step`` never writes into its arguments, returns new arrays, and computes in ``param``'s dtype
(a gradient of another float dtype is cast to it first). A subclass states its hyperparameters and
defaults in ``defaults``, checks them in ``_validate``, and writes its update equations in
``_update``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from minisage.spec import _checks


class _Required:
    def __repr__(self) -> str:
        return "<required>"


#: Marks a hyperparameter without a default (the official Adamax pair's ``lr``).
REQUIRED: Any = _Required()


class Rule:
    """One optimizer rule with fixed hyperparameters. Make one with :func:`minisage.spec.make`."""

    #: the preset name, e.g. ``"adamw-sage"``
    name: ClassVar[str] = ""
    #: the implementation this rule reproduces, in words
    reproduces: ClassVar[str] = ""
    #: hyperparameter name -> default (``REQUIRED`` when there is none)
    defaults: ClassVar[dict[str, Any]] = {}
    #: accepted alternative spellings -> what they stand for (documentation and error messages)
    aliases: ClassVar[dict[str, str]] = {}
    #: whether this is a SAGE rule (its trace carries the sensitivity)
    sage: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        given = self._fold_aliases(dict(hparams))
        for key in given:
            if key not in self.defaults:
                allowed = ", ".join([*self.defaults, *self.aliases])
                raise ValueError(f"{self.name}: unknown hyperparameter {key!r}; "
                                 f"allowed: {allowed}")
        missing = [k for k, v in self.defaults.items() if v is REQUIRED and k not in given]
        if missing:
            raise ValueError(f"{self.name}: {', '.join(missing)} is required "
                             "(the implementation it reproduces has no default)")
        merged = {**self.defaults, **given}
        self.hparams: dict[str, Any] = self._validate(merged)

    # -- hyperparameters ------------------------------------------------------------------------

    def _fold_aliases(self, given: dict[str, Any]) -> dict[str, Any]:
        """Rewrite alias spellings (``aliases``) into canonical names; overridden where needed."""
        return given

    def _validate(self, hp: dict[str, Any]) -> dict[str, Any]:
        """Check and normalise every hyperparameter; return the dict kept as ``self.hparams``."""
        raise NotImplementedError

    @property
    def array_keys(self) -> tuple[str, ...]:
        """The names of the state's arrays (each of the parameter's shape and dtype)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"spec.make({self.name!r}, {args})"

    # -- the public, checked entry points --------------------------------------------------------

    def init(self, param: np.ndarray) -> dict[str, Any]:
        """The initial state: ``{"step": 0}`` plus zero arrays of ``param``'s shape and dtype."""
        p = self._check_param(param, "the parameter")
        state: dict[str, Any] = {"step": 0}
        for key in self.array_keys:
            state[key] = np.zeros_like(p)
        return state

    def _check_grad(self, grad, p: np.ndarray, label: str) -> np.ndarray:
        """``grad`` as an array of ``p``'s shape and dtype, or ValueError/TypeError naming it."""
        g = np.asarray(grad)
        if g.shape != p.shape:
            raise ValueError(f"{self.name}: grad shape {g.shape} does not match param shape "
                             f"{p.shape} ({label})")
        if g.dtype != p.dtype:
            if not (np.issubdtype(g.dtype, np.floating) or np.issubdtype(g.dtype, np.integer)):
                raise TypeError(f"{self.name}: grad must be a real array, got dtype {g.dtype} "
                                f"({label})")
            g = g.astype(p.dtype)
        return g

    def step(self, param: np.ndarray, grad: np.ndarray, state: Mapping[str, Any],
             lr: float | None = None, *, name: str | None = None,
             trace: bool = True) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
        """One update. Returns ``(new_param, new_state, trace)``; the inputs are left untouched.

        ``lr``: this step's scheduled learning rate; ``None`` uses the rule's own (the base ``lr``,
        or, for an official preset made with ``t_total``, its internal schedule). ``name`` names the
        parameter in error messages. ``trace=False`` returns an empty trace (saves one subtraction).

        Raises FloatingPointError if ``grad`` has a NaN or infinity, ValueError on a shape
        mismatch, a malformed state or a negative ``lr``; in every case nothing is modified.
        """
        label = f"parameter {name!r}" if name else "the parameter"
        p = self._check_param(param, label)
        g = self._check_grad(grad, p, label)
        if not np.isfinite(g).all():
            bad = int(g.size - np.count_nonzero(np.isfinite(g)))
            raise FloatingPointError(
                f"{self.name}: non-finite gradient for {label} ({bad} of {g.size} entries are "
                "NaN or infinite); the parameter and its state were left unchanged")
        st = self._check_state(state, p, label)
        if lr is not None:
            lr = _checks.nonneg(self.name, "lr", lr)
        new_p, new_state, tr = self._update(p, g, st, lr)
        # NumPy turns 0-d results into scalars; keep them arrays
        new_p = np.asarray(new_p)
        for key in self.array_keys:
            new_state[key] = np.asarray(new_state[key])
        if not trace:
            return new_p, new_state, {}
        for key, value in tr.items():
            tr[key] = np.asarray(value)
        # update = new param - old param
        tr["update"] = np.asarray(new_p - p)
        return new_p, new_state, tr

    # -- internals ------------------------------------------------------------------------------

    def _check_param(self, param: np.ndarray, label: str) -> np.ndarray:
        p = np.asarray(param)
        if not np.issubdtype(p.dtype, np.floating):
            raise TypeError(f"{self.name}: param must be a floating-point array, got dtype "
                            f"{p.dtype} ({label})")
        return p

    def _check_state(self, state: Mapping[str, Any], p: np.ndarray, label: str) -> dict[str, Any]:
        if not isinstance(state, Mapping):
            raise ValueError(f"{self.name}: state must be a mapping as returned by init(), got "
                             f"{type(state).__name__} ({label})")
        expected = {"step", *self.array_keys}
        if set(state) != expected:
            raise ValueError(f"{self.name}: state keys {sorted(state)} are not the expected "
                             f"{sorted(expected)} ({label})")
        st: dict[str, Any] = {"step": _checks.step_count(self.name, state["step"], label)}
        for key in self.array_keys:
            a = np.asarray(state[key])
            if a.shape != p.shape or a.dtype != p.dtype:
                raise ValueError(f"{self.name}: state[{key!r}] has shape {a.shape} and dtype "
                                 f"{a.dtype}; the parameter has shape {p.shape} and dtype "
                                 f"{p.dtype} ({label})")
            st[key] = a
        return st

    def _base_lr(self, lr: float | None) -> float:
        """This step's lr: the caller's scheduled ``lr`` if given, else the rule's base ``lr``."""
        return self.hparams["lr"] if lr is None else lr

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, Any],
                lr: float | None) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
        """The update equations. ``lr`` is the caller's override or None. Must not mutate inputs."""
        raise NotImplementedError

