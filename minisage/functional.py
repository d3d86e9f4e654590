"""Neural-network functions on the engine: the reference forms, written for reading.

Each function is either a composition of engine operations (layer_norm, attention, linear,
embedding, masked_fill) or one primitive with its VJP beside its forward. Stable forms throughout:
softmax, log_softmax and cross_entropy subtract the row maximum (log-sum-exp), so logits of +-1000
give finite values and gradients; layer_norm of a constant row gives zeros (its variance is 0,
``eps`` keeps the division finite). float32 in gives float32 out.

:mod:`minisage.fast` holds the same functions fused for speed, each tested against its form here.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from minisage.autograd import Tensor, unbroadcast

__all__ = [
    "gelu", "softmax", "log_softmax", "cross_entropy", "layer_norm", "embedding", "dropout",
    "where", "masked_fill", "linear", "attention",
]


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU. ``"none"``: x Phi(x) with the exact normal CDF Phi (``scipy.special.ndtr``, which has
    a float32 loop: float32 stays float32). ``"tanh"``: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715
    x^3))), as torch's approximate="tanh"."""
    x = _tensor(x)
    z = x.data
    if approximate == "none":
        cdf = ndtr(z)
        # d/dz [z Phi(z)] = Phi(z) + z phi(z), phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
        pdf = lambda: np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return Tensor.make(z * cdf, (x,), lambda g: (g * (cdf + z * pdf()),))
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        inner = np.tanh(k * (z + 0.044715 * z**3))
        # d/dz = 0.5 (1 + t) + 0.5 z (1 - t^2) k (1 + 3 * 0.044715 z^2)
        slope = 0.5 * (1 + inner) + 0.5 * z * (1 - inner * inner) * k * (1 + 0.134145 * z * z)
        return Tensor.make(0.5 * z * (1 + inner), (x,), lambda g: (g * slope,))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


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
    n = x.shape[-1]
    centered = x - x.sum(axis=-1, keepdims=True) / n  # (..., D)
    variance = (centered * centered).sum(axis=-1, keepdims=True) / n  # (..., 1)
    xhat = centered / (variance + eps).sqrt()
    out = xhat if weight is None else xhat * weight
    return out if bias is None else out + bias


def embedding_ids(ids, weight: Tensor) -> np.ndarray:
    """``ids`` as an integer array, checked to index the rows of ``weight`` (V, D)."""
    ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
        raise ValueError(f"embedding: ids must lie in [0, {weight.shape[0]})")
    return ids


def embedding(ids, weight: Tensor) -> Tensor:
    """Rows of ``weight`` (V, D) picked by integer ``ids`` (...,) -> (..., D): the indexing
    ``weight[ids]``, whose VJP adds the gradients of repeated ids (``np.add.at``)."""
    return _tensor(weight)[embedding_ids(ids, weight)]


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
    (out, in), bias (out,)."""
    x, weight = _tensor(x), _tensor(weight)
    check_linear(x, weight)
    out = x @ weight.transpose()  # (..., out)
    return out if bias is None else out + bias


def check_linear(x: Tensor, weight: Tensor) -> None:
    """A clear error unless x (..., in) and weight (out, in) align."""
    if x.ndim == 0 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input {x.shape} and weight {weight.shape} do not align")


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, dropout_p: float = 0.0,
              training: bool = False, rng: np.random.Generator | None = None) -> Tensor:
    """Scaled dot-product attention, softmax(q k^T / sqrt(d)) v, with q (..., T, d), k (..., S, d),
    v (..., S, e) -> (..., T, e). ``causal``: query i sees keys j <= i only (-inf scores above the
    diagonal). Dropout (as :func:`dropout`) applies to the attention weights."""
    q, k, v = _tensor(q), _tensor(k), _tensor(v)
    T, S = q.shape[-2], k.shape[-2]
    # scores = q k^T / sqrt(d)   (..., T, S)
    scores = (q @ k.transpose(*range(k.ndim - 2), k.ndim - 1, k.ndim - 2)) * (
        1 / math.sqrt(q.shape[-1]))
    if causal:
        scores = masked_fill(scores, np.triu(np.ones((T, S), dtype=bool), k=1), -np.inf)
    weights = dropout(softmax(scores, axis=-1), dropout_p, training, rng)  # (..., T, S)
    return weights @ v  # (..., T, e)
