"""SAGE for JAX as optax ``GradientTransformation``s, defined by the spec (:mod:`minisage.spec`).

Needs the ``jax`` extra (``pip install "minisage[jax]"``: jax and optax)::

    adamw_sage(...)    sage=True: "adamw-sage"    sage=False: "bert-adamw"   (official AdamW pair)
    adamax_sage(...)   sage=True: "adamax-sage"   sage=False: "bert-adamax"  (official Adamax pair)
    adam_sage(...)     sage=True: "adam-sage"     sage=False: "adamw"        (the paper's reading)
    scale_by_sage(inner)   the SAGE multiplier r on top of any transformation (composable)

The first three are whole optimizers with the spec's hyperparameter names and defaults, written
with the spec's order of operations, so float64 results agree with the spec to rounding error
(``minisage crosscheck --backend jax`` checks every golden case). They are jit-compatible (the
hyperparameters are Python constants; the step count lives in the state).

float64: JAX computes in float32 unless ``jax.config.update("jax_enable_x64", True)`` is called
before any array is created. Do that for float64 parameters (``minisage crosscheck`` and the tests
do). With x64 on, the scalar factors (bias corrections, the schedule) are computed in float64 and
rounded to the parameter's dtype, exactly as the spec does with Python floats; with x64 off they
are computed in float32 (``1 - beta**t`` as ``-expm1(t log beta)``, accurate to a few ulps).

Updates: optax adds its updates to the parameters. Each transformation computes the new parameter
exactly as the spec does and returns ``new_param - param``; when the step is smaller than the
parameter (always, in practice) that difference is exact, so ``optax.apply_updates`` gives the
spec's parameter to the last bit. ``params`` must be passed to ``update`` (SAGE needs them).

Schedules: ``lr`` is the base learning rate. ``lr_schedule`` (an optax schedule, ``count ->
lr_t`` with ``count`` the number of steps already taken, 0 first, as ``torch`` ``LambdaLR``)
gives the step's lr; the AdamW pair's decay keeps using the base ``lr`` (as the spec does). The
official in-optimizer schedule (``warmup``, ``t_total``, ``schedule``) of the AdamW and Adamax
pairs is supported exactly as in the spec; use one or the other.

Per-parameter groups (the official split: SAGE on attention and feed-forward weights and biases,
decay except on biases and LayerNorm): :func:`official_sage` builds an ``optax.multi_transform``
from the parameter names; :func:`sage_labels` gives the labels alone.

State: ``step`` (int32), ``exp_avg``, ``exp_avg_sq`` or ``exp_inf``, ``sensitivity_ema`` (None
without SAGE) -- the spec's names, so ``state._asdict()`` of a single-array parameter is a spec
state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from minisage import spec
from minisage.spec.split import DEFAULT_NO_DECAY_PATTERNS, SAGE_PATTERNS, official_group

__all__ = [
    "adamw_sage", "adamax_sage", "adam_sage", "scale_by_sage", "sage_labels", "official_sage",
    "BertAdamWState", "BertAdamaxState", "AdamSAGEState", "ScaleBySAGEState",
    "golden_step_functions", "resolve_device",
]

Schedule = Callable[[jax.Array], Any]


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
# scalar helpers (bias corrections, schedules), in float64 when x64 is on
# ----------------------------------------------------------------------------------------------

def _scalar_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _one_minus_pow(beta: float, t: jax.Array) -> jax.Array:
    """``1 - beta**t`` for a traced integer ``t >= 1``, without float32 cancellation.

    ``1 - beta**t`` in float32 loses the digits of ``beta`` itself: float32's 0.999 is
    0.99900001287..., so ``1 - beta2`` is off by 1.3e-5 relative. ``-expm1(t log beta)``, with
    ``log beta`` taken in double, is accurate to a few float32 ulps.
    """
    if beta == 0:
        return jnp.ones((), _scalar_dtype())
    return -jnp.expm1(t.astype(_scalar_dtype()) * math.log(beta))


def _official_lr(lr: float, step: jax.Array, t_total: int, warmup: float,
                 schedule: str) -> jax.Array:
    """:func:`minisage.spec.official_lr` with a traced step count."""
    sdt = _scalar_dtype()
    if t_total == -1:
        return jnp.asarray(lr, sdt)
    x = step.astype(sdt) / t_total
    if schedule == "warmup_linear":
        after = 1.0 - x
    elif schedule == "warmup_constant":
        after = jnp.ones((), sdt)
    elif schedule == "warmup_linear_xdl":
        after = (1.0 - x) / (1.0 - warmup)
    else:  # the spec has already rejected it
        raise ValueError(f"unknown official schedule {schedule!r}")
    during = x / (warmup if warmup != 0 else 1.0)
    return lr * jnp.where(x < warmup, during, after)


def _scheduled(lr: float, lr_schedule: Schedule | None, count: jax.Array) -> jax.Array:
    if lr_schedule is None:
        return jnp.asarray(lr, _scalar_dtype())
    return jnp.asarray(lr_schedule(count), _scalar_dtype())


def _clip_per_tensor(g: jax.Array, max_grad_norm: float) -> jax.Array:
    """The spec's per-tensor clipping: ``g * c`` where ``c = max_grad_norm/(||g|| + 1e-6) < 1``."""
    if max_grad_norm <= 0:
        return g
    # n = ||g||_2 ;  c = max_grad_norm / (n + 1e-6) ;  g = g * c if c < 1
    n = jnp.sqrt(jnp.sum(g * g))
    c = max_grad_norm / (n + 1e-6)
    return jnp.where(c < 1, g * c, g)


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _leaves(updates, params, *trees):
    """Flatten ``updates`` and the trees of the same structure (None trees stay None lists)."""
    leaves, treedef = jax.tree.flatten(updates)
    if params is None:
        raise ValueError("SAGE needs the parameters: call update(updates, state, params)")
    rest = [None if t is None else treedef.flatten_up_to(t) for t in trees]
    return leaves, treedef, treedef.flatten_up_to(params), rest


def _check(preset: str, **hparams) -> dict[str, Any]:
    return spec.make(preset, **hparams).hparams


def _as_flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# ----------------------------------------------------------------------------------------------
# the optimizers
# ----------------------------------------------------------------------------------------------

def adamw_sage(lr: float = 1e-3, warmup: float = -1, t_total: int = -1,
               schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
               eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True,
               max_grad_norm: float = 1.0, *, sage: bool = True,
               lr_schedule: Schedule | None = None) -> optax.GradientTransformation:
    """AdamW-SAGE exactly as the official ``UnstructAwareAdamW`` (spec preset ``adamw-sage``);
    ``sage=False`` gives the official BERT AdamW (``bert-adamw``).

    Update, per parameter leaf (``t`` incremented first)::

        t     = t + 1
        g     = g * c  where c = max_grad_norm / (||g||_2 + 1e-6) < 1      (per leaf)
        m     = beta1 * m + (1 - beta1) * g
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) + eps
        I     = |p * g|;  Ibar = beta3 * Ibar + (1 - beta3) * I           (sage only)
        Ihat  = Ibar / (1 - beta3^t)   if correct_bias, else Ibar
        r     = |I - Ihat| / (Ihat + eps^2)                                (sage only; else 1)
        s     = lr_t * r * (sqrt(1 - beta2^t) / (1 - beta1^t))   (the factor if correct_bias)
        p     = p - (m / denom) * s
        p     = p - lr * weight_decay * p     if weight_decay > 0 (base lr, after the step, no r)

    ``lr_t``: the official schedule at the incremented ``t`` when ``t_total != -1``, else
    ``lr_schedule(t - 1)`` if given, else ``lr``. Defaults are the official class's.

    Warning: unlike ``optax.adamw`` the decay comes after the step with the unscheduled lr, eps
    sits in the uncorrected denominator, and each leaf is clipped at norm 1.0 by default.
    """
    h = _check("adamw-sage", lr=lr, warmup=warmup, t_total=t_total, schedule=schedule,
               betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
               correct_bias=correct_bias, max_grad_norm=max_grad_norm)
    sage = _as_flag("sage", sage)
    if lr_schedule is not None and h["t_total"] != -1:
        raise ValueError("adamw_sage: give lr_schedule or the official schedule (t_total), "
                         "not both")
    b1, b2 = h["betas"]

    def init_fn(params):
        return BertAdamWState(jnp.zeros([], jnp.int32), _zeros(params), _zeros(params),
                              _zeros(params) if sage else None)

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ms, vs, ibars) = _leaves(
            updates, params, state.exp_avg, state.exp_avg_sq, state.sensitivity_ema)
        # t = t + 1
        t = state.step + 1
        if h["t_total"] != -1:
            lr_t = _official_lr(h["lr"], t, h["t_total"], h["warmup"], h["schedule"])
        else:
            lr_t = _scheduled(h["lr"], lr_schedule, state.step)
        bc1 = _one_minus_pow(b1, t)
        bc2 = _one_minus_pow(b2, t)
        bc3 = _one_minus_pow(h["beta3"], t)
        out, new_m, new_v, new_ibar = [], [], [], []
        for k, (g, p, m, v) in enumerate(zip(leaves, ps, ms, vs)):
            dt = p.dtype
            g = _clip_per_tensor(g.astype(dt), h["max_grad_norm"])
            # m = beta1 * m + (1 - beta1) * g ;  v = beta2 * v + (1 - beta2) * g * g
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            # denom = sqrt(v) + eps
            denom = jnp.sqrt(v) + h["eps"]
            if sage:
                b3 = h["beta3"]
                # I = |p * g| ;  Ibar = beta3 * Ibar + (1 - beta3) * I
                I = jnp.abs(p * g)  # noqa: E741
                ibar = b3 * ibars[k] + (1 - b3) * I
                # Ihat = Ibar / (1 - beta3^t) if correct_bias
                ihat = ibar / bc3.astype(dt) if h["correct_bias"] else ibar
                # r = |I - Ihat| / (Ihat + eps^2) ;  s = lr_t * r
                r = jnp.abs(I - ihat) / (ihat + h["eps"] ** 2)
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
            if h["weight_decay"] > 0:
                # p = p - lr * weight_decay * p     (base lr, after the step)
                new_p = new_p - h["lr"] * h["weight_decay"] * new_p
            out.append(new_p - p)
            new_m.append(m)
            new_v.append(v)
        unflat = treedef.unflatten
        return unflat(out), BertAdamWState(t, unflat(new_m), unflat(new_v),
                                           unflat(new_ibar) if sage else None)

    return optax.GradientTransformation(init_fn, update_fn)


def adamax_sage(lr: float, warmup: float = -1, t_total: int = -1,
                schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
                eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0, *,
                sage: bool = True,
                lr_schedule: Schedule | None = None) -> optax.GradientTransformation:
    """Adamax-SAGE exactly as the official ``UnstructAwareAdamax`` (spec preset
    ``adamax-sage``); ``sage=False`` gives the official BERT Adamax (``bert-adamax``).

    Update, per parameter leaf (``t`` incremented *last*)::

        g      = g * c  where c = max_grad_norm / (||g||_2 + 1e-6) < 1     (per leaf)
        m      = beta1 * m + (1 - beta1) * g
        u      = max(beta2 * u, |g| + eps)
        update = m / (u + eps)                         (eps twice; no bias correction)
        I      = |p * g|;  Ibar = beta3 * Ibar + (1 - beta3) * I          (sage only)
        update = update + weight_decay * p             if weight_decay > 0
        r      = |I - Ibar| / (Ibar + eps^2)                              (sage only; else 1)
        p      = p - lr_t * r * update                 (lr_t: schedule at t *before* increment)
        t      = t + 1

    ``lr`` is required (the official class has no default). Warning: unlike ``optax.adamax``
    there is no bias correction, eps enters twice and the decay is scaled by ``lr_t * r``.
    """
    h = _check("adamax-sage", lr=lr, warmup=warmup, t_total=t_total, schedule=schedule,
               betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
               max_grad_norm=max_grad_norm)
    sage = _as_flag("sage", sage)
    if lr_schedule is not None and h["t_total"] != -1:
        raise ValueError("adamax_sage: give lr_schedule or the official schedule (t_total), "
                         "not both")
    b1, b2 = h["betas"]
    eps = h["eps"]

    def init_fn(params):
        return BertAdamaxState(jnp.zeros([], jnp.int32), _zeros(params), _zeros(params),
                               _zeros(params) if sage else None)

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ms, us, ibars) = _leaves(
            updates, params, state.exp_avg, state.exp_inf, state.sensitivity_ema)
        t = state.step
        if h["t_total"] != -1:
            lr_t = _official_lr(h["lr"], t, h["t_total"], h["warmup"], h["schedule"])
        else:
            lr_t = _scheduled(h["lr"], lr_schedule, t)
        out, new_m, new_u, new_ibar = [], [], [], []
        for k, (g, p, m, u) in enumerate(zip(leaves, ps, ms, us)):
            dt = p.dtype
            g = _clip_per_tensor(g.astype(dt), h["max_grad_norm"])
            # m = beta1 * m + (1 - beta1) * g ;  u = max(beta2 * u, |g| + eps)
            m = b1 * m + (1 - b1) * g
            u = jnp.maximum(b2 * u, jnp.abs(g) + eps)
            # update = m / (u + eps)
            update = m / (u + eps)
            if sage:
                b3 = h["beta3"]
                # I = |p * g| ;  Ibar = beta3 * Ibar + (1 - beta3) * I
                I = jnp.abs(p * g)  # noqa: E741
                ibar = b3 * ibars[k] + (1 - b3) * I
                new_ibar.append(ibar)
            if h["weight_decay"] > 0:
                # update = update + weight_decay * p
                update = update + h["weight_decay"] * p
            if sage:
                # r = |I - Ibar| / (Ibar + eps^2) ;  s = lr_t * r
                s = lr_t.astype(dt) * (jnp.abs(I - ibar) / (ibar + eps**2))
            else:
                s = lr_t.astype(dt)
            # p = p - s * update
            new_p = p - s * update
            out.append(new_p - p)
            new_m.append(m)
            new_u.append(u)
        unflat = treedef.unflatten
        return unflat(out), BertAdamaxState(t + 1, unflat(new_m), unflat(new_u),
                                            unflat(new_ibar) if sage else None)

    return optax.GradientTransformation(init_fn, update_fn)


def adam_sage(lr: float = 1e-3, betas=(0.9, 0.999), beta3: float = 0.75, eps: float = 1e-8,
              sage_eps: float = 1e-12, weight_decay: float = 0.0, *, sage: bool = True,
              lr_schedule: Schedule | None = None) -> optax.GradientTransformation:
    """SAGE on Adam as the paper's Algorithm 1 reads (spec preset ``adam-sage``), with
    ``torch.optim.AdamW``'s moments and decoupled decay; ``sage=False`` gives torch's AdamW
    (spec preset ``adamw``). A reading of the paper, not a reproduction of code.

    Update, per parameter leaf (``t`` incremented first)::

        t     = t + 1
        I     = |p * g|;  Ibar = beta3 * Ibar + (1 - beta3) * I     (no bias correction)
        r     = |I - Ibar| / (Ibar + sage_eps)                      (sage only; else 1)
        p     = p * (1 - lr_t * weight_decay)                       (before the step)
        m     = m + (1 - beta1) * (g - m)
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p     = p - (lr_t / (1 - beta1^t)) * r * m / denom

    The composable form ``optax.chain(scale_by_sage(optax.scale_by_adam(b1, b2, eps), beta3=...,
    eps=sage_eps), optax.add_decayed_weights(wd), optax.scale(-lr))`` is the same update up to
    rounding. Warning: the official ``adamw_sage`` bias-corrects the sensitivity EMA, uses
    ``eps**2`` in the multiplier and decays after the step with the unscheduled lr.
    """
    h = _check("adam-sage", lr=lr, betas=betas, beta3=beta3, eps=eps, sage_eps=sage_eps,
               weight_decay=weight_decay)
    sage = _as_flag("sage", sage)
    b1, b2 = h["betas"]
    wd = h["weight_decay"]

    def init_fn(params):
        return AdamSAGEState(jnp.zeros([], jnp.int32), _zeros(params), _zeros(params),
                             _zeros(params) if sage else None)

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ms, vs, ibars) = _leaves(
            updates, params, state.exp_avg, state.exp_avg_sq, state.sensitivity_ema)
        # t = t + 1
        t = state.step + 1
        lr_t = _scheduled(h["lr"], lr_schedule, state.step)
        step_size = lr_t / _one_minus_pow(b1, t)
        sqrt_bc2 = jnp.sqrt(_one_minus_pow(b2, t))
        decay = 1 - lr_t * wd
        out, new_m, new_v, new_ibar = [], [], [], []
        for k, (g, p0, m, v) in enumerate(zip(leaves, ps, ms, vs)):
            dt = p0.dtype
            g = g.astype(dt)
            p = p0
            if sage:
                b3 = h["beta3"]
                # I = |p * g| ;  Ibar = beta3 * Ibar + (1 - beta3) * I
                I = jnp.abs(p * g)  # noqa: E741
                ibar = b3 * ibars[k] + (1 - b3) * I
                # r = |I - Ibar| / (Ibar + sage_eps)
                r = jnp.abs(I - ibar) / (ibar + h["sage_eps"])
                new_ibar.append(ibar)
            if wd != 0:
                # p = p * (1 - lr_t * weight_decay)
                p = p * decay.astype(dt)
            # m = m + (1 - beta1) * (g - m) ;  v = beta2 * v + (1 - beta2) * g * g
            m = m + (1 - b1) * (g - m)
            v = b2 * v + (1 - b2) * g * g
            # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
            denom = jnp.sqrt(v) / sqrt_bc2.astype(dt) + h["eps"]
            if sage:
                # p = p - (lr_t / (1 - beta1^t)) * r * m / denom
                new_p = p - step_size.astype(dt) * r * m / denom
            else:
                new_p = p - step_size.astype(dt) * m / denom
            out.append(new_p - p0)
            new_m.append(m)
            new_v.append(v)
        unflat = treedef.unflatten
        return unflat(out), AdamSAGEState(t, unflat(new_m), unflat(new_v),
                                          unflat(new_ibar) if sage else None)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_sage(inner: optax.GradientTransformation | None = None, *, beta3: float = 0.75,
                  eps: float = 1e-12,
                  bias_correction: bool = False) -> optax.GradientTransformation:
    """Multiply what ``inner`` proposes by SAGE's per-entry factor ``r`` (composable form).

    With ``g`` the incoming updates (the gradient, after any clipping earlier in the chain) and
    ``p`` the parameters, per entry::

        t    = t + 1
        I    = |p * g|
        Ibar = beta3 * Ibar + (1 - beta3) * I
        Ihat = Ibar / (1 - beta3^t)    if bias_correction, else Ibar
        r    = |I - Ihat| / (Ihat + eps)
        out  = inner(g) * r            (inner=None: out = g * r)

    ``eps`` is the multiplier's epsilon (the paper's; the official code uses the optimizer's
    ``eps**2``). Example, the paper's SAGE-Adam with AdamW's decay::

        optax.chain(scale_by_sage(optax.scale_by_adam(eps=1e-8), beta3=0.75),
                    optax.add_decayed_weights(0.01), optax.scale(-lr))

    This agrees with :func:`adam_sage` up to rounding; :func:`adam_sage`, :func:`adamw_sage` and
    :func:`adamax_sage` follow the spec's order of operations exactly.
    """
    b3 = spec.make("adam-sage", beta3=beta3).hparams["beta3"]
    eps = spec.make("adam-sage", sage_eps=eps).hparams["sage_eps"]
    bias_correction = _as_flag("bias_correction", bias_correction)

    def init_fn(params):
        inner_state = inner.init(params) if inner is not None else optax.EmptyState()
        return ScaleBySAGEState(jnp.zeros([], jnp.int32), _zeros(params), inner_state)

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ibars,) = _leaves(updates, params, state.sensitivity_ema)
        t = state.step + 1
        bc3 = _one_minus_pow(b3, t)
        rs, new_ibar = [], []
        for g, p, ibar in zip(leaves, ps, ibars):
            I = jnp.abs(p * g)  # noqa: E741
            ibar = b3 * ibar + (1 - b3) * I
            ihat = ibar / bc3.astype(ibar.dtype) if bias_correction else ibar
            rs.append(jnp.abs(I - ihat) / (ihat + eps))
            new_ibar.append(ibar)
        if inner is not None:
            proposed, inner_state = inner.update(updates, state.inner_state, params)
        else:
            proposed, inner_state = updates, state.inner_state
        prop_leaves = treedef.flatten_up_to(proposed)
        out = [u * r for u, r in zip(prop_leaves, rs)]
        return treedef.unflatten(out), ScaleBySAGEState(t, treedef.unflatten(new_ibar),
                                                        inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# parameter groups by name
# ----------------------------------------------------------------------------------------------

def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def sage_labels(params, *, sage_patterns: Sequence[str] = SAGE_PATTERNS,
                no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS):
    """A pytree of labels like ``params``: ``"sage/decay"``, ``"sage/no_decay"``,
    ``"plain/decay"`` or ``"plain/no_decay"``, from each leaf's dotted path name (dict keys and
    sequence indices joined by ``.``, e.g. ``blocks.0.attention.self.query.weight``) and the
    official name patterns and minisage's default no-decay list (see
    :func:`minisage.spec.split.official_group`)."""
    def label(path, _leaf):
        use_sage, decay = official_group(_path_name(path), sage_patterns, no_decay_patterns)
        return f"{'sage' if use_sage else 'plain'}/{'decay' if decay else 'no_decay'}"

    return jax.tree_util.tree_map_with_path(label, params)


def official_sage(factory: Callable[..., optax.GradientTransformation], params, *,
                  weight_decay: float = 0.01, **hparams: Any) -> optax.GradientTransformation:
    """The official SAGE split as one ``optax.multi_transform``.

    ``factory`` is :func:`adamw_sage`, :func:`adamax_sage` or :func:`adam_sage`; each group gets
    ``factory(sage=..., weight_decay=weight_decay or 0.0, **hparams)`` by :func:`sage_labels`.
    """
    labels = sage_labels(params)
    names = sorted(set(jax.tree.leaves(labels)))
    transforms = {
        name: factory(sage=name.startswith("sage/"),
                      weight_decay=weight_decay if name.endswith("/decay") else 0.0, **hparams)
        for name in names
    }
    return optax.multi_transform(transforms, labels)


# ----------------------------------------------------------------------------------------------
# golden-vector step functions (minisage.testing.check_rule's signature), for crosscheck
# ----------------------------------------------------------------------------------------------

def resolve_device(device: str | None = None):
    """A jax device for ``"cpu"`` or ``"cuda"`` (``"cuda:N"``); ValueError if there is none."""
    name = "cpu" if device is None else str(device)
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {device!r}")
    try:
        devices = jax.devices("gpu" if kind == "cuda" else "cpu")
    except RuntimeError:
        raise ValueError(f"device {name!r} requested but jax {jax.__version__} has no CUDA "
                         "backend here (no NVIDIA GPU or a CPU-only jaxlib)") from None
    i = int(index) if index else 0
    if not 0 <= i < len(devices):
        raise ValueError(f"device {name!r}: jax sees {len(devices)} {kind} device(s)")
    return devices[i]


_STATE_TYPES = {"adamw-sage": BertAdamWState, "bert-adamw": BertAdamWState,
                "adamax-sage": BertAdamaxState, "bert-adamax": BertAdamaxState,
                "adam-sage": AdamSAGEState, "adamw": AdamSAGEState}


def _golden_step(factory, preset: str, sage: bool, device):
    """A step function: one eager (un-jitted) step of ``factory`` on the golden inputs.

    The golden ``lr`` of a step (the scheduled lr) is given as a constant ``lr_schedule``; the
    spec preset ``adamw``'s ``maximize`` is emulated by negating the gradient (exact).
    """
    state_type = _STATE_TYPES[preset]

    def put(a):
        return jax.device_put(jnp.asarray(np.array(a)), device)

    def step_fn(param, grad, state, lr, hparams):
        hp = dict(hparams)
        if hp.pop("maximize", False):
            grad = -grad
        if lr is not None:
            hp["lr_schedule"] = lambda count, _lr=lr: _lr
        tx = factory(sage=sage, **hp)
        p = put(param)
        st = state_type(step=jnp.asarray(state["step"], jnp.int32),
                        **{k: (put(state[k]) if k in state else None)
                           for k in state_type._fields if k != "step"})
        updates, new_state = tx.update(put(grad), st, p)
        new_p = optax.apply_updates(p, updates)
        out = {k: np.asarray(v) for k, v in new_state._asdict().items()
               if v is not None and k != "step"}
        out["step"] = int(new_state.step)
        return np.asarray(new_p), out

    return step_fn


def golden_step_functions(device: str | None = None) -> list[tuple[str, str, Callable]]:
    """``(implementation, preset, step_fn)`` for every spec preset this backend implements.

    Turns on ``jax_enable_x64`` (needed for the float64 cases; float32 arrays stay float32).
    """
    jax.config.update("jax_enable_x64", True)
    dev = resolve_device(device)
    return [
        ("adamw_sage(sage=False)", "bert-adamw", _golden_step(adamw_sage, "bert-adamw", False,
                                                              dev)),
        ("adamw_sage", "adamw-sage", _golden_step(adamw_sage, "adamw-sage", True, dev)),
        ("adamax_sage(sage=False)", "bert-adamax", _golden_step(adamax_sage, "bert-adamax",
                                                                False, dev)),
        ("adamax_sage", "adamax-sage", _golden_step(adamax_sage, "adamax-sage", True, dev)),
        ("adam_sage(sage=False)", "adamw", _golden_step(adam_sage, "adamw", False, dev)),
        ("adam_sage", "adam-sage", _golden_step(adam_sage, "adam-sage", True, dev)),
    ]
