"""In-place twins of the hot spec rules: the same arithmetic, written into the parameter, its state
and a few reused scratch buffers instead of new arrays.

:meth:`minisage.optim.Optimizer.step` uses these when it keeps no trace (``record=False``) and the
group's rule has a kernel here; every other case goes through the pure spec rule. Each kernel is
its rule's ``_update`` line by line -- the same operations on the same operands in the same order,
only with ``out=`` -- so the numbers are the spec's bit for bit (``tests/test_optim_inplace.py``
checks every preset, dtype and option against the spec). Two facts make an in-place line exact:
``a + b`` equals ``a += b`` (and likewise for ``-``, ``*``, ``/``), and ``x * y`` equals ``y * x``.

A step is all-or-nothing: :func:`check` (pure; the spec's own checks and messages) runs for every
parameter before any kernel writes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minisage.spec import AdamRule, BertAdamaxRule, BertAdamWRule, Rule, _checks


class Scratch:
    """Reusable temporaries: ``get(i, like)`` is buffer ``i`` viewed with ``like``'s shape and
    dtype (its contents are garbage). A kernel uses each index for one thing at a time."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, np.dtype], np.ndarray] = {}

    def get(self, i: int, like: np.ndarray) -> np.ndarray:
        buf = self._buffers.get((i, like.dtype))
        if buf is None or buf.size < like.size:
            buf = self._buffers[(i, like.dtype)] = np.empty(max(like.size, 1), like.dtype)
        return buf[:like.size].reshape(like.shape)


def check(rule: Rule, p: np.ndarray, grad: Any, state: dict, lr: float | None,
          name: str | None, scratch: Scratch) -> tuple[np.ndarray, float, Any]:
    """The checks of ``rule.step`` (same errors), without writing anything but scratch. Returns
    the gradient in ``p``'s dtype, this step's lr and, for a clipping rule, ``sum(g * g)``."""
    label = f"parameter {name!r}" if name else "the parameter"
    if p.dtype.kind != "f":
        rule._check_param(p, label)
    g = rule._check_grad(grad, p, label)
    # A finite sum means finite entries (inf and nan propagate; an overflow decides nothing). The
    # official rules clip by ||g|| first: their sum of squares serves, and is passed on.
    clips = isinstance(rule, (BertAdamWRule, BertAdamaxRule)) and rule.hparams["max_grad_norm"] > 0
    with np.errstate(over="ignore"):
        if clips:  # g * g in g's memory order, as the spec's (np.sum adds in memory order)
            total = np.sum(np.multiply(g, g, out=scratch.get(0, g) if g.flags.c_contiguous
                                       else None))
        else:
            total = g.sum()
    if not math.isfinite(total) and not np.isfinite(g).all():
        bad = int(g.size - np.count_nonzero(np.isfinite(g)))
        raise FloatingPointError(
            f"{rule.name}: non-finite gradient for {label} ({bad} of {g.size} entries are "
            "NaN or infinite); the parameter and its state were left unchanged")
    keys = rule.array_keys
    step = state.get("step") if isinstance(state, dict) else None
    if not (type(step) is int and step >= 0 and len(state) == len(keys) + 1 and all(
            type(a := state.get(k)) is np.ndarray and a.shape == p.shape and a.dtype == p.dtype
            for k in keys)):  # the quick test failed: the spec's own check, error or normal form
        step = state["step"] = rule._check_state(state, p, label)["step"]
    if lr is not None:
        lr = _checks.nonneg(rule.name, "lr", lr)
    sq = total if clips else None
    if isinstance(rule, BertAdamWRule):
        return g, rule._scheduled_lr(lr, step + 1), sq
    if isinstance(rule, BertAdamaxRule):
        return g, rule._scheduled_lr(lr, step), sq
    return g, rule._base_lr(lr), sq


def _clip_factor(rule: Rule, sq) -> Any:
    """``spec.clip_per_tensor``'s factor from ``sq = np.sum(g * g)``: c = max_grad_norm /
    (||g|| + 1e-6) if that is < 1, else None (no clipping, or not needed)."""
    if sq is None:
        return None
    c = rule.hparams["max_grad_norm"] / (np.sqrt(sq) + 1e-6)
    return c if c < 1 else None


def adam(rule: AdamRule, p, g, state, lr_t, scratch: Scratch) -> None:
    """``adam`` and ``adamw`` (torch's Adam/AdamW), as ``AdamRule._update``."""
    h = rule.hparams
    b1, b2 = h["betas"]
    wd, eps = h["weight_decay"], h["eps"]
    t = state["step"] + 1
    a, b = scratch.get(1, p), scratch.get(2, p)
    if h["maximize"]:
        g = np.negative(g, out=scratch.get(0, p))
    if wd != 0:
        if rule.decoupled:
            p *= 1 - lr_t * wd                  # p = p * (1 - lr_t * weight_decay)
        else:
            np.multiply(wd, p, out=a)           # g = g + weight_decay * p
            g = np.add(g, a, out=scratch.get(0, p))
    m, v = state["exp_avg"], state["exp_avg_sq"]
    np.subtract(g, m, out=a)                    # m = m + (1 - beta1) * (g - m)
    a *= 1 - b1
    m += a
    v *= b2                                     # v = beta2 * v + (1 - beta2) * g * g
    np.multiply(1 - b2, g, out=a)
    a *= g
    v += a
    np.sqrt(v, out=a)                           # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
    a /= (1 - b2**t) ** 0.5
    a += eps
    np.multiply(lr_t / (1 - b1**t), m, out=b)   # p = p - (lr_t / (1 - beta1^t)) * m / denom
    b /= a
    p -= b
    state["step"] = t


def bert_adamw(rule: BertAdamWRule, p, g, state, lr_t, scratch: Scratch) -> None:
    """``bert-adamw`` and ``adamw-sage`` (official), as ``BertAdamWRule._update`` (g clipped)."""
    h = rule.hparams
    b1, b2 = h["betas"]
    eps = h["eps"]
    t = state["step"] + 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    a, b = scratch.get(1, p), scratch.get(2, p)
    m *= b1                                     # m = beta1 * m + (1 - beta1) * g
    np.multiply(1 - b1, g, out=a)
    m += a
    v *= b2                                     # v = beta2 * v + (1 - beta2) * g * g
    np.multiply(1 - b2, g, out=a)
    a *= g
    v += a
    np.sqrt(v, out=a)                           # denom = sqrt(v) + eps
    a += eps
    bias_correction1, bias_correction2 = 1 - b1**t, 1 - b2**t
    if rule.sage:
        I, c = scratch.get(3, p), scratch.get(4, p)
        ibar = state["sensitivity_ema"]
        np.multiply(p, g, out=I)                # I = |p * g|
        np.abs(I, out=I)
        ibar *= h["beta3"]                      # Ibar = beta3 * Ibar + (1 - beta3) * I
        np.multiply(1 - h["beta3"], I, out=c)
        ibar += c
        if h["correct_bias"]:                   # Ihat = Ibar / (1 - beta3^t)
            ihat = np.divide(ibar, 1 - h["beta3"] ** t, out=b)
        else:
            ihat = ibar
        I -= ihat                               # U = |I - Ihat|
        np.abs(I, out=I)
        np.add(ihat, eps**2, out=c)             # r = U / (Ihat + eps^2)
        I /= c
        I *= lr_t                               # s = lr_t * r
        if h["correct_bias"]:
            I *= math.sqrt(bias_correction2) / bias_correction1
        np.divide(m, a, out=a)                  # p = p - (m / denom) * s
        a *= I
        p -= a
    else:
        s = lr_t
        if h["correct_bias"]:
            s = s * math.sqrt(bias_correction2) / bias_correction1
        np.multiply(s, m, out=b)                # p = p - s * m / denom
        b /= a
        p -= b
    if h["weight_decay"] > 0:                   # p = p - lr * weight_decay * p
        np.multiply(h["lr"] * h["weight_decay"], p, out=a)
        p -= a
    state["step"] = t


def bert_adamax(rule: BertAdamaxRule, p, g, state, lr_t, scratch: Scratch) -> None:
    """``bert-adamax`` and ``adamax-sage`` (official), as ``BertAdamaxRule._update`` (``g``
    clipped)."""
    h = rule.hparams
    b1, b2 = h["betas"]
    eps = h["eps"]
    m, u = state["exp_avg"], state["exp_inf"]
    a, b = scratch.get(1, p), scratch.get(2, p)
    m *= b1                                     # m = beta1 * m + (1 - beta1) * g
    np.multiply(1 - b1, g, out=a)
    m += a
    u *= b2                                     # u = max(beta2 * u, |g| + eps)
    np.abs(g, out=a)
    a += eps
    np.maximum(u, a, out=u)
    np.add(u, eps, out=a)                       # update = m / (u + eps)
    np.divide(m, a, out=a)
    if rule.sage:
        I, ibar = scratch.get(3, p), state["sensitivity_ema"]
        np.multiply(p, g, out=I)                # I = |p * g|
        np.abs(I, out=I)
        ibar *= h["beta3"]                      # Ibar = beta3 * Ibar + (1 - beta3) * I
        np.multiply(1 - h["beta3"], I, out=b)
        ibar += b
    if h["weight_decay"] > 0:                   # update = update + weight_decay * p
        np.multiply(h["weight_decay"], p, out=b)
        a += b
    if rule.sage:
        I -= ibar                               # U = |I - Ibar|
        np.abs(I, out=I)
        np.add(ibar, eps**2, out=b)             # r = U / (Ibar + eps^2)
        I /= b
        I *= lr_t                               # s = lr_t * r
        a *= I                                  # p = p - s * update
    else:
        a *= lr_t
    p -= a
    state["step"] += 1


#: rule class -> kernel (subclasses included: adamw, adamw-sage, adamax-sage)
KERNELS = {AdamRule: adam, BertAdamWRule: bert_adamw, BertAdamaxRule: bert_adamax}
#: parameters up to this size are updated together, as one flat array per batch
SMALL = 1 << 15


def kernel_for(rule: Rule):
    """The in-place kernel of ``rule``, or None (then the optimizer uses the spec rule)."""
    for cls in type(rule).__mro__:
        if cls in KERNELS:
            return KERNELS[cls]
    return None


def apply(entries: list[tuple], scratch: Scratch) -> None:
    """Run the kernels of checked ``entries`` ``(kernel, rule, p, g, state, lr_t, sq)``.

    A large parameter is updated in place by itself. Small ones that share a rule, an lr and a
    step count are updated together: concatenated into flat arrays, updated, copied back (one pass
    of each NumPy operation instead of one per parameter; elementwise, so the numbers are the
    same). The official rules' per-tensor clipping is applied first, tensor by tensor.
    """
    batches: dict[tuple, list[tuple]] = {}
    for entry in entries:
        kernel, rule, p, g, state, lr_t, sq = entry
        if p.size > SMALL:
            c = _clip_factor(rule, sq)      # g = g * c    (per tensor)
            kernel(rule, p, g if c is None else np.multiply(g, c, out=scratch.get(0, g)), state,
                   lr_t, scratch)
        else:
            batches.setdefault((kernel, id(rule), lr_t, state["step"], p.dtype), []).append(entry)
    for batch in batches.values():
        kernel, rule, _, _, _, lr_t, _ = batch[0]
        keys = rule.array_keys
        flat_p = np.concatenate([e[2].reshape(-1) for e in batch])
        flat_g = np.concatenate([e[3].reshape(-1) for e in batch])
        sizes = [e[2].size for e in batch]
        factors = [_clip_factor(rule, e[6]) for e in batch]
        if any(c is not None for c in factors):  # g = g * c per tensor (times 1: unchanged)
            flat_g *= np.repeat(np.array([1 if c is None else c for c in factors],
                                         flat_g.dtype), sizes)
        state = {"step": batch[0][4]["step"],
                 **{k: np.concatenate([e[4][k].reshape(-1) for e in batch]) for k in keys}}
        kernel(rule, flat_p, flat_g, state, lr_t, scratch)
        start = 0
        for (_, _, p, _, st, _, _), n in zip(batch, sizes):
            p[...] = flat_p[start:start + n].reshape(p.shape)
            for k in keys:
                st[k][...] = state[k][start:start + n].reshape(p.shape)
            st["step"] = state["step"]
            start += n
