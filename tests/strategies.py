"""Hypothesis strategies for the engine's tests, and the numerical checks they feed.

Strategies (minitorch-style, all in this one module): shapes, mutually broadcastable shapes, the
shapes of a (batched, broadcasting, possibly 1-D) matrix product, reduction axes, indices, and
well-conditioned float64 arrays with their float32 variants. Inputs are drawn in [-2, 2] and then
moved into each op's well-conditioned domain by a *domain map* (``positive``: x + 3, the
``log(x + 100)`` idea; ``away_from_zero``; ``spread``, which keeps entries apart so that ``max``
has no ties), so finite differences never straddle a kink.

An op of the engine is described by an :class:`Op` row of a table -- its engine function, the
NumPy/SciPy formula it implements, and a strategy for inputs in its domain -- and every row goes
through the same three checks: :func:`check_forward`, :func:`check_vjp`, :func:`check_float32`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minisage import Tensor, no_grad

MAX_SIDE = 4
LOW, HIGH = -2.0, 2.0


# ----- shapes --------------------------------------------------------------------------------
def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 1, max_side: int = MAX_SIDE):
    """Array shapes, scalars (``()``) included by default."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(num_shapes: int = 2, max_dims: int = 3, max_side: int = MAX_SIDE):
    """Tuples of ``num_shapes`` shapes that broadcast together: leading axes missing, length-1
    axes stretched, on either side."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=0, max_dims=max_dims, max_side=max_side
    ).map(lambda result: result.input_shapes)


@st.composite
def matmul_shapes(draw):
    """Shapes (a, b) for ``a @ b``: (..., n, k) @ (..., k, m) with broadcasting batch axes, or a
    1-D operand (k,) on either side (promoted to a matrix as np.matmul does)."""
    n, k, m = (draw(st.integers(1, MAX_SIDE)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    a = (k,) if draw(st.booleans()) else batch_a + (n, k)
    b = (k,) if draw(st.booleans()) else batch_b + (k, m)
    return a, b


@st.composite
def axes(draw, ndim: int):
    """A reduction ``axis`` for an array of ``ndim`` axes: None, an int (maybe negative) or a
    tuple of distinct axes (maybe empty, maybe negative)."""
    kind = draw(st.sampled_from(["none", "int", "tuple"])) if ndim else "none"
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    chosen = draw(st.lists(st.integers(0, ndim - 1), max_size=ndim, unique=True))
    return tuple(a - ndim if draw(st.booleans()) else a for a in chosen)


@st.composite
def reshape_targets(draw, shape: tuple[int, ...]):
    """A shape with as many elements as ``shape``, possibly with one -1."""
    size = math.prod(shape)
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    first = draw(st.sampled_from(divisors))
    target = draw(st.sampled_from([(size,), (first, size // first), (1, size, 1),
                                   tuple(reversed(shape))]))
    if target and draw(st.booleans()):
        target = (-1,) + tuple(target[1:])
    return target


@st.composite
def integer_indices(draw, shape: tuple[int, ...]):
    """An index with integer arrays that may repeat an entry (so the gradient must scatter-add):
    an array or list on axis 0, an array after a slice, or one array per axis."""
    assert shape, "integer indexing needs at least one axis"
    kind = draw(st.sampled_from(["array", "list", "slice_then_array", "per_axis"]))
    if kind == "per_axis":
        return draw(hnp.integer_array_indices(shape, result_shape=shapes(1, 2, max_side=5)))
    axis = 1 if kind == "slice_then_array" and len(shape) > 1 else 0
    n = shape[axis]
    index = draw(hnp.arrays(np.int64, shapes(1, 2, max_side=5), elements=st.integers(-n, n - 1)))
    if kind == "list":
        return index.tolist()
    return (slice(None), index) if axis == 1 else index


# ----- arrays ----------------------------------------------------------------------------------
def floats(low: float = LOW, high: float = HIGH, width: int = 64):
    return st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False,
                     width=width)


def arrays(shape, low: float = LOW, high: float = HIGH, dtype=np.float64):
    """Finite arrays of ``shape`` (a tuple or a strategy) with entries in [low, high]."""
    dtype = np.dtype(dtype)
    return hnp.arrays(dtype, shape, elements=floats(low, high, width=8 * dtype.itemsize))


def arrays32(shape, low: float = LOW, high: float = HIGH):
    """The float32 variant of :func:`arrays`."""
    return arrays(shape, low, high, dtype=np.float32)


# ----- domain maps: move [-2, 2] into a well-conditioned domain ----------------------------------
def identity(x):
    return x


def positive(x):
    """[-2, 2] -> [1, 5]: log, sqrt, negative powers and divisors stay well-conditioned."""
    return x + 3.0


def away_from_zero(x, margin: float = 0.1):
    """|x| >= margin: relu, abs and 1/x are smooth within any finite-difference step of x."""
    return np.where(x >= 0, x + margin, x - margin)


def spread(x, gap: float = 0.1, axis: int | None = None):
    """Entries at least ``gap`` apart (along ``axis``, or over the whole array), order kept:
    x + gap * rank(x). No ties for ``max``; rows of ``layer_norm`` with variance >= gap^2/4."""
    if axis is None:
        ranks = np.argsort(np.argsort(x, axis=None, kind="stable"), kind="stable")
        return x + gap * ranks.reshape(x.shape)
    ranks = np.argsort(np.argsort(x, axis=axis, kind="stable"), axis=axis, kind="stable")
    return x + gap * ranks


def operands(*domains, shapes_strategy=None):
    """A tuple of broadcastable float64 arrays, the i-th mapped by ``domains[i]``."""
    if shapes_strategy is None:
        shapes_strategy = broadcastable_shapes(len(domains))
    return shapes_strategy.flatmap(
        lambda shape_tuple: st.tuples(*(arrays(s) for s in shape_tuple))
    ).map(lambda xs: tuple(np.asarray(d(x), dtype=np.float64) for d, x in zip(domains, xs)))


# ----- the table row and its checks ------------------------------------------------------------
class Op(NamedTuple):
    """One row of an op table.

    ``inputs`` draws ``(arrays, params)``: float64 arrays already in the op's domain, and keyword
    parameters (axis, targets, ...). The first ``len(arrays) - consts`` arrays become Tensors that
    require grad; the last ``consts`` are passed as plain ndarrays (reflected forms, conditions).
    ``engine(*tensors, *consts, **params)`` must equal ``reference(*arrays, **params)``.
    """

    name: str
    engine: Callable[..., Tensor]
    reference: Callable[..., Any]
    inputs: st.SearchStrategy
    consts: int = 0


def no_params(arrays_strategy):
    return arrays_strategy.map(lambda xs: (xs, {}))


def run_engine(op: Op, arrays, params, dtype=np.float64, requires_grad=True):
    n = len(arrays) - op.consts
    tensors = [Tensor(np.asarray(a, dtype=dtype), requires_grad=requires_grad) for a in arrays[:n]]
    consts = [np.asarray(a, dtype=dtype) for a in arrays[n:]]
    return tensors, op.engine(*tensors, *consts, **params)


# Forward against the reference in float64. Both sides evaluate the formula with at most ~50
# roundings (unit roundoff 1.1e-16) of intermediates that the domains keep below ~10 (1 + |y|):
# 50 * 10 * 1.1e-16 ~ 5.5e-14 relative to (1 + |y|).
FORWARD_TOL = 5.5e-14


def check_forward(op: Op, arrays, params):
    _, out = run_engine(op, arrays, params, requires_grad=False)
    expected = np.asarray(op.reference(*arrays, **params))
    assert isinstance(out, Tensor)
    assert out.dtype == np.float64, f"{op.name}: float64 in gave {out.dtype}"
    assert out.shape == expected.shape, f"{op.name}: shape {out.shape} != {expected.shape}"
    err = np.abs(out.data - expected)
    assert np.all(err <= FORWARD_TOL * (1 + np.abs(expected))), (
        f"{op.name}: max error {err.max()} against the reference"
    )


# Random-projection gradient check. For a random output cotangent u and input direction v,
#     u . (J v)  from central differences  (u . (f(x + h v) - f(x - h v))) / (2 h)
#     v . (J^T u) from backward(grad=u).
# Error of the central difference, with S = sum_i |u_i| (1 + |f_i(x)|):
#   truncation  (h^2 / 6) |d^3/dt^3 u.f(x + t v)| ~ 1.7e-13 * M3: negligible, since the domains
#               keep third derivatives M3 below ~1e3 (no kink within ~0.1 of x, |x| <= ~10);
#   rounding    each output carries c roundings (unit roundoff 1.1e-16) of intermediates
#               <= ~10 (1 + |f_i|) for these inputs, and the quotient divides by h:
#               c * 10 * 1.1e-16 / h ~ c * 1.1e-9 * S.
# Hence |FD - backward| <= GRAD_TOL * (S + |v . J^T u|) with GRAD_TOL = 1e-8, which allows c ~ 9
# roundings per output (the worst seen over thousands of draws is ~3e-10, c ~ 0.3, as rounding
# errors partly cancel); h = 1e-6 is near the optimal step eps^(1/3) ~ 6e-6. A wrong VJP is off by
# O(1) * S, eight orders of magnitude above this.
FD_STEP = 1e-6
GRAD_TOL = 1e-8


def check_vjp(op: Op, arrays, params, seed: int):
    rng = np.random.default_rng(seed)
    tensors, out = run_engine(op, arrays, params)
    u = rng.standard_normal(out.shape)
    out.backward(u)
    scale = np.sum(np.abs(u) * (1 + np.abs(out.data)))
    n = len(tensors)
    for k in range(n):
        assert tensors[k].grad is not None, f"{op.name}: input {k} got no gradient"
        assert tensors[k].grad.shape == arrays[k].shape, f"{op.name}: input {k} grad shape"
        v = rng.standard_normal(arrays[k].shape)

        def at(step, k=k, v=v):
            moved = list(arrays)
            moved[k] = arrays[k] + step * v
            with no_grad():
                return run_engine(op, moved, params, requires_grad=False)[1].data

        fd = np.sum(u * (at(FD_STEP) - at(-FD_STEP))) / (2 * FD_STEP)
        analytic = np.sum(v * tensors[k].grad)
        assert abs(fd - analytic) <= GRAD_TOL * (scale + abs(analytic)), (
            f"{op.name}: input {k}: u.(J v) = {fd!r} by finite differences, "
            f"v.(J^T u) = {analytic!r} by backward"
        )


@contextlib.contextmanager
def recorded_vjp_dtypes():
    """Record the dtype of every gradient any VJP returns while the block runs (to catch a
    silent float64 upcast inside backward, which the cast into a leaf's .grad would hide)."""
    dtypes: list[tuple[str, np.dtype]] = []
    original = Tensor.__dict__["make"]

    def make(data, parents, vjp):
        def recording_vjp(g):
            grads = vjp(g)
            dtypes.extend((getattr(vjp, "__qualname__", "?"), np.asarray(gr).dtype)
                          for gr in grads if gr is not None)
            return grads

        return original.__func__(data, parents, recording_vjp)

    Tensor.make = staticmethod(make)
    try:
        yield dtypes
    finally:
        Tensor.make = original


# float32 against float64 at the same (float32-rounded) inputs: only the engine's own float32
# arithmetic differs, by the same ~50 roundings (unit roundoff 6e-8) of intermediates below
# ~10 (1 + |y|): 50 * 10 * 6e-8 ~ 3e-5 relative to (1 + |y|).
FLOAT32_TOL = 3e-5


def check_float32(op: Op, arrays, params, seed: int):
    """float32 in gives float32 values and gradients (all the way through backward), close to
    float64 ones."""
    arrays32 = [np.asarray(a, dtype=np.float32) for a in arrays]
    exact = [a.astype(np.float64) for a in arrays32]
    with recorded_vjp_dtypes() as dtypes:
        tensors32, out32 = run_engine(op, arrays32, params, dtype=np.float32)
        assert out32.dtype == np.float32, f"{op.name}: float32 in gave {out32.dtype} out"
        u = np.random.default_rng(seed).standard_normal(out32.shape)
        out32.backward(u.astype(np.float32))
    upcast = [(where, dt) for where, dt in dtypes if dt != np.float32]
    assert not upcast, f"{op.name}: gradients upcast inside backward: {upcast}"
    tensors64, out64 = run_engine(op, exact, params)
    out64.backward(u)
    np.testing.assert_array_less(
        np.abs(out32.data - out64.data), FLOAT32_TOL * (1 + np.abs(out64.data)) + 1e-30
    )
    for t32, t64 in zip(tensors32, tensors64):
        assert t32.grad.dtype == np.float32, f"{op.name}: float32 leaf got {t32.grad.dtype} grad"
        # backward sums up to ~16 products per entry: the same relative bound on |grad| + S_u.
        bound = FLOAT32_TOL * (np.abs(t64.grad) + np.abs(u).sum() + 1)
        np.testing.assert_array_less(np.abs(t32.grad - t64.grad), bound)
