"""The fast path: functions of :mod:`minisage.functional` fused for speed and memory.

Each function here has the meaning of its reference form in :mod:`minisage.functional` or of a
composition of reference forms (named in its docstring) and is tested against it, values and
gradients, in tests/test_fast.py. A reference form written as a composition of engine operations
makes one graph node and one or more NumPy passes per operation, forward and backward, and every
node keeps its output until the backward pass; on a toy model's small arrays those passes and
their Python overhead are most of the time. A fused function is one node whose forward and VJP are
written out in as few passes as possible, and which keeps only what its VJP needs (a layer norm
its row means and scales, not its normalized input; attention over long rows its row sums, not
its weights; GELU its slope, not the normal CDF and density). Where NumPy's reduction over short
rows is slow, a sum is one BLAS matrix-vector product instead: the same sum in another order, so a
fused function agrees with its reference to rounding, not bit for bit.

The Transformer uses these with ``TransformerConfig(fused=True)`` (the default).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import ndtr

import minisage.functional as F
from minisage.autograd import Tensor, unbroadcast

__all__ = ["linear", "residual_linear", "linear_gelu", "attention", "self_attention",
           "layer_norm", "gelu", "embedding", "token_and_position_embedding"]

_BLAS = (np.dtype(np.float32), np.dtype(np.float64))


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


@lru_cache(maxsize=64)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    """A read-only vector of n ones (shared: the BLAS sums below use the same few lengths)."""
    ones = np.ones(n, dtype)
    ones.flags.writeable = False
    return ones


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The engine's ``unbroadcast``, with added leading axes (a bias, say) summed by one
    vector-matrix product: several times faster than NumPy's reduction."""
    lead = grad.ndim - len(shape)
    if lead and grad.shape[lead:] == shape and grad.dtype in _BLAS and grad.flags.c_contiguous:
        rows = grad.reshape(-1, math.prod(shape))
        return (_ones(len(rows), grad.dtype) @ rows).reshape(shape)
    return unbroadcast(grad, shape)


def _sum_last(a: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``(a * weights).sum(axis=-1, keepdims=True)`` (``weights`` (D,), default ones) as one
    matrix-vector product (BLAS: several times faster than NumPy's row-wise reduction over short
    rows, and no product array)."""
    rows = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
    weights = _ones(a.shape[-1], a.dtype) if weights is None else weights
    return (rows @ weights).reshape(*a.shape[:-1], 1)


# ----- linear layers ---------------------------------------------------------------------------
def _linear_rows(rows: np.ndarray, weight: np.ndarray, bias: Tensor | None) -> np.ndarray:
    """``rows @ weight.T + bias``: rows (N, in), weight (out, in) -> (N, out), the bias in place."""
    y = rows @ weight.T
    if bias is not None:
        y += bias.data
    return y


def _linear_vjp(g: np.ndarray, rows: np.ndarray, x: Tensor, weight: Tensor,
                bias: Tensor | None) -> tuple:
    """The gradients of x, weight (and bias) from g (N, out): dL/dx = G W, dL/dW = G^T X, dL/db =
    the sum of G's rows (one BLAS product each way)."""
    grad_x = (g @ weight.data).reshape(x.shape) if x.requires_grad else None
    return (grad_x, g.T @ rows) + (() if bias is None else (_unbroadcast(g, bias.shape),))


def _linear_node(x: Tensor, weight: Tensor, bias: Tensor | None, out: np.ndarray, vjp_of_g,
                 extra: tuple = ()) -> Tensor:
    """The node of a fused linear layer: output ``out`` (N, out) shaped as x (..., out), parents
    x, weight, bias (if any) and ``extra``; ``vjp_of_g(g2)`` with g2 (N, out) -> their grads."""
    parents = (x, weight) + (() if bias is None else (bias,)) + extra
    shape = (*x.shape[:-1], out.shape[-1])
    return Tensor.make(out.reshape(shape), parents, lambda g: vjp_of_g(g.reshape(out.shape)))


def _checked(x, weight, bias):
    x, weight = _tensor(x), _tensor(weight)
    F.check_linear(x, weight)
    return x, weight, None if bias is None else _tensor(bias)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """:func:`minisage.functional.linear` as one primitive: one (N, in) @ (in, out) product over
    all leading axes each way (the composition batches the product per leading index and sums the
    weight's gradient over them), the bias added in place and its gradient one BLAS sum."""
    x, weight, bias = _checked(x, weight, bias)
    rows = x.data.reshape(-1, x.shape[-1])  # (N, in)
    return _linear_node(x, weight, bias, _linear_rows(rows, weight.data, bias),
                        lambda g: _linear_vjp(g, rows, x, weight, bias))


def residual_linear(residual: Tensor, x: Tensor, weight: Tensor,
                    bias: Tensor | None = None) -> Tensor:
    """``residual + F.linear(x, weight, bias)`` (a Transformer's residual connection) as one
    primitive: the sum is written into the product's output, so the layer's own output is never
    kept, and the residual's gradient is the output's."""
    x, weight, bias = _checked(x, weight, bias)
    residual = _tensor(residual)
    rows = x.data.reshape(-1, x.shape[-1])  # (N, in)
    y = _linear_rows(rows, weight.data, bias)  # (N, out)
    if residual.shape != (*x.shape[:-1], y.shape[-1]):
        raise ValueError(f"residual_linear: residual {residual.shape} and output "
                         f"{(*x.shape[:-1], y.shape[-1])} differ")
    y += residual.data.reshape(y.shape)
    return _linear_node(x, weight, bias, y, lambda g: (
        *_linear_vjp(g, rows, x, weight, bias), g.reshape(residual.shape)), extra=(residual,))


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.gelu(F.linear(x, weight, bias))`` (exact GELU; :func:`gelu`'s Phi) as one primitive:
    GELU runs in cache-sized blocks of the product's output, and the slope d gelu(z) / dz is
    written over z, the one array the VJP keeps besides the input."""
    x, weight, bias = _checked(x, weight, bias)
    rows = x.data.reshape(-1, x.shape[-1])  # (N, in)
    z = _linear_rows(rows, weight.data, bias)  # (N, out), then the slope in place
    y = np.empty_like(z)
    _gelu_into(z.reshape(-1), y.reshape(-1), slope=z.reshape(-1))
    return _linear_node(x, weight, bias, y, lambda g: _linear_vjp(g * z, rows, x, weight, bias))


# ----- attention ---------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _causal_mask(t: int, s: int, dtype: np.dtype) -> np.ndarray:
    """(T, S): -inf where key j > query i, else 0 (read-only: shared between calls)."""
    mask = np.where(np.triu(np.ones((t, s), bool), k=1), -np.inf, 0).astype(dtype)
    mask.flags.writeable = False
    return mask


#: causal exp: the rows in this many blocks, each computed up to its last visible column
CAUSAL_BLOCKS = 8


def _exp_in_place(w: np.ndarray, causal: bool) -> None:
    """w = exp(w) over the last two axes (..., T, S). ``causal``: -inf above the diagonal, so
    exp is computed block of rows by block of rows up to the block's last visible column, and
    the rest set to 0: (B+1)/2B of the entries (56% for 8 blocks) instead of all (exp is the
    step's most expensive elementwise pass)."""
    if not causal:
        np.exp(w, out=w)
        return
    T = w.shape[-2]
    step = -(-T // CAUSAL_BLOCKS)
    for r0 in range(0, T, step):
        r1 = min(r0 + step, T)
        visible = w[..., r0:r1, :r1]
        np.exp(visible, out=visible)
        w[..., r0:r1, r1:] = 0


def _softmax_in_place(w: np.ndarray, causal: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """softmax over the last axis (-inf above the diagonal if ``causal``), in place; returns
    (shift, total) with which ``exp(scores - shift) / total`` recomputes it. Softmax may shift a
    row by any number, and by none where exp can neither overflow nor lose a whole row: every
    score <= 80 and each row's diagonal score (always visible) >= -80. Elsewhere (and without a
    diagonal) the row maximum, as the reference (NumPy's row maximum over short rows is slow)."""
    shift = None
    square = w.shape[-2] == w.shape[-1]
    if not (square and w.max() <= 80 and np.diagonal(w, axis1=-2, axis2=-1).min() >= -80):
        shift = w.max(axis=-1, keepdims=True)  # (..., T, 1)
        w -= shift
    _exp_in_place(w, causal)
    total = _sum_last(w)  # (..., T, 1)
    w /= total
    return shift, total


#: attention runs over chunks of its (batch, head) matrices holding about this many bytes of
#: weights each, so that each chunk's scores, softmax and gradients stay in the cache
ATTENTION_CHUNK_BYTES = 1 << 20


def _chunks(lead: tuple[int, ...], item_bytes: int) -> list[tuple]:
    """Index tuples over leading axes of shape ``lead`` that together cover them, each selecting
    about ATTENTION_CHUNK_BYTES of items (matrices) of ``item_bytes`` each."""
    if not lead:
        return [()]
    per_chunk = max(1, ATTENTION_CHUNK_BYTES // item_bytes)  # items
    inner = math.prod(lead[1:])  # items per index of the first axis
    if per_chunk >= inner:
        step = per_chunk // inner
        return [(slice(i, i + step),) for i in range(0, lead[0], step)]
    return [(i, *rest) for i in range(lead[0]) for rest in _chunks(lead[1:], item_bytes)]


class _Attention:
    """softmax(q k^T) v for q (..., T, d) already scaled by 1/sqrt(d), k (..., S, d), v (..., S, e)
    of one leading shape, chunk by chunk (:func:`_chunks`). It keeps the softmax weights for the
    VJP when they take no more memory than q, k and v (S <= 3 d); else each chunk's row shifts and
    sums, from which the VJP recomputes them (memory grows as T d, not T S)."""

    def __init__(self, q, k, v, causal: bool, out: np.ndarray) -> None:
        self.q, self.k, self.v, self.causal = q, k, v, causal
        T, S = q.shape[-2], k.shape[-2]
        self.chunks = _chunks(q.shape[:-2], T * S * q.itemsize)
        keep = S <= 3 * q.shape[-1]
        self.kept = np.empty((*q.shape[:-1], S), q.dtype) if keep else None
        self.saved = []  # (shift, total) per chunk, when the weights are not kept
        for index in self.chunks:
            w = self._scores(index)  # (..., T, S), then the weights in place
            shift, total = _softmax_in_place(w, causal)
            np.matmul(w, v[index], out=out[index])  # (..., T, e)
            if not keep:
                self.saved.append((shift, total))

    def _scores(self, index) -> np.ndarray:
        """q k^T of a chunk, -inf above the diagonal if causal (into the kept weights)."""
        q, k = self.q[index], self.k[index]
        w = np.matmul(q, np.swapaxes(k, -1, -2),
                      out=None if self.kept is None else self.kept[index])
        if self.causal:
            w += _causal_mask(*w.shape[-2:], w.dtype)
        return w

    def weights(self, i: int) -> np.ndarray:
        """The softmax weights of chunk i: kept, or exp(scores - shift) / total again."""
        if self.kept is not None:
            return self.kept[self.chunks[i]]
        shift, total = self.saved[i]
        w = self._scores(self.chunks[i])
        if shift is not None:
            w -= shift
        _exp_in_place(w, self.causal)
        w /= total
        return w

    def vjp(self, g, grad_q, grad_k, grad_v) -> None:
        """dL/dq, dL/dk, dL/dv (q scaled) for g (..., T, e), written into the given arrays:
        weights dW = G V^T; softmax dS = W * (dW - sum(dW * W)); then the three products."""
        for i, index in enumerate(self.chunks):
            w, gi, q, k, v = self.weights(i), g[index], self.q[index], self.k[index], self.v[index]
            gw = gi @ np.swapaxes(v, -1, -2)  # (..., T, S), then dS in place
            np.matmul(np.swapaxes(w, -1, -2), gi, out=grad_v[index])
            gw -= _sum_last(gw * w)
            gw *= w
            np.matmul(gw, k, out=grad_q[index])
            np.matmul(np.swapaxes(gw, -1, -2), q, out=grad_k[index])


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, dropout_p: float = 0.0,
              training: bool = False, rng: np.random.Generator | None = None) -> Tensor:
    """:func:`minisage.functional.attention` as one primitive (with dropout on the weights, the
    reference itself: dropout needs the weights as a node of the graph).

    Fused: scores, mask, softmax and the product in place, chunk by chunk of the leading axes,
    without the composition's graph and copies; the scale 1/sqrt(d) on q (smaller than the
    scores); the weights kept for the VJP only while they are small (see :class:`_Attention`).
    Row sums are BLAS products.
    """
    if (training and dropout_p) or not 0 <= dropout_p < 1:  # the reference (and its p check)
        return F.attention(q, k, v, causal, dropout_p, training, rng)
    q, k, v = _tensor(q), _tensor(k), _tensor(v)
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    scale = q.dtype.type(1 / math.sqrt(q.shape[-1]))
    # one leading shape for all three (broadcast views), q scaled
    qs = np.broadcast_to(q.data * scale, (*lead, *q.shape[-2:]))
    ks, vs = (np.broadcast_to(t.data, (*lead, *t.shape[-2:])) for t in (k, v))
    out = np.empty((*lead, q.shape[-2], v.shape[-1]), q.dtype)
    core = _Attention(qs, ks, vs, causal, out)

    def vjp(g):
        grads = [np.empty(t.shape, g.dtype) for t in (qs, ks, vs)]
        core.vjp(g, *grads)
        grads[0] *= scale
        return tuple(_unbroadcast(grad, t.shape) for grad, t in zip(grads, (q, k, v)))

    return Tensor.make(out, (q, k, v), vjp)


def self_attention(x: Tensor, query: tuple, key: tuple, value: tuple, n_heads: int,
                   causal: bool = False, queries: int | None = None) -> Tensor:
    """Multi-head self-attention before its output projection, as one primitive: for x (B, T, D)
    and ``query``, ``key``, ``value`` each a (weight (D, D), bias (D,) or None) pair, the
    composition

        q, k, v = (heads(F.linear(x, *p)) for p in (query, key, value))   # (B, H, T, D/H)
        F.attention(q, k, v, causal).transpose(0, 2, 1, 3).reshape(B, T, D)

    Fused: q, k and v are one (B*T, D) @ (D, 3D) product whose output the heads read as strided
    views; the heads' outputs are written straight into the (B, T, H, D/H) layout; backward writes
    the heads' gradients into one (B*T, 3D) array and gives x's gradient as one product. It keeps
    q, k and v (one array) and, for short rows, the attention weights (see
    :class:`_Attention`).

    ``queries``: only the first ``queries`` positions attend (their outputs, (B, queries, D),
    are returned); every position is still a key and a value. The composition with
    ``x[:, :queries]`` in the query's ``F.linear``."""
    x = _tensor(x)
    params = [_tensor(t) if t is not None else None for pair in (query, key, value) for t in pair]
    B, T, D = x.shape
    H = n_heads
    weights = [p.data for p in params[0::2]]
    biases = params[1::2]
    if any(w.shape != (D, D) for w in weights) or any(
            b is not None and b.shape != (D,) for b in biases):
        raise ValueError(f"self_attention: weights must be ({D}, {D}) and biases ({D},) for "
                         f"input {x.shape}")
    # the scale 1/sqrt(D/H) of the scores on the query's weight and bias: q comes out scaled
    scale = x.dtype.type(1 / math.sqrt(D // H))
    rows = x.data.reshape(-1, D)  # (N, D)
    stacked = np.concatenate(weights)  # (3D, D): [scale Wq; Wk; Wv]
    stacked[:D] *= scale
    qkv = rows @ stacked.T  # (N, 3D)
    if any(b is not None for b in biases):  # [scale bq, bk, bv], zeros for a missing one
        qkv += np.concatenate([np.zeros(D, x.dtype) if b is None else b.data * s
                               for b, s in zip(biases, (scale, 1, 1))])
    Tq = T if queries is None else queries
    if not 1 <= Tq <= T:
        raise ValueError(f"self_attention: queries must be in [1, {T}], got {queries!r}")
    # (B, T, 3, H, D/H) -> q (scaled; its first Tq positions), k, v, each (B, H, ., D/H)
    q, k, v = qkv.reshape(B, T, 3, H, D // H).transpose(2, 0, 3, 1, 4)
    out = np.empty((B, Tq, H, D // H), x.dtype)
    core = _Attention(q[:, :, :Tq], k, v, causal, out=out.transpose(0, 2, 1, 3))

    def vjp(g):
        g = g.reshape(B, Tq, H, D // H).transpose(0, 2, 1, 3)  # (B, H, Tq, D/H)
        grad_qkv = np.empty((B, T, 3, H, D // H), x.dtype)
        grad_qkv[:, Tq:, 0] = 0  # the queries not asked for
        grad_q, grad_k, grad_v = grad_qkv.transpose(2, 0, 3, 1, 4)
        core.vjp(g, grad_q[:, :, :Tq], grad_k, grad_v)
        grad_qkv = grad_qkv.reshape(-1, 3 * D)  # (N, 3D); the query's part by scaled q
        grad_x = (grad_qkv @ stacked).reshape(x.shape) if x.requires_grad else None
        grad_w = grad_qkv.T @ rows  # (3D, D)
        grad_w[:D] *= scale  # d scaled q / d (Wq, bq) = scale
        grads = []
        for i, b in enumerate(biases):
            grads.append(grad_w[i * D:(i + 1) * D])
            if b is not None:
                grad_b = _unbroadcast(grad_qkv[:, i * D:(i + 1) * D], b.shape)
                grads.append(grad_b * scale if i == 0 else grad_b)
        return (grad_x, *grads)

    parents = (x, *(p for p in params if p is not None))
    return Tensor.make(out.reshape(B, Tq, D), parents, vjp)


# ----- layer norm --------------------------------------------------------------------------------
def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """:func:`minisage.functional.layer_norm` as one primitive: the normalization in place, its
    VJP in closed form (instead of one node per operation), row sums and the weight's and bias's
    gradients as BLAS products. It keeps each row's mean and 1/std, and recomputes the normalized
    input from x in the VJP. A weight or bias of another shape than (D,): the reference."""
    x = _tensor(x)
    if any(p is not None and _tensor(p).shape != x.shape[-1:] for p in (weight, bias)):
        return F.layer_norm(x, weight, bias, eps)
    n = x.dtype.type(x.shape[-1])
    mean = _sum_last(x.data) / n  # (..., 1)
    xhat = x.data - mean  # centered, then normalized in place (..., D)
    rstd = 1 / np.sqrt(_sum_last(xhat * xhat) / n + eps)  # (..., 1)
    xhat *= rstd
    w = None if weight is None else weight.data
    out = xhat if w is None else np.multiply(xhat, w, out=xhat)
    if bias is not None:
        out += bias.data
    parents = tuple(p for p in (x, weight, bias) if p is not None)

    def vjp(g):
        xhat = x.data - mean  # recomputed (..., D)
        xhat *= rstd
        g_xhat = g * xhat
        # dx = rstd * (g w - mean(g w) - xhat * mean(g w xhat)): the row means as products with w
        grad_x = g.copy() if w is None else g * w
        grad_x -= _sum_last(g, w) / n
        xhat *= _sum_last(g_xhat, w) / n
        grad_x -= xhat
        grad_x *= rstd
        grads = [grad_x]
        if weight is not None:
            grads.append(_unbroadcast(g_xhat, weight.shape))
        if bias is not None:
            grads.append(_unbroadcast(g, bias.shape))
        return tuple(grads)

    return Tensor.make(out, parents, vjp)


# ----- GELU --------------------------------------------------------------------------------------
# float32 Phi by Abramowitz & Stegun 7.1.26 (as torch's float32 CPU kernel): for y >= 0,
# erfc(y) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-y^2), t = 1 / (1 + p y), |error| < 1.5e-7
_AS = (0.3275911, 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
#: GELU's ~25 elementwise passes run over blocks of this many entries, each pass in place on
#: scratch arrays of one block, in the cache (smaller blocks cost more in NumPy calls than they
#: save)
GELU_BLOCK = 1 << 16


def _normal_cdf32_into(z: np.ndarray, cdf: np.ndarray, e: np.ndarray, t: np.ndarray) -> None:
    """cdf = Phi(z) and e = exp(-z^2 / 2) of a 1-D float32 array, in ~20 in-place NumPy passes
    (scipy's float32 ndtr: 10x slower); ``t`` is scratch. All four arrays have one shape."""
    f, (p, *a) = z.dtype.type, _AS
    np.multiply(z, f(-0.5), out=e)  # exp(-y^2) at y = |z| / sqrt 2
    e *= z
    np.exp(e, out=e)
    # t = 1 / (1 + p y) = k / (k + |z|), k = sqrt(2) / p
    np.abs(z, out=t)
    t += f(math.sqrt(2) / p)
    np.divide(f(math.sqrt(2) / p), t, out=t)
    np.multiply(t, f(a[4] / 2), out=cdf)  # Phi(-|z|) = erfc(y) / 2, by Horner
    for c in reversed(a[:4]):
        cdf += f(c / 2)
        cdf *= t
    cdf *= e
    # Phi(z) = |[z > 0] - Phi(-|z|)|   (branch-free: np.where over random signs is ~50x slower)
    np.greater(z, 0, out=t, casting="unsafe")
    np.subtract(t, cdf, out=cdf)
    np.abs(cdf, out=cdf)


def _gelu_into(z: np.ndarray, y: np.ndarray, slope: np.ndarray) -> None:
    """y = z Phi(z) and slope = d y / dz = Phi(z) + z phi(z) of the 1-D array z, block by block
    (``slope`` may be z itself: each block of z is read before its slope is written). float32:
    Phi by A&S 7.1.26; float64: scipy's ndtr."""
    c = z.dtype.type(1 / math.sqrt(2 * math.pi))
    cdf, e, t = (np.empty(min(z.size, GELU_BLOCK), z.dtype) for _ in range(3))  # scratch
    for a in range(0, z.size, GELU_BLOCK):
        zb = z[a:a + GELU_BLOCK]
        cdf_b, e_b = cdf[:zb.size], e[:zb.size]
        if z.dtype == np.float32:
            _normal_cdf32_into(zb, cdf_b, e_b, t[:zb.size])
        else:  # the reference's ndtr and exp(-0.5 z z)
            ndtr(zb, out=cdf_b)
            np.exp(np.multiply(np.multiply(-0.5, zb, out=e_b), zb, out=e_b), out=e_b)
        np.multiply(zb, cdf_b, out=y[a:a + GELU_BLOCK])
        # slope = Phi(z) + z phi(z), phi(z) = exp(-z^2 / 2) / sqrt(2 pi)   (nan at z = +-inf)
        e_b *= c
        with np.errstate(invalid="ignore"):
            e_b *= zb
        np.add(cdf_b, e_b, out=slope[a:a + GELU_BLOCK])


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """:func:`minisage.functional.gelu` (``approximate="none"``) in cache-sized blocks, keeping
    only its slope for the VJP. float32: Phi by Abramowitz & Stegun 7.1.26 (|error of Phi| <
    1.5e-7, the formula of torch's float32 kernel), which shares exp(-z^2 / 2) with the slope and
    is ~10x faster than scipy's float32 ndtr; float64: scipy's ndtr. ``"tanh"``: the reference
    itself."""
    x = _tensor(x)
    if approximate != "none" or x.dtype not in _BLAS:
        return F.gelu(x, approximate)
    z = np.ascontiguousarray(x.data).reshape(-1)  # flat: computed in place
    y, slope = np.empty_like(z), np.empty_like(z)
    _gelu_into(z, y, slope)
    return Tensor.make(y.reshape(x.shape), (x,), lambda g: (g * slope.reshape(x.shape),))


# ----- embeddings --------------------------------------------------------------------------------
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
