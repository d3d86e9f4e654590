"""SAGE as optax ``GradientTransformation``s, defined by the spec (:mod:`minisage.spec`).

``adamw_sage``, ``adamax_sage`` and ``adam_sage`` are whole optimizers, each implementing two spec
presets (``sage=True``/``False``); the update equations are the spec rule's
(``help(minisage.spec.rule_class(preset))``, docs/spec.md sections 3 and 4). They follow the
spec's order of operations, so float64 results agree with the spec to rounding error
(``minisage crosscheck --backend jax`` checks every golden case). ``scale_by_sage`` is the SAGE
multiplier alone, composable. What is specific to JAX:

- jit-compatible: the hyperparameters are Python constants (or traced scalars under
  ``optax.inject_hyperparams``), the step count lives in the state;
- dtypes: float16 and bfloat16 parameters are updated in float32 -- their Adam moments and SAGE
  statistics are kept in float32 and only the new parameter is rounded to the parameter's dtype
  (in float16, ``eps**2 = 1e-12`` is 0, so a zero ``Ibar`` gives ``0/0``; ``(1 - beta3) |p g|``
  and ``(1 - beta2) g^2`` underflow for ordinary gradients). A float16 step is therefore the
  spec's float32 step on the same inputs, rounded once;
- float64 needs ``jax.config.update("jax_enable_x64", True)`` before any array is created. With
  x64 on, the scalar factors (bias corrections, the schedule) are computed in float64 and rounded
  to the compute dtype, as the spec does with Python floats; with x64 off, in float32
  (``1 - beta**t`` as ``-expm1(t log beta)``, accurate to a few ulps);
- updates: optax adds updates to the parameters, so each transformation computes the spec's new
  parameter and returns ``new_param - param`` in the parameter's dtype (exact when the step is
  smaller than the parameter, i.e. in practice: ``optax.apply_updates`` gives the spec's
  parameter to the last bit). ``params`` must be passed to ``update`` (SAGE needs them);
- schedules: ``lr`` is a number or an optax schedule (``count -> lr_t``, ``count`` = steps
  already taken, 0 first), used wherever the rule uses the lr (as a torch lr scheduler sets the
  group's lr). ``lr_schedule`` instead schedules the step's ``lr_t`` alone and keeps ``lr`` as
  the base lr of the AdamW pair's decay (the spec's ``step(lr=...)``; the official in-optimizer
  schedule ``warmup``/``t_total``/``schedule`` does the same). Give one schedule at most;
- ``optax.inject_hyperparams(adamw_sage)(lr=1e-3)`` works: its numeric hyperparameters become
  state that can be changed between steps (unchecked inside ``jit``); the flags (``sage``,
  ``correct_bias``) stay static. It casts hyperparameters to the parameters' dtype: pass
  ``hyperparam_dtype=jnp.float32`` for half-precision parameters;
- state: ``step`` (int32), ``exp_avg``, ``exp_avg_sq`` or ``exp_inf``, ``sensitivity_ema`` (None
  without SAGE) -- the spec's names, so ``state._asdict()`` of a one-array parameter is a spec
  state;
- groups: :func:`~minisage.backends.jax.labels.official_sage` builds the official split as an
  ``optax.multi_transform`` from the parameter names.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from minisage.backends.jax.hparams import (
    Schedule,
    at,
    base_lr,
    check_one_schedule,
    compute_dtype,
    is_traced,
    maybe_positive,
    one_minus_pow,
    resolve,
    step_lr,
)


class BertAdamWState(NamedTuple):
    """State of :func:`adamw_sage`: the spec's names."""

    step: jax.Array
    exp_avg: optax.Updates
    exp_avg_sq: optax.Updates
    sensitivity_ema: optax.Updates | None


class BertAdamaxState(NamedTuple):
    """State of :func:`adamax_sage`: the spec's names."""

    step: jax.Array
    exp_avg: optax.Updates
    exp_inf: optax.Updates
    sensitivity_ema: optax.Updates | None


class AdamSAGEState(NamedTuple):
    """State of :func:`adam_sage`: the spec's names."""

    step: jax.Array
    exp_avg: optax.Updates
    exp_avg_sq: optax.Updates
    sensitivity_ema: optax.Updates | None


class ScaleBySAGEState(NamedTuple):
    """State of :func:`scale_by_sage`: its step count, the sensitivity EMA, the inner state."""

    step: jax.Array
    sensitivity_ema: optax.Updates
    inner_state: optax.OptState


# ----------------------------------------------------------------------------------------------
# per-leaf pieces
# ----------------------------------------------------------------------------------------------

def _clip_per_tensor(g: jax.Array, max_grad_norm) -> jax.Array:
    """The spec's per-tensor clipping: ``g * c`` where ``c = max_grad_norm/(||g|| + 1e-6) < 1``;
    ``max_grad_norm <= 0`` turns it off."""
    if not maybe_positive(max_grad_norm):
        return g
    max_norm = at(g.dtype, max_grad_norm)
    # n = ||g||_2 ;  c = max_grad_norm / (n + 1e-6) ;  g = g * c if c < 1
    n = jnp.sqrt(jnp.sum(g * g))
    c = max_norm / (n + 1e-6)
    clip = (c < 1) & (max_norm > 0) if is_traced(max_grad_norm) else c < 1
    return jnp.where(clip, g * c, g)


def _sage_multiplier(p, g, ibar, beta3, eps, bc3=None):
    """SAGE's multiplier ``r`` of one leaf and the new ``Ibar``, from the pieces of
    :mod:`minisage.spec.sage`. ``bc3 = 1 - beta3^t``: bias-correct the average (else Ihat = Ibar).
    """
    c = partial(at, p.dtype)
    # I = |p * g|
    I = jnp.abs(p * g)  # noqa: E741
    # Ibar = beta3 * Ibar + (1 - beta3) * I
    ibar = c(beta3) * ibar + c(1 - beta3) * I
    # Ihat = Ibar / (1 - beta3^t) where bias-corrected, else Ibar
    ihat = ibar if bc3 is None else ibar / bc3.astype(ibar.dtype)
    # r = |I - Ihat| / (Ihat + eps)
    return jnp.abs(I - ihat) / (ihat + c(eps)), ibar


def _zeros(params):
    """Zeros like each leaf, in its compute dtype (float32 for half-precision leaves)."""
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=compute_dtype(jnp.asarray(p).dtype)),
                        params)


def _result(treedef, state_type: type, step, out: list, first: list, second: list, ibar: list,
            sage: bool):
    """``(updates, state)`` of the three optimizers from per-leaf lists."""
    unflat = treedef.unflatten
    return unflat(out), state_type(step, unflat(first), unflat(second),
                                   unflat(ibar) if sage else None)


def _init_fn(state_type: type, sage: bool) -> Callable:
    """``init`` of the three optimizers: step 0, two zero moments, a zero sensitivity EMA (None
    without SAGE)."""
    def init_fn(params):
        return state_type(jnp.zeros([], jnp.int32), _zeros(params), _zeros(params),
                          _zeros(params) if sage else None)

    return init_fn


def _leaves(updates, params, *trees):
    """Flatten ``updates`` and the trees of the same structure (None trees stay None lists)."""
    leaves, treedef = jax.tree.flatten(updates)
    if params is None:
        raise ValueError("SAGE needs the parameters: call update(updates, state, params)")
    rest = [None if t is None else treedef.flatten_up_to(t) for t in trees]
    return leaves, treedef, treedef.flatten_up_to(params), rest


def _in_compute_dtype(p0, g):
    """``(dtype, p, g)``: the leaf's compute dtype and its parameter and gradient in it."""
    dt = compute_dtype(p0.dtype)
    return dt, p0.astype(dt), g.astype(dt)


def _update(new_p, p0):
    """What optax adds to ``p0``: the new parameter rounded to ``p0``'s dtype, minus ``p0``."""
    return new_p.astype(p0.dtype) - p0


def _as_flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _checked(preset: str, where: str, lr_schedule, **given) -> dict[str, Any]:
    """The resolved hyperparameters (:func:`~minisage.backends.jax.hparams.resolve`), with at
    most one schedule."""
    h = resolve(preset, where, **given)
    check_one_schedule(where, h, lr_schedule)
    return h


# ----------------------------------------------------------------------------------------------
# the optimizers
# ----------------------------------------------------------------------------------------------

def adamw_sage(lr: float | Schedule = 1e-3, warmup: float = -1, t_total: int = -1,
               schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
               eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True,
               max_grad_norm: float = 1.0, *, sage: bool = True,
               lr_schedule: Schedule | None = None) -> optax.GradientTransformation:
    """The official ``UnstructAwareAdamW``: spec preset ``adamw-sage``; ``sage=False`` gives
    ``bert-adamw`` (the official BERT AdamW).

    The update, per parameter leaf: ``help(minisage.spec.rule_class("adamw-sage"))`` (docs/spec.md
    section 3); clipping is per leaf. ``lr_t``: the official schedule at the incremented step when
    ``t_total != -1``, else ``lr_schedule(count)`` if given, else ``lr`` (or ``lr(count)``). The
    decay uses the base ``lr`` (``lr(count)`` for a schedule). Defaults are the official class's.

    Warning: not ``optax.adamw``: the decay follows the step and uses the base ``lr``.
    """
    where = "adamw_sage"
    h = _checked("adamw-sage", where, lr_schedule, lr=lr, warmup=warmup, t_total=t_total,
                 schedule=schedule, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
                 correct_bias=correct_bias, max_grad_norm=max_grad_norm)
    sage = _as_flag("sage", sage)
    b1, b2 = h["betas"]

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ms, vs, ibars) = _leaves(
            updates, params, state.exp_avg, state.exp_avg_sq, state.sensitivity_ema)
        # t = t + 1
        t = state.step + 1
        # lr_t, the official schedule at the incremented t
        lr_t = step_lr(h, lr_schedule, t, state.step)
        bc1 = one_minus_pow(b1, t)
        bc2 = one_minus_pow(b2, t)
        bc3 = one_minus_pow(h["beta3"], t)
        decay = base_lr(h, state.step) * h["weight_decay"]
        out, new_m, new_v, new_ibar = [], [], [], []
        for k, (g, p0, m, v) in enumerate(zip(leaves, ps, ms, vs)):
            dt, p, g = _in_compute_dtype(p0, g)
            c = partial(at, dt)
            g = _clip_per_tensor(g, h["max_grad_norm"])
            # m = beta1 * m + (1 - beta1) * g ;  v = beta2 * v + (1 - beta2) * g * g
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            # denom = sqrt(v) + eps
            denom = jnp.sqrt(v) + c(h["eps"])
            if sage:
                # r = |I - Ihat| / (Ihat + eps^2), Ihat = Ibar / (1 - beta3^t) if correct_bias
                r, ibar = _sage_multiplier(p, g, ibars[k], h["beta3"], h["eps"] ** 2,
                                           bc3 if h["correct_bias"] else None)
                # s = lr_t * r
                s = lr_t.astype(dt) * r
                if h["correct_bias"]:
                    s = s * (jnp.sqrt(bc2) / bc1).astype(dt)
                # p = p - (m / denom) * s
                new_p = p - m / denom * s
                new_ibar.append(ibar)
            else:
                s = lr_t
                if h["correct_bias"]:
                    s = s * jnp.sqrt(bc2) / bc1
                # p = p - s * m / denom
                new_p = p - s.astype(dt) * m / denom
            if maybe_positive(h["weight_decay"]):
                # p = p - lr * weight_decay * p     (base lr, after the step)
                new_p = new_p - c(decay) * new_p
            out.append(_update(new_p, p0))
            new_m.append(m)
            new_v.append(v)
        return _result(treedef, BertAdamWState, t, out, new_m, new_v, new_ibar, sage)

    return optax.GradientTransformation(_init_fn(BertAdamWState, sage), update_fn)


def adamax_sage(lr: float | Schedule, warmup: float = -1, t_total: int = -1,
                schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
                eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0, *,
                sage: bool = True,
                lr_schedule: Schedule | None = None) -> optax.GradientTransformation:
    """The official ``UnstructAwareAdamax``: spec preset ``adamax-sage``; ``sage=False`` gives
    ``bert-adamax`` (the official BERT Adamax).

    The update, per parameter leaf: ``help(minisage.spec.rule_class("adamax-sage"))``
    (docs/spec.md section 3); clipping is per leaf; ``lr_t`` is scheduled with the step count
    *before* its increment. ``lr`` is required (the official class has no default).

    Warning: not ``optax.adamax``: no bias correction, and the decay is scaled by ``lr_t * r``.
    """
    where = "adamax_sage"
    h = _checked("adamax-sage", where, lr_schedule, lr=lr, warmup=warmup, t_total=t_total,
                 schedule=schedule, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
                 max_grad_norm=max_grad_norm)
    sage = _as_flag("sage", sage)
    b1, b2 = h["betas"]

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ms, us, ibars) = _leaves(
            updates, params, state.exp_avg, state.exp_inf, state.sensitivity_ema)
        t = state.step
        # lr_t, the official schedule at t *before* its increment
        lr_t = step_lr(h, lr_schedule, t, t)
        out, new_m, new_u, new_ibar = [], [], [], []
        for k, (g, p0, m, u) in enumerate(zip(leaves, ps, ms, us)):
            dt, p, g = _in_compute_dtype(p0, g)
            eps = at(dt, h["eps"])
            g = _clip_per_tensor(g, h["max_grad_norm"])
            # m = beta1 * m + (1 - beta1) * g ;  u = max(beta2 * u, |g| + eps)
            m = b1 * m + (1 - b1) * g
            u = jnp.maximum(b2 * u, jnp.abs(g) + eps)
            # update = m / (u + eps)
            update = m / (u + eps)
            if sage:
                # r = |I - Ibar| / (Ibar + eps^2)
                r, ibar = _sage_multiplier(p, g, ibars[k], h["beta3"], h["eps"] ** 2)
                new_ibar.append(ibar)
            if maybe_positive(h["weight_decay"]):
                # update = update + weight_decay * p
                update = update + at(dt, h["weight_decay"]) * p
            # s = lr_t * r  (lr_t without SAGE)
            s = lr_t.astype(dt) * r if sage else lr_t.astype(dt)
            # p = p - s * update
            new_p = p - s * update
            out.append(_update(new_p, p0))
            new_m.append(m)
            new_u.append(u)
        return _result(treedef, BertAdamaxState, t + 1, out, new_m, new_u, new_ibar, sage)

    return optax.GradientTransformation(_init_fn(BertAdamaxState, sage), update_fn)


def adam_sage(lr: float | Schedule = 1e-3, betas=(0.9, 0.999), beta3: float = 0.75,
              eps: float = 1e-8, sage_eps: float = 1e-12, weight_decay: float = 0.0, *,
              sage: bool = True,
              lr_schedule: Schedule | None = None) -> optax.GradientTransformation:
    """The paper's SAGE-Adam as the spec reads it: preset ``adam-sage``; ``sage=False`` gives
    ``torch.optim.AdamW`` (preset ``adamw``).

    The update, per parameter leaf: ``help(minisage.spec.rule_class("adam-sage"))``
    (docs/spec.md section 4). ``lr_t`` is ``lr_schedule(count)``, ``lr(count)`` or ``lr``. The
    composable form ``optax.chain(scale_by_sage(optax.scale_by_adam(b1, b2, eps), beta3=...,
    eps=sage_eps), optax.add_decayed_weights(wd), optax.scale(-lr))`` is the same update up to
    rounding.

    Warning: a reading of the paper, not of the official code (see :func:`adamw_sage`).
    """
    where = "adam_sage"
    h = _checked("adam-sage", where, lr_schedule, lr=lr, betas=betas, beta3=beta3, eps=eps,
                 sage_eps=sage_eps, weight_decay=weight_decay)
    sage = _as_flag("sage", sage)
    b1, b2 = h["betas"]
    wd = h["weight_decay"]

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ms, vs, ibars) = _leaves(
            updates, params, state.exp_avg, state.exp_avg_sq, state.sensitivity_ema)
        # t = t + 1
        t = state.step + 1
        lr_t = step_lr(h, lr_schedule, t, state.step)
        step_size = lr_t / one_minus_pow(b1, t)
        sqrt_bc2 = jnp.sqrt(one_minus_pow(b2, t))
        decay = 1 - lr_t * wd
        out, new_m, new_v, new_ibar = [], [], [], []
        for k, (g, p0, m, v) in enumerate(zip(leaves, ps, ms, vs)):
            dt, p, g = _in_compute_dtype(p0, g)
            if sage:
                # r = |I - Ibar| / (Ibar + sage_eps)
                r, ibar = _sage_multiplier(p, g, ibars[k], h["beta3"], h["sage_eps"])
                new_ibar.append(ibar)
            if maybe_positive(wd):
                # p = p * (1 - lr_t * weight_decay)
                p = p * decay.astype(dt)
            # m = m + (1 - beta1) * (g - m) ;  v = beta2 * v + (1 - beta2) * g * g
            m = m + (1 - b1) * (g - m)
            v = b2 * v + (1 - b2) * g * g
            # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
            denom = jnp.sqrt(v) / sqrt_bc2.astype(dt) + at(dt, h["eps"])
            if sage:
                # p = p - (lr_t / (1 - beta1^t)) * r * m / denom
                new_p = p - step_size.astype(dt) * r * m / denom
            else:
                new_p = p - step_size.astype(dt) * m / denom
            out.append(_update(new_p, p0))
            new_m.append(m)
            new_v.append(v)
        return _result(treedef, AdamSAGEState, t, out, new_m, new_v, new_ibar, sage)

    return optax.GradientTransformation(_init_fn(AdamSAGEState, sage), update_fn)


def scale_by_sage(inner: optax.GradientTransformation | None = None, *, beta3: float = 0.75,
                  eps: float = 1e-12,
                  bias_correction: bool = False) -> optax.GradientTransformation:
    """Multiply what ``inner`` proposes by SAGE's per-entry factor ``r`` (composable form).

    ``r`` is the SAGE multiplier of :mod:`minisage.spec.sage` (``help(minisage.spec.sage)``,
    docs/spec.md section 1) from the incoming updates ``g`` (the gradient, after any clipping
    earlier in the chain) and the parameters; ``bias_correction=True`` divides the sensitivity
    average by ``1 - beta3^t`` first, as ``adamw-sage`` does. The output is ``inner(g) * r``
    (``inner=None``: ``g * r``), in the proposal's dtype; ``r`` and the sensitivity EMA are in
    float32 for half-precision leaves. ``eps`` is the multiplier's epsilon (the paper's; the
    official code uses the optimizer's ``eps**2``). Example, the paper's SAGE-Adam with AdamW's
    decay::

        optax.chain(scale_by_sage(optax.scale_by_adam(eps=1e-8), beta3=0.75),
                    optax.add_decayed_weights(0.01), optax.scale(-lr))

    This agrees with :func:`adam_sage` up to rounding; :func:`adam_sage`, :func:`adamw_sage` and
    :func:`adamax_sage` follow the spec's order of operations exactly.
    """
    h = resolve("adam-sage", "scale_by_sage", beta3=beta3, sage_eps=eps)
    bias_correction = _as_flag("bias_correction", bias_correction)

    def init_fn(params):
        inner_state = inner.init(params) if inner is not None else optax.EmptyState()
        return ScaleBySAGEState(jnp.zeros([], jnp.int32), _zeros(params), inner_state)

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ibars,) = _leaves(updates, params, state.sensitivity_ema)
        t = state.step + 1
        bc3 = one_minus_pow(h["beta3"], t)
        rs, new_ibar = [], []
        for g, p0, ibar in zip(leaves, ps, ibars):
            _, p, g = _in_compute_dtype(p0, g)
            # r = |I - Ihat| / (Ihat + eps), Ihat = Ibar / (1 - beta3^t) if bias_correction
            r, ibar = _sage_multiplier(p, g, ibar, h["beta3"], h["sage_eps"],
                                       bc3 if bias_correction else None)
            rs.append(r)
            new_ibar.append(ibar)
        if inner is not None:
            proposed, inner_state = inner.update(updates, state.inner_state, params)
        else:
            proposed, inner_state = updates, state.inner_state
        prop_leaves = treedef.flatten_up_to(proposed)
        # u = inner(g) * r
        out = [(u.astype(r.dtype) * r).astype(u.dtype) for u, r in zip(prop_leaves, rs)]
        return treedef.unflatten(out), ScaleBySAGEState(t, treedef.unflatten(new_ibar),
                                                        inner_state)

    return optax.GradientTransformation(init_fn, update_fn)
