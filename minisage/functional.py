"""Neural-network functions on the engine, each a primitive with its VJP beside its forward.

Stable forms throughout: softmax, log_softmax and cross_entropy subtract the row maximum
(log-sum-exp), so logits of +-1000 give finite values and gradients; layer_norm of a constant row
gives zeros (its variance is 0, ``eps`` keeps the division finite).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from minisage.autograd import Tensor, unbroadcast

__all__ = [
    "gelu", "softmax", "log_softmax", "cross_entropy", "layer_norm", "embedding", "dropout",
    "where", "masked_fill", "linear", "scaled_dot_product_attention",
]


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


# float32 Phi by Abramowitz & Stegun 7.1.26 (as torch's float32 CPU kernel): for y >= 0,
# erfc(y) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-y^2), t = 1 / (1 + p y), |error| < 1.5e-7
_AS = (0.3275911, 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _normal_cdf32(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Phi(z), exp(-z^2 / 2)) of a 1-D float32 array, in ~20 NumPy passes (scipy's erf: 10x)."""
    f, (p, *a) = z.dtype.type, _AS
    e = np.exp(z * (z * f(-0.5)))  # exp(-y^2) at y = |z| / sqrt 2
    t = np.abs(z) * f(p / math.sqrt(2))
    t += f(1)
    np.divide(f(1), t, out=t)
    tail = t * f(a[4] / 2)  # Phi(-|z|) = erfc(y) / 2, by Horner
    for c in reversed(a[:4]):
        tail += f(c / 2)
        tail *= t
    tail *= e
    cdf = np.greater(z, 0).astype(z.dtype)  # Phi(z) = |[z > 0] - Phi(-|z|)|
    cdf -= tail
    return np.abs(cdf, out=cdf), e


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU. ``"none"``: x Phi(x) with the exact normal CDF, scipy.special.ndtr (float64 and other
    dtypes); for float32, A&S 7.1.26 (|error of Phi| < 1.5e-7, the formula of torch's kernel).
    ``"tanh"``: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch's approximate="tanh"."""
    x = _tensor(x)
    z = x.data
    if approximate == "none":
        # d/dz [z Phi(z)] = Phi(z) + z phi(z), phi(z) = exp(-z^2 / 2) / sqrt(2 pi): in the VJP only
        if z.dtype == np.float32:  # (on a flat view: in place, 0-d results would be scalars)
            cdf, e = (a.reshape(z.shape) for a in _normal_cdf32(z.reshape(-1)))
            pdf = lambda: e * z.dtype.type(1 / math.sqrt(2 * math.pi))
        else:
            cdf = ndtr(z)
            pdf = lambda: np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return Tensor.make(z * cdf, (x,), lambda g: (g * (cdf + z * pdf()),))
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        inner = np.tanh(k * (z + 0.044715 * z**3))
        # d/dz = 0.5 (1 + t) + 0.5 z (1 - t^2) k (1 + 3 * 0.044715 z^2)
        slope = 0.5 * (1 + inner) + 0.5 * z * (1 - inner * inner) * k * (1 + 0.134145 * z * z)
        return Tensor.make(0.5 * z * (1 + inner), (x,), lambda g: (g * slope,))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _sum_last(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=-1, keepdims=True)`` as one matrix-vector product (BLAS: several times faster
    than NumPy's row-wise reduction over short rows; the same sum up to its order)."""
    rows = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
    return (rows @ np.ones(a.shape[-1], a.dtype)).reshape(*a.shape[:-1], 1)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``; VJP: s * (g - sum(g * s))."""
    x = _tensor(x)
    s = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    s /= s.sum(axis=axis, keepdims=True)
    return Tensor.make(s, (x,), lambda g: (s * (g - (g * s).sum(axis=axis, keepdims=True)),))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along ``axis``; VJP: g - softmax(x) * sum(g)."""
    x = _tensor(x)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return Tensor.make(out, (x,), lambda g: (g - np.exp(out) * g.sum(axis=axis, keepdims=True),))


def cross_entropy(logits: Tensor, targets, ignore_index: int | None = None) -> Tensor:
    """Mean of -log softmax(logits)[target] over the rows whose target is not ``ignore_index``.

    logits (N, C) (or (..., C), flattened), targets (N,) integers. As in torch, the mean is over
    the counted rows; if every row is ignored the result is nan (0/0), its gradient 0.
    """
    logits = _tensor(logits)
    targets = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    num_classes = logits.shape[-1]
    z = logits.data.reshape(-1, num_classes)  # (N, C)
    t = targets.reshape(-1)  # (N,)
    if t.shape[0] != z.shape[0]:
        raise ValueError(
            f"cross_entropy: logits of shape {logits.shape} and targets of shape "
            f"{targets.shape} hold different numbers of rows"
        )
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"cross_entropy: targets must be integers, got dtype {t.dtype}")
    counted = np.ones_like(t, dtype=bool) if ignore_index is None else t != ignore_index
    safe_t = np.where(counted, t, 0)
    if np.any((safe_t < 0) | (safe_t >= num_classes)):
        raise ValueError(f"cross_entropy: targets must lie in [0, {num_classes})")
    rows = np.arange(len(t))
    shifted = z - z.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, C)
    count = counted.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = -(log_probs[rows, safe_t] * counted).sum() / z.dtype.type(count)

    def vjp(g):
        # d loss / d z = (softmax(z) - onehot(t)) / count on counted rows, 0 elsewhere
        grad = np.exp(log_probs)
        grad[rows, safe_t] -= 1
        grad *= (g / z.dtype.type(max(count, 1))) * counted[:, None]  # all ignored: 0, as torch
        return (grad.reshape(logits.shape),)

    return Tensor.make(np.asarray(loss, dtype=z.dtype), (logits,), vjp)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance)."""
    x = _tensor(x)
    n = x.dtype.type(x.shape[-1])
    xhat = x.data - _sum_last(x.data) / n  # centered, then normalized in place (..., D)
    rstd = 1 / np.sqrt(_sum_last(xhat * xhat) / n + eps)  # (..., 1)
    xhat *= rstd
    w = None if weight is None else weight.data
    out = xhat.copy() if w is None else xhat * w
    if bias is not None:
        out += bias.data
    parents = tuple(p for p in (x, weight, bias) if p is not None)

    def vjp(g):
        gxhat = g if w is None else g * w
        # dx = rstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))
        grad_x = gxhat - _sum_last(gxhat) / n
        grad_x -= xhat * (_sum_last(gxhat * xhat) / n)
        grad_x *= rstd
        grads = [grad_x]
        if weight is not None:
            grads.append(unbroadcast(g * xhat, weight.shape))
        if bias is not None:
            grads.append(unbroadcast(g, bias.shape))
        return tuple(grads)

    return Tensor.make(out, parents, vjp)


def embedding(ids, weight: Tensor) -> Tensor:
    """Rows of ``weight`` (V, D) picked by integer ``ids`` (...,) -> (..., D).
    Repeated ids accumulate their gradients."""
    ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
        raise ValueError(f"embedding: ids must lie in [0, {weight.shape[0]})")

    def vjp(g):  # each used row: the sum of its ids' rows (sort the ids, add up runs of equals)
        order = np.argsort(ids, axis=None, kind="stable")
        sorted_ids = ids.reshape(-1)[order]
        starts = np.flatnonzero(np.diff(sorted_ids, prepend=-1))
        grad, rows = np.zeros_like(weight.data), g.reshape(-1, *weight.shape[1:])[order]
        if order.size:
            grad[sorted_ids[starts]] = np.add.reduceat(rows, starts)
        return (grad,)

    return Tensor.make(weight.data[ids], (weight,), vjp)


def dropout(x: Tensor, p: float, training: bool, rng: np.random.Generator | None = None) -> Tensor:
    """Zero each entry with probability p and scale the rest by 1/(1-p); identity when not training.

    ``rng`` (a seeded ``numpy.random.Generator``) is required when training with p > 0."""
    x = _tensor(x)
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must lie in [0, 1), got {p}")
    if not training or p == 0:
        return x
    if rng is None:
        raise ValueError("dropout: training with p > 0 needs rng, a numpy.random.Generator")
    keep = (rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1 - p)
    return Tensor.make(x.data * keep, (x,), lambda g: (g * keep,))


def where(condition, a, b) -> Tensor:
    """``a`` where ``condition`` (a boolean array) holds, else ``b``; broadcasting as np.where."""
    condition = np.asarray(condition.data if isinstance(condition, Tensor) else condition, bool)
    a = _tensor(a)
    b = a._lift(b)
    try:
        out = np.where(condition, a.data, b.data)
    except ValueError:
        raise ValueError(
            f"where: shapes {condition.shape}, {a.shape} and {b.shape} cannot be broadcast together"
        ) from None
    return Tensor.make(out, (a, b), lambda g: (
        unbroadcast(np.where(condition, g, 0), a.shape),
        unbroadcast(np.where(condition, 0, g), b.shape),
    ))


def masked_fill(x: Tensor, mask, value: float) -> Tensor:
    """``x`` with ``value`` wherever ``mask`` is True (e.g. -inf above the diagonal for causal
    attention); the filled entries get no gradient."""
    return where(mask, Tensor(np.asarray(value, dtype=x.dtype)), x)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` over the last axis, as torch's F.linear: x (..., in), weight
    (out, in), bias (out,). One primitive, one matrix product over all leading axes each way."""
    x, weight = _tensor(x), _tensor(weight)
    bias = None if bias is None else _tensor(bias)
    if x.ndim == 0 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input {x.shape} and weight {weight.shape} do not align")
    rows = x.data.reshape(-1, x.shape[-1])  # (N, in)
    y = rows @ weight.data.T  # (N, out)
    if bias is not None:
        y += bias.data

    def vjp(g):  # dL/dx = G W, dL/dW = G^T X, dL/db = the sum of G's rows
        g = g.reshape(y.shape)
        grad_x = (g @ weight.data).reshape(x.shape) if x.requires_grad else None
        return (grad_x, g.T @ rows) + (() if bias is None else (unbroadcast(g, bias.shape),))

    out = y.reshape(*x.shape[:-1], y.shape[-1])
    return Tensor.make(out, (x, weight) if bias is None else (x, weight, bias), vjp)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(d), -inf above the diagonal if ``causal``) v; q, k, v (..., T, d).

    One primitive with the value and VJP of the composition in ``nn.SelfAttention`` (the reference,
    tested against it and torch), without its graph and copies. Softmax may shift a row by any
    number: its diagonal score is cheap (NumPy's row maximum over short rows is slow) and keeps the
    row's sum >= 1; the maximum is used as well where exp would overflow (a score 80 above it).
    """
    q, k, v = _tensor(q), _tensor(k), _tensor(v)
    scale = q.dtype.type(1 / math.sqrt(q.shape[-1]))
    w = q.data @ np.swapaxes(k.data, -1, -2)  # scores (..., T, S), then the weights in place
    w *= scale
    if causal:  # query i sees keys j <= i
        w += np.where(np.triu(np.ones(w.shape[-2:], bool), k=1), -np.inf, 0).astype(w.dtype)
    if w.shape[-2] == w.shape[-1]:  # shift each row by its own (always visible) diagonal score
        w -= np.diagonal(w, axis1=-2, axis2=-1)[..., None].copy()
    if w.shape[-2] != w.shape[-1] or w.max() > 80:  # exp would overflow: the row maximum
        w -= w.max(axis=-1, keepdims=True)
    np.exp(w, out=w)
    w /= _sum_last(w)

    def vjp(g):
        # weights: dW = G V^T; softmax: dS = W * (dW - sum(dW * W)); the scale; the products
        gw = g @ np.swapaxes(v.data, -1, -2)
        gs = gw - _sum_last(gw * w)
        gs *= w
        gs *= scale
        return (unbroadcast(gs @ k.data, q.shape),
                unbroadcast(np.swapaxes(gs, -1, -2) @ q.data, k.shape),
                unbroadcast(np.swapaxes(w, -1, -2) @ g, v.shape))

    return Tensor.make(w @ v.data, (q, k, v), vjp)
