"""SAGE as optax ``GradientTransformation``s, defined by the spec (:mod:`minisage.spec`).

``adamw_sage``, ``adamax_sage`` and ``adam_sage`` are whole optimizers, each implementing two spec
presets (``sage=True``/``False``); the update equations are the spec rule's
(``help(minisage.spec.rule_class(preset))``, docs/spec.md sections 3 and 4). They follow the
spec's order of operations, so float64 results agree with the spec to rounding error
(``minisage crosscheck --backend jax`` checks every golden case). ``scale_by_sage`` is the SAGE
multiplier alone, composable. What is specific to JAX:

- jit-compatible: the hyperparameters are Python constants, the step count lives in the state;
- float64 needs ``jax.config.update("jax_enable_x64", True)`` before any array is created. With
  x64 on, the scalar factors (bias corrections, the schedule) are computed in float64 and rounded
  to the parameter's dtype, as the spec does with Python floats; with x64 off, in float32
  (``1 - beta**t`` as ``-expm1(t log beta)``, accurate to a few ulps);
- updates: optax adds updates to the parameters, so each transformation computes the spec's new
  parameter and returns ``new_param - param`` (exact when the step is smaller than the
  parameter, i.e. in practice: ``optax.apply_updates`` gives the spec's parameter to the last
  bit). ``params`` must be passed to ``update`` (SAGE needs them);
- schedules: ``lr`` is the base lr; ``lr_schedule`` (an optax schedule, ``count -> lr_t``,
  ``count`` = steps already taken, 0 first) gives the step's lr, and the AdamW pair's decay keeps
  the base ``lr``. The official in-optimizer schedule (``warmup``, ``t_total``, ``schedule``) is
  supported too: use one or the other;
- state: ``step`` (int32), ``exp_avg``, ``exp_avg_sq`` or ``exp_inf``, ``sensitivity_ema`` (None
  without SAGE) -- the spec's names, so ``state._asdict()`` of a one-array parameter is a spec
  state;
- groups: :func:`official_sage` builds the official split (SAGE on attention and feed-forward
  weights and biases, decay except on biases and LayerNorm) as an ``optax.multi_transform`` from
  the parameter names; :func:`sage_labels` gives the labels alone.
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


def _one_schedule(name: str, h: dict[str, Any], lr_schedule: Schedule | None) -> None:
    if lr_schedule is not None and h["t_total"] != -1:
        raise ValueError(f"{name}: give lr_schedule or the official schedule (t_total), not both")


def _official_or_scheduled(h: dict[str, Any], lr_schedule: Schedule | None, step: jax.Array,
                           count: jax.Array) -> jax.Array:
    """This step's lr: the official schedule at ``step`` when ``t_total`` is set, else
    ``lr_schedule(count)`` (``count``: steps already taken), else the base ``lr``."""
    if h["t_total"] != -1:
        return _official_lr(h["lr"], step, h["t_total"], h["warmup"], h["schedule"])
    return _scheduled(h["lr"], lr_schedule, count)


def _clip_per_tensor(g: jax.Array, max_grad_norm: float) -> jax.Array:
    """The spec's per-tensor clipping: ``g * c`` where ``c = max_grad_norm/(||g|| + 1e-6) < 1``."""
    if max_grad_norm <= 0:
        return g
    # n = ||g||_2 ;  c = max_grad_norm / (n + 1e-6) ;  g = g * c if c < 1
    n = jnp.sqrt(jnp.sum(g * g))
    c = max_grad_norm / (n + 1e-6)
    return jnp.where(c < 1, g * c, g)


def _sage_multiplier(p, g, ibar, beta3: float, eps: float, bc3=None):
    """SAGE's multiplier ``r`` of one leaf and the new ``Ibar``, from the pieces of
    :mod:`minisage.spec.sage`. ``bc3 = 1 - beta3^t``: bias-correct the average (else Ihat = Ibar).
    """
    # I = |p * g|
    I = jnp.abs(p * g)  # noqa: E741
    # Ibar = beta3 * Ibar + (1 - beta3) * I
    ibar = beta3 * ibar + (1 - beta3) * I
    # Ihat = Ibar / (1 - beta3^t) where bias-corrected, else Ibar
    ihat = ibar if bc3 is None else ibar / bc3.astype(ibar.dtype)
    # r = |I - Ihat| / (Ihat + eps)
    return jnp.abs(I - ihat) / (ihat + eps), ibar


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


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
    """The official ``UnstructAwareAdamW``: spec preset ``adamw-sage``; ``sage=False`` gives
    ``bert-adamw`` (the official BERT AdamW).

    The update, per parameter leaf: ``help(minisage.spec.rule_class("adamw-sage"))`` (docs/spec.md
    section 3); clipping is per leaf. ``lr_t``: the official schedule at the incremented step when
    ``t_total != -1``, else ``lr_schedule(count)`` if given, else ``lr``. Defaults are the
    official class's.

    Warning: not ``optax.adamw``: the decay follows the step and uses the base ``lr``.
    """
    h = _check("adamw-sage", lr=lr, warmup=warmup, t_total=t_total, schedule=schedule,
               betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
               correct_bias=correct_bias, max_grad_norm=max_grad_norm)
    sage = _as_flag("sage", sage)
    _one_schedule("adamw_sage", h, lr_schedule)
    b1, b2 = h["betas"]

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ms, vs, ibars) = _leaves(
            updates, params, state.exp_avg, state.exp_avg_sq, state.sensitivity_ema)
        # t = t + 1
        t = state.step + 1
        # lr_t, the official schedule at the incremented t
        lr_t = _official_or_scheduled(h, lr_schedule, t, state.step)
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
            if h["weight_decay"] > 0:
                # p = p - lr * weight_decay * p     (base lr, after the step)
                new_p = new_p - h["lr"] * h["weight_decay"] * new_p
            out.append(new_p - p)
            new_m.append(m)
            new_v.append(v)
        return _result(treedef, BertAdamWState, t, out, new_m, new_v, new_ibar, sage)

    return optax.GradientTransformation(_init_fn(BertAdamWState, sage), update_fn)


def adamax_sage(lr: float, warmup: float = -1, t_total: int = -1,
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
    h = _check("adamax-sage", lr=lr, warmup=warmup, t_total=t_total, schedule=schedule,
               betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
               max_grad_norm=max_grad_norm)
    sage = _as_flag("sage", sage)
    _one_schedule("adamax_sage", h, lr_schedule)
    b1, b2 = h["betas"]
    eps = h["eps"]

    def update_fn(updates, state, params=None):
        leaves, treedef, ps, (ms, us, ibars) = _leaves(
            updates, params, state.exp_avg, state.exp_inf, state.sensitivity_ema)
        t = state.step
        # lr_t, the official schedule at t *before* its increment
        lr_t = _official_or_scheduled(h, lr_schedule, t, t)
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
                # r = |I - Ibar| / (Ibar + eps^2)
                r, ibar = _sage_multiplier(p, g, ibars[k], h["beta3"], eps**2)
                new_ibar.append(ibar)
            if h["weight_decay"] > 0:
                # update = update + weight_decay * p
                update = update + h["weight_decay"] * p
            if sage:
                # s = lr_t * r
                s = lr_t.astype(dt) * r
            else:
                s = lr_t.astype(dt)
            # p = p - s * update
            new_p = p - s * update
            out.append(new_p - p)
            new_m.append(m)
            new_u.append(u)
        return _result(treedef, BertAdamaxState, t + 1, out, new_m, new_u, new_ibar, sage)

    return optax.GradientTransformation(_init_fn(BertAdamaxState, sage), update_fn)


def adam_sage(lr: float = 1e-3, betas=(0.9, 0.999), beta3: float = 0.75, eps: float = 1e-8,
              sage_eps: float = 1e-12, weight_decay: float = 0.0, *, sage: bool = True,
              lr_schedule: Schedule | None = None) -> optax.GradientTransformation:
    """The paper's SAGE-Adam as the spec reads it: preset ``adam-sage``; ``sage=False`` gives
    ``torch.optim.AdamW`` (preset ``adamw``).

    The update, per parameter leaf: ``help(minisage.spec.rule_class("adam-sage"))``
    (docs/spec.md section 4). The composable form ``optax.chain(scale_by_sage(
    optax.scale_by_adam(b1, b2, eps), beta3=..., eps=sage_eps), optax.add_decayed_weights(wd),
    optax.scale(-lr))`` is the same update up to rounding.

    Warning: a reading of the paper, not of the official code (see :func:`adamw_sage`).
    """
    h = _check("adam-sage", lr=lr, betas=betas, beta3=beta3, eps=eps, sage_eps=sage_eps,
               weight_decay=weight_decay)
    sage = _as_flag("sage", sage)
    b1, b2 = h["betas"]
    wd = h["weight_decay"]

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
                # r = |I - Ibar| / (Ibar + sage_eps)
                r, ibar = _sage_multiplier(p, g, ibars[k], h["beta3"], h["sage_eps"])
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
    (``inner=None``: ``g * r``). ``eps`` is the multiplier's epsilon (the paper's; the official
    code uses the optimizer's ``eps**2``). Example, the paper's SAGE-Adam with AdamW's decay::

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
            # r = |I - Ihat| / (Ihat + eps), Ihat = Ibar / (1 - beta3^t) if bias_correction
            r, ibar = _sage_multiplier(p, g, ibar, b3, eps, bc3 if bias_correction else None)
            rs.append(r)
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
