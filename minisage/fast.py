"""The fast path: functions of :mod:`minisage.functional` fused for speed.

Each function here has the signature and meaning of its reference form in
:mod:`minisage.functional` (named in its docstring) and is tested against it, values and
gradients, in tests/test_fast.py. A reference form written as a composition of engine operations
makes one graph node and one or more NumPy passes per operation, forward and backward; on a toy
model's small arrays those passes and their Python overhead are most of the time. A fused function
is one node whose forward and VJP are written out in as few passes as possible. Where NumPy's
reduction over short rows is slow, a sum is one BLAS matrix-vector product instead: the same sum
in another order, so a fused function agrees with its reference to rounding, not bit for bit.

The Transformer uses these with ``TransformerConfig(fused=True)`` (the default).
"""

from __future__ import annotations

import math

import numpy as np

import minisage.functional as F
from minisage.autograd import Tensor, unbroadcast

__all__ = ["linear", "attention", "layer_norm", "gelu", "embedding",
           "token_and_position_embedding"]

_BLAS = (np.dtype(np.float32), np.dtype(np.float64))


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The engine's ``unbroadcast``, with added leading axes (a bias, say) summed by one
    vector-matrix product: several times faster than NumPy's reduction."""
    lead = grad.ndim - len(shape)
    if lead and grad.shape[lead:] == shape and grad.dtype in _BLAS and grad.flags.c_contiguous:
        rows = grad.reshape(-1, math.prod(shape))
        return (np.ones(len(rows), grad.dtype) @ rows).reshape(shape)
    return unbroadcast(grad, shape)


def _sum_last(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=-1, keepdims=True)`` as one matrix-vector product (BLAS: several times faster
    than NumPy's row-wise reduction over short rows)."""
    rows = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
    return (rows @ np.ones(a.shape[-1], a.dtype)).reshape(*a.shape[:-1], 1)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """:func:`minisage.functional.linear` as one primitive: one (N, in) @ (in, out) product over
    all leading axes each way (the composition batches the product per leading index and sums the
    weight's gradient over them), the bias added in place and its gradient one BLAS sum."""
    x, weight = _tensor(x), _tensor(weight)
    bias = None if bias is None else _tensor(bias)
    F.check_linear(x, weight)
    rows = x.data.reshape(-1, x.shape[-1])  # (N, in)
    y = rows @ weight.data.T  # (N, out)
    if bias is not None:
        y += bias.data

    def vjp(g):  # dL/dx = G W, dL/dW = G^T X, dL/db = the sum of G's rows
        g = g.reshape(y.shape)
        grad_x = (g @ weight.data).reshape(x.shape) if x.requires_grad else None
        return (grad_x, g.T @ rows) + (() if bias is None else (_unbroadcast(g, bias.shape),))

    out = y.reshape(*x.shape[:-1], y.shape[-1])
    return Tensor.make(out, (x, weight) if bias is None else (x, weight, bias), vjp)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, dropout_p: float = 0.0,
              training: bool = False, rng: np.random.Generator | None = None) -> Tensor:
    """:func:`minisage.functional.attention` as one primitive (with dropout on the weights, the
    reference itself: dropout needs the weights as a node of the graph).

    Fused: scores, mask, softmax and the product in place, without the composition's graph and
    copies. Softmax may shift a row by any number: its diagonal score is cheap (NumPy's row
    maximum over short rows is slow) and keeps the row's sum >= 1; the maximum is used as well
    where exp would overflow (a score 80 above it). Row sums are BLAS products.
    """
    if (training and dropout_p) or not 0 <= dropout_p < 1:  # the reference (and its p check)
        return F.attention(q, k, v, causal, dropout_p, training, rng)
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
        return (_unbroadcast(gs @ k.data, q.shape),
                _unbroadcast(np.swapaxes(gs, -1, -2) @ q.data, k.shape),
                _unbroadcast(np.swapaxes(w, -1, -2) @ g, v.shape))

    return Tensor.make(w @ v.data, (q, k, v), vjp)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """:func:`minisage.functional.layer_norm` as one primitive: the normalization in place, its
    VJP in closed form (instead of one node per operation), row sums and the weight's and bias's
    gradients as BLAS products."""
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
            grads.append(_unbroadcast(g * xhat, weight.shape))
        if bias is not None:
            grads.append(_unbroadcast(g, bias.shape))
        return tuple(grads)

    return Tensor.make(out, parents, vjp)


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
    """:func:`minisage.functional.gelu`; for float32 and ``approximate="none"``, Phi by
    Abramowitz & Stegun 7.1.26 (|error of Phi| < 1.5e-7, the formula of torch's float32 kernel),
    which shares exp(-z^2 / 2) with the VJP and is ~10x faster than scipy's float32 ndtr. Other
    dtypes and ``"tanh"``: the reference itself (ndtr, with the pdf computed in the VJP only)."""
    x = _tensor(x)
    z = x.data
    if approximate != "none" or z.dtype != np.float32:
        return F.gelu(x, approximate)
    # on a flat view: computed in place, where 0-d results would be scalars
    cdf, e = (a.reshape(z.shape) for a in _normal_cdf32(z.reshape(-1)))
    # d/dz [z Phi(z)] = Phi(z) + z phi(z), phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
    pdf = lambda: e * z.dtype.type(1 / math.sqrt(2 * math.pi))
    return Tensor.make(z * cdf, (x,), lambda g: (g * (cdf + z * pdf()),))


def _add_rows_by_id(ids: np.ndarray, g: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The gradient of ``weight[ids]`` for the output gradient ``g``: each used row gets the sum
    of its ids' rows of g. Sorted ids and ``np.add.reduceat`` over runs of equal ids: several
    times faster than ``np.add.at``, the reference's scatter-add."""
    order = np.argsort(ids, axis=None, kind="stable")
    sorted_ids = ids.reshape(-1)[order]
    starts = np.flatnonzero(np.diff(sorted_ids, prepend=-1))
    grad, rows = np.zeros_like(weight), g.reshape(-1, *weight.shape[1:])[order]
    if order.size:
        grad[sorted_ids[starts]] = np.add.reduceat(rows, starts)
    return grad


def embedding(ids, weight: Tensor) -> Tensor:
    """:func:`minisage.functional.embedding` with its VJP by sorted runs of equal ids."""
    ids = F.embedding_ids(ids, weight)
    return Tensor.make(weight.data[ids], (weight,),
                       lambda g: (_add_rows_by_id(ids, g, weight.data),))


def token_and_position_embedding(ids, word: Tensor, position: Tensor) -> Tensor:
    """``F.embedding(ids, word) + F.embedding(np.arange(T), position)`` for ids (B, T): the
    Transformer's input (B, T, D) as one primitive. Fused: the position rows' gradient is the sum
    of g over the batch as one BLAS product (the composition's broadcast add and scatter-add
    would reduce it with NumPy), the word rows' gradient by sorted runs (:func:`embedding`)."""
    ids = F.embedding_ids(ids, word)
    T = ids.shape[-1]
    F.embedding_ids(np.arange(T), position)  # max_len rows at least
    positions = position.data[:T]  # (T, D)

    def vjp(g):
        grad_position = np.zeros_like(position.data)
        grad_position[:T] = _unbroadcast(g, positions.shape)  # summed over the batch
        return _add_rows_by_id(ids, g, word.data), grad_position

    return Tensor.make(word.data[ids] + positions, (word, position), vjp)
