"""The base class of every spec rule: hyperparameter checking, input checking, purity.

A rule is made once from its hyperparameters and is then a pure function of
``(param, grad, state, lr)``::

    rule = spec.make("adamw-sage", lr=1e-3)
    state = rule.init(param)                      # {"step": 0, "exp_avg": zeros, ...}
    param, state, trace = rule.step(param, grad, state, lr=None)

``step`` never writes into its arguments, returns new arrays, and computes in ``param``'s dtype
(a gradient of another float dtype is cast to it first). It is two halves, both public:

- :meth:`Rule.prepare`: everything per tensor that is not elementwise -- the checks (dtype, shape,
  finite gradient, state, lr), this step's lr (a schedule where the rule has one), the step count
  and the per-tensor clipping factor. It reads its inputs and writes nothing.
- :meth:`Rule.update_into`: the update equations, the only place they are written as code: an
  in-place kernel over arrays of any matching shape (a tensor, a block of one, or several
  tensors concatenated), each line under the equation it computes.

``step`` runs the kernel on copies; :class:`minisage.optim.Optimizer` runs it on the parameters
themselves (small ones batched into flat arrays), so both give the same numbers bit for bit.

A subclass states its hyperparameters and defaults in ``defaults``, checks them in ``_validate``,
and writes its update in ``update_into``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from minisage.spec import _checks
from minisage.spec.clipping import clip_factor, grad_norm
from minisage.spec.sage import multiplier_into

#: :meth:`Rule.prepare_many` checks tensors up to this many entries as one flat array
FLAT_CHECK_MAX = 1 << 15
#: the relative margin by which the norm of all gradients must be below the clipping threshold
#: for :meth:`Rule.prepare_many` to know, without each tensor's norm, that none is clipped
CLIP_MARGIN = 1e-3


def _label(name: str | None) -> str:
    """How errors name a tensor."""
    return f"parameter {name!r}" if name else "the parameter"


class _Required:
    def __repr__(self) -> str:
        return "<required>"


#: Marks a hyperparameter without a default (the official Adamax pair's ``lr``).
REQUIRED: Any = _Required()


class Scratch:
    """Reusable temporaries for the update kernels: ``get(i, like)`` is buffer ``i`` viewed with
    ``like``'s shape and dtype (its contents are garbage). A kernel uses each index for one thing
    at a time. Index 0 holds a gradient the caller clipped or the kernel rewrote (``-g``,
    ``g + weight_decay * p``): elementwise, so writing it over itself is safe."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, np.dtype], np.ndarray] = {}

    def get(self, i: int, like: np.ndarray) -> np.ndarray:
        return self.take(i, like.shape, like.dtype, like.size)

    def take(self, i: int, shape: tuple[int, ...], dtype: np.dtype,
             size: int | None = None) -> np.ndarray:
        """Buffer ``i`` viewed with ``shape`` and ``dtype`` (grown when too small)."""
        size = math.prod(shape) if size is None else size
        buf = self._buffers.get((i, dtype))
        if buf is None or buf.size < size:
            buf = self._buffers[(i, dtype)] = np.empty(max(size, 1), dtype)
        return buf[:size].reshape(shape)


class Prepared(NamedTuple):
    """One checked step of one tensor, as :meth:`Rule.prepare` returns it (nothing copied)."""

    #: the parameter, as an array
    param: np.ndarray
    #: the gradient, in the parameter's dtype and shape, not yet clipped
    grad: np.ndarray
    #: the checked state: ``{"step": int, key: array}`` (the caller's arrays)
    state: dict[str, Any]
    #: ``state["step"] + 1``: the step count after this step (1 at the first), which the bias
    #: corrections use; it is the new state's ``step``
    t: int
    #: this step's learning rate
    lr: float
    #: the per-tensor clipping factor ``c`` (``g = g * c``), or None where nothing is clipped
    clip: Any

    def clipped_grad(self, out: np.ndarray | None = None) -> np.ndarray:
        """The gradient after clipping: ``grad * clip``, or ``grad`` itself where no clipping."""
        if self.clip is None:
            return self.grad
        # g = g * c
        return np.multiply(self.grad, self.clip, out=out)


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

    def prepare(self, param: np.ndarray, grad: np.ndarray, state: Mapping[str, Any],
                lr: float | None = None, *, name: str | None = None,
                scratch: Scratch | None = None) -> Prepared:
        """Check one step's inputs and work out everything that is not elementwise.

        Returns :class:`Prepared`: the parameter, the gradient in its dtype, the checked state,
        the step count ``t`` the kernel uses, this step's lr (``lr``, the caller's scheduled lr,
        or the rule's own: its base ``lr`` or, for an official preset made with ``t_total``, its
        internal schedule) and the per-tensor clipping factor of the official presets. Writes
        nothing (``scratch``, optional, is room for the gradient norm).

        Raises FloatingPointError if ``grad`` has a NaN or infinity, ValueError on a shape
        mismatch, a malformed state or a negative ``lr``, TypeError on a non-float array.
        """
        label = _label(name)
        p = self._check_param(param, label)
        g = self._check_grad(grad, p, label)
        max_norm = self._max_grad_norm()
        # One pass decides finiteness: a finite sum (or norm) means finite entries (inf and nan
        # propagate; only an overflow of finite entries needs the second look).
        with np.errstate(over="ignore", invalid="ignore"):
            if max_norm > 0:  # the clipping rules need ||g|| anyway
                room = scratch.get(0, g) if scratch is not None and g.flags.c_contiguous else None
                total = norm = grad_norm(g, out=room)
            else:
                total = g.sum()
            param_total = p.sum()
        for what, a, a_total in (("gradient for", g, total), ("value in", p, param_total)):
            if not math.isfinite(a_total) and not np.isfinite(a).all():
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                raise FloatingPointError(
                    f"{self.name}: non-finite {what} {label} ({bad} of {a.size} entries are NaN "
                    "or infinite); the parameter and its state were left unchanged")
        st = self._check_state(state, p, label)
        if lr is not None:
            lr = _checks.nonneg(self.name, "lr", lr)
        clip = clip_factor(max_norm, norm) if max_norm > 0 else None
        return self._prepared(p, g, st, lr, clip)

    def _prepared(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], lr: float | None,
                  clip: Any) -> Prepared:
        """Checked inputs as :class:`Prepared`: the step count after this step, and this step's
        lr from the count before it."""
        return Prepared(p, g, st, st["step"] + 1, self._step_lr(lr, st["step"]), clip)

    def prepare_many(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                     states: Sequence[Mapping[str, Any]], lr: float | None = None, *,
                     names: Sequence[str | None] | None = None,
                     scratch: Scratch | None = None) -> list[Prepared]:
        """:meth:`prepare` of several tensors: the same results, bit for bit, and the error
        :meth:`prepare` raises for a culprit, with the per-tensor work a few comparisons.

        The numeric checks run once over the small C-contiguous tensors of one dtype, seen as
        one flat array: a finite sum means finite entries, and no tensor's gradient norm
        exceeds the norm of all of them together, so where that is clearly below the clipping
        threshold no tensor is clipped (``clip`` None, as :meth:`prepare` finds); otherwise
        each tensor's norm is summed as :meth:`prepare` sums it. Other tensors go through
        :meth:`prepare` itself. Writes nothing (``scratch``: room for the flat arrays)."""
        names = [None] * len(params) if names is None else list(names)
        if not len(params) == len(grads) == len(states) == len(names):
            raise ValueError(f"{self.name}: prepare_many needs as many grads, states and names "
                             "as params")
        if lr is not None:
            lr = _checks.nonneg(self.name, "lr", lr)
        scratch = Scratch() if scratch is None else scratch
        out: list[Prepared | None] = [None] * len(params)
        flat: dict[np.dtype, list[int]] = {}  # dtype -> the tensors checked as one flat array
        for i, (param, grad) in enumerate(zip(params, grads)):
            p, g = np.asarray(param), np.asarray(grad)
            if (p.dtype.kind == "f" and g.dtype == p.dtype and g.shape == p.shape
                    and p.size <= FLAT_CHECK_MAX and p.flags.c_contiguous
                    and g.flags.c_contiguous):
                flat.setdefault(p.dtype, []).append(i)
            else:
                out[i] = self.prepare(p, g, states[i], lr, name=names[i], scratch=scratch)
        for dtype, members in flat.items():
            clips = self._flat_checks([params[i] for i in members], [grads[i] for i in members],
                                      dtype, scratch)
            if clips is None:  # a sum is not finite: prepare looks closer, names the culprit
                for i in members:
                    out[i] = self.prepare(params[i], grads[i], states[i], lr, name=names[i],
                                          scratch=scratch)
                continue
            for i, clip in zip(members, clips):
                p = np.asarray(params[i])
                st = self._check_state(states[i], p, _label(names[i]))
                out[i] = self._prepared(p, np.asarray(grads[i]), st, lr, clip)
        return out  # type: ignore[return-value]

    def _flat_checks(self, params: list, grads: list, dtype: np.dtype,
                     scratch: Scratch) -> list | None:
        """Each tensor's clipping factor (see :meth:`prepare_many`), or None if a gradient or
        parameter is not finite."""
        total = sum(p.size for p in params)
        p = np.concatenate([a.reshape(-1) for a in params],
                           out=scratch.take(1, (total,), dtype))
        g = np.concatenate([a.reshape(-1) for a in grads], out=scratch.take(0, (total,), dtype))
        max_norm = self._max_grad_norm()
        with np.errstate(over="ignore", invalid="ignore"):
            squares = np.multiply(g, g, out=g)
            # ||g_i|| <= ||(g_1, ..., g_n)||: sums in another order agree to ~n eps, far inside
            # the margin, so when the whole is below it no tensor is clipped
            whole = np.sqrt(np.add.reduce(squares))
            if not (math.isfinite(whole) and math.isfinite(np.add.reduce(p))):
                return None
            if max_norm <= 0 or whole * (1 + CLIP_MARGIN) < max_norm - 1e-6:
                return [None] * len(params)
            bounds = np.cumsum([0] + [a.size for a in params]).tolist()
            # n = sqrt(sum(g * g)), as prepare sums it (a tensor's squares in memory order)
            return [clip_factor(max_norm, np.sqrt(np.add.reduce(squares[a:b])))
                    for a, b in zip(bounds, bounds[1:])]

    def update_into(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray], t: int,
                    lr_t: float, scratch: Scratch, trace: dict | None = None) -> None:
        """The update equations, in place: the one statement of this rule's update.

        Elementwise on arrays of any matching shape. ``p`` and the arrays of ``state`` (the
        rule's ``array_keys``) are updated in place; ``g`` (already clipped) is only read; ``t``
        is :attr:`Prepared.t`, ``lr_t`` this step's lr; ``scratch`` holds the temporaries.
        ``trace``, when a dict, receives copies of the SAGE quantities (``sensitivity``,
        ``sensitivity_ema``, ``sensitivity_ema_hat``, ``uncertainty``, ``lr_multiplier``).
        """
        raise NotImplementedError

    def sage_terms(self, t: int) -> tuple[float, int | None]:
        """SAGE rules: ``(eps_s, correct_bias_at)`` at step ``t``, the two places where the SAGE
        rules differ in their multiplier: the epsilon of ``r = U / (Ihat + eps_s)`` and the step
        at which ``Ibar`` is bias-corrected (None: ``Ihat = Ibar``)."""
        raise TypeError(f"{self.name} is not a SAGE rule: it has no multiplier")

    def multiplier_into(self, p: np.ndarray, g: np.ndarray, ibar: np.ndarray, t: int, *,
                        out: np.ndarray, work: np.ndarray, trace: dict | None = None
                        ) -> np.ndarray:
        """This SAGE rule's multiplier ``r`` at step ``t``, in ``out``; ``ibar`` (the state's
        ``sensitivity_ema``) is advanced in place. The SAGE block of :meth:`update_into`, and all
        that the sensitivity recorder (:mod:`minisage.train.recorder`) runs of a rule: the
        equations are :func:`minisage.spec.sage.multiplier_into`'s, with :meth:`sage_terms`."""
        eps_s, correct_bias_at = self.sage_terms(t)
        return multiplier_into(p, g, ibar, self.hparams["beta3"], eps_s, out=out, work=work,
                               correct_bias_at=correct_bias_at, trace=trace)

    def step(self, param: np.ndarray, grad: np.ndarray, state: Mapping[str, Any],
             lr: float | None = None, *, name: str | None = None,
             trace: bool = True) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
        """One update. Returns ``(new_param, new_state, trace)``; the inputs are left untouched.

        ``lr``: this step's scheduled learning rate; ``None`` uses the rule's own (the base ``lr``,
        or, for an official preset made with ``t_total``, its internal schedule). ``name`` names the
        parameter in error messages. ``trace=False`` returns an empty trace (saves one subtraction).
        The trace holds ``lr``, ``update`` (new param - old param) and, for SAGE rules, the
        sensitivity and its kin (see :meth:`update_into`).

        Raises FloatingPointError if ``grad`` has a NaN or infinity, ValueError on a shape
        mismatch, a malformed state or a negative ``lr``; in every case nothing is modified.
        """
        prep = self.prepare(param, grad, state, lr, name=name)
        new_p = np.array(prep.param, copy=True)
        new_state: dict[str, Any] = {key: np.array(prep.state[key], copy=True)
                                     for key in self.array_keys}
        tr: dict[str, np.ndarray] | None = {} if trace else None
        self.update_into(new_p, prep.clipped_grad(), new_state, prep.t, prep.lr, Scratch(), tr)
        new_state = {"step": prep.t, **new_state}
        if tr is None:
            return new_p, new_state, {}
        tr["lr"] = np.asarray(prep.lr)
        # update = new param - old param
        tr["update"] = np.asarray(new_p - prep.param)
        return new_p, new_state, tr

    # -- internals ------------------------------------------------------------------------------

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

    def _check_param(self, param: np.ndarray, label: str) -> np.ndarray:
        p = np.asarray(param)
        if p.dtype.kind != "f":  # (np.issubdtype(p.dtype, np.floating), faster)
            raise TypeError(f"{self.name}: param must be a floating-point array, got dtype "
                            f"{p.dtype} ({label})")
        return p

    def _check_state(self, state: Mapping[str, Any], p: np.ndarray, label: str) -> dict[str, Any]:
        keys = self.array_keys
        step = state.get("step") if isinstance(state, dict) else None
        if (type(step) is int and step >= 0 and len(state) == len(keys) + 1
                and all(type(a := state.get(k)) is np.ndarray and a.shape == p.shape
                        and a.dtype == p.dtype for k in keys)):
            return dict(state)  # the common case, checked quickly: already in normal form
        if not isinstance(state, Mapping):
            raise ValueError(f"{self.name}: state must be a mapping as returned by init(), got "
                             f"{type(state).__name__} ({label})")
        expected = {"step", *keys}
        if set(state) != expected:
            raise ValueError(f"{self.name}: state keys {sorted(state)} are not the expected "
                             f"{sorted(expected)} ({label})")
        st: dict[str, Any] = {"step": _checks.step_count(self.name, state["step"], label)}
        for key in keys:
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

    def _step_lr(self, lr: float | None, step: int) -> float:
        """This step's lr from the caller's (checked) ``lr`` and the step count before the step;
        the official presets override it with their internal schedule."""
        return self._base_lr(lr)

    def _max_grad_norm(self) -> float:
        """The per-tensor clipping threshold (<= 0: no clipping, the torch-style rules)."""
        return -1.0
