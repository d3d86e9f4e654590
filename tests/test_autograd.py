"""Tests of the autograd engine (minisage.autograd): every Tensor primitive in one table, checked
against NumPy, against central finite differences and in float32; kinks, graph facts, bad input."""

import gc
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import (
    Op,
    arrays,
    arrays32,
    away_from_zero,
    axes,
    broadcastable_shapes,
    check_float32,
    check_forward,
    check_vjp,
    identity,
    integer_indices,
    matmul_shapes,
    no_params,
    operands,
    positive,
    reshape_targets,
    shapes,
    spread,
)

from minisage import Tensor, no_grad
from minisage.autograd import unbroadcast


def denominator(x):
    """|x| >= 1: a/b has third derivative 6a/b^4 <= 12 there (see GRAD_TOL)."""
    return away_from_zero(x, 1.0)


def unary(domain=identity):
    return no_params(operands(domain))


def binary(domain_a=identity, domain_b=identity):
    return no_params(operands(domain_a, domain_b))


# ----- strategies for the ops with parameters ----------------------------------------------------
@st.composite
def reduction_inputs(draw, domain=identity):
    x = domain(draw(arrays(shapes())))
    return (x,), {"axis": draw(axes(x.ndim)), "keepdims": draw(st.booleans())}


@st.composite
def matmul_inputs(draw, reflected=False):
    shape_a, shape_b = draw(matmul_shapes())
    a, b = draw(arrays(shape_a)), draw(arrays(shape_b))
    # reflected: (b as the Tensor, a as the plain ndarray on the left)
    return ((b, a) if reflected else (a, b)), {}


@st.composite
def reshape_inputs(draw):
    x = draw(arrays(shapes()))
    return (x,), {"shape": draw(reshape_targets(x.shape)), "as_tuple": draw(st.booleans())}


@st.composite
def transpose_inputs(draw):
    x = draw(arrays(shapes()))
    perm = draw(st.none() | st.permutations(range(x.ndim)).map(tuple))
    return (x,), {"axes": perm, "as_tuple": draw(st.booleans())}


@st.composite
def basic_index_inputs(draw):
    x = draw(arrays(shapes()))
    return (x,), {"index": draw(hnp.basic_indices(x.shape, allow_newaxis=True))}


@st.composite
def integer_index_inputs(draw):
    x = draw(arrays(shapes(min_dims=1)))
    return (x,), {"index": draw(integer_indices(x.shape))}


def _reshape(x, shape, as_tuple):
    return x.reshape(shape) if as_tuple else x.reshape(*shape)


def _transpose(x, axes, as_tuple):
    if axes is None:
        return x.transpose()
    return x.transpose(axes) if as_tuple else x.transpose(*axes)


def _np_transpose(x, axes, as_tuple):
    return np.transpose(x, axes)


# ----- the table: engine function, NumPy reference, input domain ---------------------------------
TENSOR_OPS = [
    # arithmetic between tensors, broadcasting both ways
    Op("add", lambda a, b: a + b, np.add, binary()),
    Op("sub", lambda a, b: a - b, np.subtract, binary()),
    Op("mul", lambda a, b: a * b, np.multiply, binary()),
    Op("div", lambda a, b: a / b, np.divide, binary(identity, denominator)),
    Op("neg", lambda a: -a, np.negative, unary()),
    # Python numbers on either side
    Op("add_number", lambda a: a + 2.5, lambda a: a + 2.5, unary()),
    Op("radd_number", lambda a: 3 + a, lambda a: 3 + a, unary()),
    Op("sub_number", lambda a: a - 2.5, lambda a: a - 2.5, unary()),
    Op("rsub_number", lambda a: 2.5 - a, lambda a: 2.5 - a, unary()),
    Op("mul_number", lambda a: a * -1.5, lambda a: a * -1.5, unary()),
    Op("rmul_number", lambda a: 2 * a, lambda a: 2 * a, unary()),
    Op("div_number", lambda a: a / 4.0, lambda a: a / 4.0, unary()),
    Op("rdiv_number", lambda a: 2.5 / a, lambda a: 2.5 / a, unary(denominator)),
    # ndarrays on either side (the last operand is a plain ndarray, not differentiated)
    Op("add_array", lambda a, c: a + c, np.add, binary(), consts=1),
    Op("radd_array", lambda a, c: c + a, lambda a, c: c + a, binary(), consts=1),
    Op("sub_array", lambda a, c: a - c, np.subtract, binary(), consts=1),
    Op("rsub_array", lambda a, c: c - a, lambda a, c: c - a, binary(), consts=1),
    Op("mul_array", lambda a, c: a * c, np.multiply, binary(), consts=1),
    Op("rmul_array", lambda a, c: c * a, lambda a, c: c * a, binary(), consts=1),
    Op("div_array", lambda a, c: a / c, np.divide, binary(identity, denominator), consts=1),
    Op("rdiv_array", lambda a, c: c / a, lambda a, c: c / a, binary(denominator), consts=1),
    # matrix product: batched, batch axes broadcasting, 1-D operands
    Op("matmul", lambda a, b: a @ b, np.matmul, matmul_inputs()),
    Op("rmatmul_array", lambda b, a: a @ b, lambda b, a: a @ b, matmul_inputs(True), consts=1),
    # powers with a scalar exponent
    Op("pow2", lambda a: a**2, np.square, unary()),
    Op("pow3", lambda a: a**3, lambda a: a * a * a, unary()),
    Op("pow_int_numpy", lambda a: a ** np.int64(4), lambda a: np.square(np.square(a)), unary()),
    Op("pow_half", lambda a: a**0.5, np.sqrt, unary(positive)),
    Op("pow_neg", lambda a: a**-1.5, lambda a: 1 / (a * np.sqrt(a)), unary(positive)),
    # elementwise functions
    Op("exp", Tensor.exp, np.exp, unary()),
    Op("log", Tensor.log, np.log, unary(positive)),
    Op("tanh", Tensor.tanh, np.tanh, unary()),
    Op("sqrt", Tensor.sqrt, np.sqrt, unary(positive)),
    Op("relu", Tensor.relu, lambda a: np.maximum(a, 0.0), unary(away_from_zero)),
    Op("abs", Tensor.abs, np.abs, unary(away_from_zero)),
    Op("builtin_abs", abs, np.abs, unary(away_from_zero)),
    # reductions (axis None | int | tuple, keepdims); max away from ties
    Op("sum", Tensor.sum, np.sum, reduction_inputs()),
    Op("mean", Tensor.mean, np.mean, reduction_inputs()),
    Op("max", Tensor.max, np.max, reduction_inputs(spread)),
    # shape
    Op("reshape", _reshape, lambda x, shape, as_tuple: np.reshape(x, shape), reshape_inputs()),
    Op("transpose", _transpose, _np_transpose, transpose_inputs()),
    Op("basic_index", lambda x, index: x[index], lambda x, index: x[index], basic_index_inputs()),
    Op("integer_index", lambda x, index: x[index], lambda x, index: x[np.asarray(index)]
       if isinstance(index, list) else x[index], integer_index_inputs()),
    # a composite, so that a node is reused and gradients flow through several primitives
    Op("composite", lambda a, b: ((a * b).exp() + a / (b * b + 1)).sum(axis=-1).tanh(),
       lambda a, b: np.tanh(np.sum(np.exp(a * b) + a / (b * b + 1), axis=-1)),
       no_params(operands(identity, identity, shapes_strategy=broadcastable_shapes(
           2).filter(lambda s: len(s[0]) or len(s[1]))))),
]

OPS = pytest.mark.parametrize("op", TENSOR_OPS, ids=lambda op: op.name)
SEEDS = st.integers(0, 2**32 - 1)


@OPS
@given(data=st.data())
def test_forward_matches_numpy(op, data):
    check_forward(op, *data.draw(op.inputs))


@OPS
@given(data=st.data(), seed=SEEDS)
def test_vjp_matches_central_differences(op, data, seed):
    check_vjp(op, *data.draw(op.inputs), seed)


@OPS
@given(data=st.data(), seed=SEEDS)
def test_float32_in_float32_values_and_gradients(op, data, seed):
    check_float32(op, *data.draw(op.inputs), seed)


# ----- kinks: each convention pinned -------------------------------------------------------------
def test_relu_gradient_at_zero_is_zero():
    x = Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])


def test_abs_gradient_at_zero_is_zero():
    x = Tensor(np.array([-1.5, 0.0, 2.0]), requires_grad=True)
    x.abs().sum().backward()
    np.testing.assert_array_equal(x.grad, [-1.0, 0.0, 1.0])


def test_max_ties_share_the_gradient_equally():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [5.0, 0.0, 4.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([6.0, 6.0, 6.0]))
    np.testing.assert_array_equal(x.grad, [[0, 3, 3], [2, 2, 2], [6, 0, 0]])
    x.grad = None
    x.max().backward()  # the single maximum 5
    np.testing.assert_array_equal(x.grad, [[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    x.grad = None
    x = Tensor(np.array([[4.0, 1.0], [4.0, 2.0], [4.0, 2.0]]), requires_grad=True)
    x.max(axis=0, keepdims=True).backward(np.array([[3.0, 1.0]]))  # ties within columns
    np.testing.assert_array_equal(x.grad, [[1, 0], [1, 0.5], [1, 0.5]])


def test_max_ties_over_several_axes():
    x = Tensor(np.full((2, 2), 7.0), requires_grad=True)
    x.max(axis=(0, 1)).backward()
    np.testing.assert_array_equal(x.grad, np.full((2, 2), 0.25))


def test_sqrt_gradient_at_zero_is_plus_infinity():
    x = Tensor(np.array([0.0, 4.0]), requires_grad=True)
    with np.errstate(all="raise"):  # no warning escapes either
        x.sqrt().backward(np.array([1.0, 1.0]))
    assert x.grad[0] == np.inf
    assert x.grad[1] == 0.25


def test_pow_zero_exponent_has_zero_gradient_everywhere():
    # d(x^0)/dx = 0, including at x = 0 (torch's convention), not 0 * 0^-1 = nan
    x = Tensor(np.array([0.0, -2.0, 3.0]), requires_grad=True)
    (x**0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])


def test_relu_of_minus_infinity_is_zero():
    x = Tensor(np.array([-np.inf, -1.0, 2.0]), requires_grad=True)
    y = x.relu()
    np.testing.assert_array_equal(y.data, [0.0, 0.0, 2.0])
    assert not np.signbit(y.data).any()  # +0, not -0
    y.backward(np.ones(3))
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])


# ----- graph facts -------------------------------------------------------------------------------
def test_a_node_used_twice_receives_both_contributions():
    x = Tensor(np.array([1.5, -2.0]), requires_grad=True)
    (x * x).sum().backward()  # d/dx x^2 = 2x
    np.testing.assert_array_equal(x.grad, [3.0, -4.0])

    x = Tensor(np.array([0.5, 1.0]), requires_grad=True)
    h = x.exp()  # an intermediate node used three times: h * h + h
    (h * h + h).sum().backward()
    e = np.exp([0.5, 1.0])
    np.testing.assert_allclose(x.grad, (2 * e + 1) * e, rtol=1e-15)


def test_diamond_graph_sums_paths():
    x = Tensor(np.array(2.0), requires_grad=True)
    a = x * 3.0
    b = a.exp()
    c = a * b  # c = 3x e^(3x): dc/dx = 3 e^(3x) (1 + 3x)
    c.backward()
    np.testing.assert_allclose(x.grad, 3 * np.exp(6.0) * 7, rtol=1e-14)


def test_two_backward_calls_accumulate():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad, 2 * (2 * x.data))
    grad_before = x.grad
    (x * 1.0).sum().backward()
    assert x.grad is grad_before  # accumulated in place, in its own memory
    np.testing.assert_array_equal(x.grad, 2 * (2 * x.data) + 1)


def test_backward_frees_the_graph_unless_retained():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    for retain in (False, True):
        e = (x * 2).exp()
        saved = weakref.ref(e.data)  # the exp node's output, which its VJP keeps
        loss = e.sum()
        del e
        loss.backward(retain_graph=retain)
        gc.collect()
        assert (saved() is not None) == retain
    loss.backward()  # retained: a second pass works (and accumulates)
    np.testing.assert_allclose(x.grad, 3 * 2 * np.exp(2 * x.data), rtol=1e-15)
    with pytest.raises(RuntimeError, match=r"graph was freed.*retain_graph=True"):
        loss.backward()  # the second pass freed it
    shared = x * x
    first, second = shared.sum(), (shared * 2).sum()
    first.backward()
    with pytest.raises(RuntimeError, match="graph was freed"):
        second.backward()  # it reaches a node the first pass freed


def test_leaf_grad_is_a_copy_not_a_view_of_the_upstream_gradient():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    g = np.array([1.0, 1.0])
    (x + 0.0).backward(g)
    x.grad += 5
    np.testing.assert_array_equal(g, [1.0, 1.0])
    y = Tensor(np.ones((2, 3)), requires_grad=True)
    y.sum().backward()  # the sum's VJP broadcasts a read-only view
    assert y.grad.flags.writeable and y.grad.flags.owndata


def test_no_grad_records_nothing_and_restores():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with no_grad():
        y = (x * 2).exp().sum()
        assert not y.requires_grad
        with pytest.raises(RuntimeError, match="does not require grad"):
            y.backward()
    assert x.grad is None
    assert (x * 2).requires_grad  # enabled again after the block
    with pytest.raises(ZeroDivisionError), no_grad():
        raise ZeroDivisionError
    assert (x * 2).requires_grad  # and after an exception inside it


def test_detach_cuts_the_graph():
    x = Tensor(np.array([1.0, -3.0]), requires_grad=True)
    d = x.detach()
    assert not d.requires_grad
    assert np.shares_memory(d.data, x.data)
    (d * x + x).sum().backward()  # only the second factor and the + x reach x
    np.testing.assert_array_equal(x.grad, x.data + 1)


def test_only_leaves_keep_gradients_and_constants_get_none():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = Tensor(np.array([3.0, 4.0]))
    h = x * c
    h.sum().backward()
    assert h.grad is None and c.grad is None
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_backward_of_a_deep_chain_needs_no_recursion():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0


@given(shape_pair=broadcastable_shapes(2), data=st.data())
def test_unbroadcast_is_the_adjoint_of_broadcasting(shape_pair, data):
    # <unbroadcast(g, s), v> == <g, broadcast_to(v, big)> for every g, v: the VJP of broadcasting
    small, other = shape_pair
    big = np.broadcast_shapes(small, other)
    g, v = data.draw(arrays(big)), data.draw(arrays(small))
    reduced = unbroadcast(g, small)
    assert reduced.shape == small
    np.testing.assert_allclose(np.sum(reduced * v), np.sum(g * np.broadcast_to(v, big)),
                               rtol=1e-12, atol=1e-12)


def test_integer_index_scatter_adds_repeated_indices():
    x = Tensor(np.arange(8.0).reshape(4, 2), requires_grad=True)
    y = x[np.array([3, 0, 3, 3, -1])]
    y.backward(np.ones((5, 2)))
    np.testing.assert_array_equal(x.grad, [[1, 1], [0, 0], [0, 0], [4, 4]])
    x.grad = None
    x[:, [1, 1]].sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 2]] * 4)


# ----- dtypes ------------------------------------------------------------------------------------
def test_dtype_rules():
    assert Tensor(1.5).dtype == np.float64
    assert Tensor([1, 2]).dtype == np.float64  # Python numbers and lists become float64
    assert Tensor(np.zeros(2, np.float32)).dtype == np.float32  # a float array keeps its dtype
    assert Tensor(np.zeros(2, np.int64)).dtype == np.int64  # integer arrays may be data


@given(x=arrays32(shapes()))
def test_numbers_take_a_float32_tensors_dtype(x):
    x32 = Tensor(x, requires_grad=True)
    ys = (x32 + 1, 2.5 * x32, x32 / 3, 1 - x32, x32**2, x32 * np.float64(2), x32 ** np.float64(3),
          x32.mean(), x32.sum(), x32.max(), x32.reshape(-1), x32.transpose())
    for y in ys:
        assert y.dtype == np.float32  # a Python or NumPy number takes the tensor's dtype
    sum(y.sum() for y in ys).backward()
    assert x32.grad.dtype == np.float32


def test_integer_tensor_with_a_float_number_is_not_truncated():
    ids = Tensor(np.array([1, 2]))
    np.testing.assert_array_equal((ids + 0.5).data, [1.5, 2.5])
    np.testing.assert_array_equal((0.5 * ids).data, [0.5, 1.0])
    np.testing.assert_array_equal((ids / 2).data, [0.5, 1.0])


# ----- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, op", [
    ("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b), ("add", lambda a, b: a + b.data),
])
def test_mismatched_shapes_name_the_operation_and_both_shapes(name, op):
    a, b = Tensor(np.ones((2, 3)), requires_grad=True), Tensor(np.ones((4,)))
    with pytest.raises(ValueError, match=rf"{name}.*\(2, 3\).*\(4,\)"):
        op(a, b)


@pytest.mark.parametrize("shape_a, shape_b", [
    ((2, 3), (4, 5)), ((3,), (4,)), ((2, 3, 4), (5, 4, 2)), ((), (3,)), ((3,), ()),
])
def test_matmul_mismatch_names_both_shapes(shape_a, shape_b):
    with pytest.raises(ValueError, match=rf"matmul.*{shape_a}.*{shape_b}".replace("(", r"\(")
                       .replace(")", r"\)")):
        Tensor(np.ones(shape_a)) @ Tensor(np.ones(shape_b))


def test_reshape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3\).*\(4, 2\)"):
        Tensor(np.ones((2, 3))).reshape(4, 2)


def test_backward_of_non_scalar_without_grad_says_so():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2
    with pytest.raises(RuntimeError, match=r"single-element.*\(2, 3\)"):
        y.backward()


def test_backward_with_a_wrongly_shaped_grad():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_a_single_element_non_scalar_may_omit_grad():
    x = Tensor(np.array([[2.0]]), requires_grad=True)
    (x * x).backward()
    np.testing.assert_array_equal(x.grad, [[4.0]])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_integer_tensor_cannot_require_grad(dtype):
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.zeros(3, dtype=dtype), requires_grad=True)


def test_pow_needs_a_number_exponent():
    x = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(TypeError, match="exponent"):
        x ** Tensor(np.ones(2))
