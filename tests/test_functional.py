"""Tests of minisage.functional: every function in one table, checked against its NumPy/SciPy
formula, against central finite differences and in float32; stability, conventions, bad input."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import erf, log_softmax, logsumexp, ndtr, softmax
from strategies import (
    MAX_SIDE,
    Op,
    arrays,
    broadcastable_shapes,
    check_float32,
    check_forward,
    check_vjp,
    no_params,
    operands,
    shapes,
    spread,
)

import minisage.functional as F
from minisage import Tensor

SEEDS = st.integers(0, 2**32 - 1)


def wide(x):
    """[-2, 2] -> [-4, 4]: gelu's curved part and both tails."""
    return 2.0 * x


def logits(x):
    """[-2, 2] -> [-10, 10]: softmax from nearly uniform to nearly one-hot."""
    return 5.0 * x


def gelu_reference(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def gelu_tanh_reference(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


# ----- input strategies --------------------------------------------------------------------------
@st.composite
def axis_inputs(draw):
    x = logits(draw(arrays(shapes(min_dims=1))))
    return (x,), {"axis": draw(st.integers(-x.ndim, x.ndim - 1))}


@st.composite
def cross_entropy_inputs(draw):
    shape = draw(shapes(min_dims=2, max_dims=3))  # (N, C) or (B, T, C)
    z = logits(draw(arrays(shape)))
    num_classes = shape[-1]
    ignore_index = draw(st.sampled_from([None, -100] + ([0, num_classes - 1] * (num_classes > 1))))
    choices = list(range(num_classes)) + ([] if ignore_index is None else [ignore_index])
    targets = draw(hnp.arrays(np.int64, shape[:-1], elements=st.sampled_from(choices)))
    if ignore_index is not None and np.all(targets == ignore_index):
        targets.flat[0] = 1 if ignore_index == 0 else 0  # at least one counted row
    return (z,), {"targets": targets, "ignore_index": ignore_index}


def cross_entropy_reference(z, targets, ignore_index):
    z, t = z.reshape(-1, z.shape[-1]), targets.reshape(-1)
    counted = np.ones(len(t), bool) if ignore_index is None else t != ignore_index
    rows = np.flatnonzero(counted)
    # -log softmax(z)[t] = logsumexp(z) - z[t], averaged over the counted rows
    return np.mean(logsumexp(z[rows], axis=1) - z[rows, t[rows]])


@st.composite
def layer_norm_inputs(draw, n_affine=0, eps=False):
    shape = draw(shapes(min_dims=1))
    x = spread(draw(arrays(shape)), gap=0.5, axis=-1)  # rows with variance >= 1/16: rstd <= 4
    affine = tuple(draw(arrays(shape[-1:])) for _ in range(n_affine))
    params = {"eps": draw(st.sampled_from([1e-5, 1e-3, 0.5]))} if eps else {}
    return (x,) + affine, params


def layer_norm_reference(x, weight=None, bias=None, eps=1e-5):
    y = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


@st.composite
def embedding_inputs(draw):
    vocab, dim = draw(st.integers(1, 5)), draw(st.integers(1, MAX_SIDE))
    weight = draw(arrays((vocab, dim)))
    ids = draw(hnp.arrays(np.int64, shapes(0, 2, max_side=6), elements=st.integers(0, vocab - 1)))
    return (weight,), {"ids": ids}


@st.composite
def where_inputs(draw):
    shape_c, shape_a, shape_b = draw(broadcastable_shapes(3))
    condition = draw(hnp.arrays(bool, shape_c))
    return (draw(arrays(shape_a)), draw(arrays(shape_b))), {"condition": condition}


@st.composite
def masked_fill_inputs(draw):
    shape_x, shape_m = draw(broadcastable_shapes(2).filter(
        lambda s: np.broadcast_shapes(*s) == s[0]))  # the mask broadcasts to x
    value = draw(st.sampled_from([0.0, -1e4, 3.5]))
    return (draw(arrays(shape_x)),), {"mask": draw(hnp.arrays(bool, shape_m)), "value": value}


@st.composite
def attention_inputs(draw, causal):
    lead = draw(shapes(max_dims=1, max_side=2))
    t, s, d = (draw(st.integers(1, MAX_SIDE)) for _ in range(3))
    return tuple(draw(arrays((*lead, n, d))) for n in (t, s, s)), {"causal": causal}


def attention_reference(q, k, v, causal):
    """softmax(q k^T / sqrt d, -inf above the diagonal if causal) v."""
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        scores = np.where(np.triu(np.ones(scores.shape[-2:], bool), 1), -np.inf, scores)
    return softmax(scores, axis=-1) @ v


@st.composite
def linear_inputs(draw, bias):
    lead = draw(shapes(max_dims=2))
    n_in, n_out = draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE))
    weights = (draw(arrays((n_out, n_in))),) + ((draw(arrays((n_out,))),) if bias else ())
    return (draw(arrays((*lead, n_in))),) + weights, {}


def linear_reference(x, weight, bias=None):
    return x @ weight.T if bias is None else x @ weight.T + bias


# ----- the table: engine function, NumPy/SciPy reference, input domain ---------------------------
FUNCTIONAL_OPS = [
    Op("gelu", F.gelu, gelu_reference, no_params(operands(wide))),
    Op("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), gelu_tanh_reference,
       no_params(operands(wide))),
    Op("softmax", F.softmax, softmax, axis_inputs()),
    Op("log_softmax", F.log_softmax, log_softmax, axis_inputs()),
    Op("cross_entropy", F.cross_entropy, cross_entropy_reference, cross_entropy_inputs()),
    Op("layer_norm", lambda x, **kw: F.layer_norm(x, None, None, **kw), layer_norm_reference,
       layer_norm_inputs(eps=True)),
    Op("layer_norm_affine", F.layer_norm, layer_norm_reference, layer_norm_inputs(2, eps=True)),
    Op("layer_norm_weight", lambda x, w: F.layer_norm(x, w, None), layer_norm_reference,
       layer_norm_inputs(1)),
    Op("layer_norm_bias", lambda x, b: F.layer_norm(x, None, b),
       lambda x, b: layer_norm_reference(x, None, b), layer_norm_inputs(1)),
    Op("embedding", lambda w, ids: F.embedding(ids, w), lambda w, ids: w[ids], embedding_inputs()),
    Op("where", lambda a, b, condition: F.where(condition, a, b),
       lambda a, b, condition: np.where(condition, a, b), where_inputs()),
    Op("masked_fill", F.masked_fill, lambda x, mask, value: np.where(mask, value, x),
       masked_fill_inputs()),
    Op("linear", F.linear, linear_reference, linear_inputs(bias=False)),
    Op("linear_bias", F.linear, linear_reference, linear_inputs(bias=True)),
    Op("attention", F.attention, attention_reference, attention_inputs(causal=False)),
    Op("causal_attention", F.attention, attention_reference, attention_inputs(causal=True)),
]

OPS = pytest.mark.parametrize("op", FUNCTIONAL_OPS, ids=lambda op: op.name)


@OPS
@given(data=st.data())
def test_forward_matches_reference(op, data):
    check_forward(op, *data.draw(op.inputs))


@OPS
@given(data=st.data(), seed=SEEDS)
def test_vjp_matches_central_differences(op, data, seed):
    check_vjp(op, *data.draw(op.inputs), seed)


@OPS
@given(data=st.data(), seed=SEEDS)
def test_float32_in_float32_values_and_gradients(op, data, seed):
    check_float32(op, *data.draw(op.inputs), seed)


# ----- gelu --------------------------------------------------------------------------------------
@given(x=arrays(shapes(), -6.0, 6.0))
def test_gelu_exact_is_x_times_the_normal_cdf(x):
    # an independent formula: scipy's ndtr (the normal CDF) instead of erf
    np.testing.assert_allclose(F.gelu(Tensor(x)).data, x * ndtr(x), rtol=1e-14, atol=1e-15)


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(Tensor(np.ones(2)), approximate="sigmoid")


# ----- stability: logits of +-1000, a constant row -----------------------------------------------
BIG = np.array([[1000.0, -1000.0, 1000.0], [-1000.0, -1000.0, -1000.0]])


def test_softmax_of_large_logits():
    x = Tensor(BIG, requires_grad=True)
    s = F.softmax(x)
    np.testing.assert_array_equal(s.data, [[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    g = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    s.backward(g)
    # VJP of softmax: s * (g - s.g); row 0: s.g = 2; row 1: s.g = 1
    np.testing.assert_allclose(x.grad, [[-0.5, 0.0, 0.5], [-1 / 3, -1 / 3, 2 / 3]], rtol=1e-15)


def test_log_softmax_of_large_logits():
    x = Tensor(BIG, requires_grad=True)
    y = F.log_softmax(x)
    log2, log3 = np.log(2.0), np.log(3.0)
    np.testing.assert_allclose(y.data, [[-log2, -2000 - log2, -log2], [-log3] * 3], rtol=1e-15)
    y.backward(np.ones_like(BIG))
    # VJP: g - softmax * sum(g) = 1 - 3 softmax
    np.testing.assert_allclose(x.grad, [[-0.5, 1.0, -0.5], [0.0, 0.0, 0.0]], atol=1e-15)


def test_cross_entropy_of_large_logits():
    x = Tensor(np.array([[1000.0, -1000.0], [1000.0, -1000.0]]), requires_grad=True)
    loss = F.cross_entropy(x, np.array([0, 1]))
    assert loss.item() == 1000.0  # (0 + 2000) / 2
    loss.backward()
    # (softmax - onehot) / N, softmax = (1, 0)
    np.testing.assert_array_equal(x.grad, [[0.0, 0.0], [0.5, -0.5]])


@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_of_a_constant_row(affine):
    eps = 1e-5
    x = Tensor(np.full((2, 4), 3.25), requires_grad=True)
    w = Tensor(np.array([1.0, -2.0, 0.5, 3.0]), requires_grad=True) if affine else None
    b = Tensor(np.array([0.1, 0.2, 0.3, 0.4]), requires_grad=True) if affine else None
    y = F.layer_norm(x, w, b, eps)
    np.testing.assert_array_equal(y.data, np.broadcast_to(b.data if affine else 0.0, (2, 4)))
    g = np.array([[1.0, 2.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]])
    y.backward(g)
    # At a constant row xhat = 0, so d xhat_i / d x_j = (delta_ij - 1/D) / sqrt(eps) and
    # dy/dx = w * that: grad_x = (gw - mean(gw)) / sqrt(eps), grad_w = g * xhat = 0, grad_b = sum g.
    gw = g * w.data if affine else g
    expected = (gw - gw.mean(axis=-1, keepdims=True)) / np.sqrt(eps)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12, atol=1e-12)
    if affine:
        np.testing.assert_array_equal(w.grad, np.zeros(4))
        np.testing.assert_array_equal(b.grad, g.sum(axis=0))


# ----- cross_entropy -----------------------------------------------------------------------------
def test_cross_entropy_ignored_rows_get_no_gradient_and_do_not_count():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 3))
    targets = np.array([2, -100, 0, -100, 1])
    x = Tensor(z, requires_grad=True)
    loss = F.cross_entropy(x, targets, ignore_index=-100)
    kept = targets != -100
    subset = Tensor(z[kept], requires_grad=True)
    loss_kept = F.cross_entropy(subset, targets[kept])
    assert loss.item() == pytest.approx(loss_kept.item(), rel=1e-15)
    loss.backward()
    loss_kept.backward()
    np.testing.assert_array_equal(x.grad[~kept], 0.0)
    np.testing.assert_allclose(x.grad[kept], subset.grad, rtol=1e-15)


def test_cross_entropy_with_every_row_ignored_is_nan_with_zero_gradient():
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    loss = F.cross_entropy(x, np.array([-1, -1]), ignore_index=-1)
    assert np.isnan(loss.item())  # 0/0, as torch
    with np.errstate(all="raise"):
        loss.backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))  # as torch: nothing to learn from


@pytest.mark.parametrize("targets", [[0, 3], [-1, 0], [0, -100]])
def test_cross_entropy_target_out_of_range(targets):
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array(targets))


def test_cross_entropy_float_targets_and_row_mismatch():
    with pytest.raises(TypeError, match="integers"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"cross_entropy.*\(2, 3\).*\(3,\)"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 1, 2]))


# ----- embedding ---------------------------------------------------------------------------------
def test_embedding_repeated_ids_accumulate():
    w = Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    ids = np.array([[1, 1], [2, 1]])
    out = F.embedding(ids, w)
    np.testing.assert_array_equal(out.data, [[[2, 3], [2, 3]], [[4, 5], [2, 3]]])
    out.backward(np.array([[[1.0, 2.0], [10.0, 20.0]], [[5.0, 5.0], [100.0, 200.0]]]))
    np.testing.assert_array_equal(w.grad, [[0, 0], [111, 222], [5, 5]])


@pytest.mark.parametrize("ids, error", [
    ([0, 3], ValueError), ([-1], ValueError), ([0.0, 1.0], TypeError),
])
def test_embedding_bad_ids(ids, error):
    with pytest.raises(error, match="embedding"):
        F.embedding(np.array(ids), Tensor(np.zeros((3, 2))))


# ----- dropout -----------------------------------------------------------------------------------
def test_dropout_same_seed_same_mask_and_other_seed_other_mask():
    x = np.arange(1.0, 201.0)
    a = F.dropout(Tensor(x), 0.5, True, np.random.default_rng(7)).data
    b = F.dropout(Tensor(x), 0.5, True, np.random.default_rng(7)).data
    c = F.dropout(Tensor(x), 0.5, True, np.random.default_rng(8)).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a == 0, c == 0)  # equal masks: probability 2^-200


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dropout_zeroes_or_scales_by_one_over_one_minus_p(dtype):
    p = 0.3
    x = Tensor(np.linspace(1.0, 2.0, 1000).astype(dtype), requires_grad=True)
    y = F.dropout(x, p, True, np.random.default_rng(0))
    assert y.dtype == dtype
    kept = y.data != 0
    assert 0 < kept.sum() < x.size
    ulp = np.finfo(dtype).eps
    np.testing.assert_allclose(y.data[kept], x.data[kept] / dtype(1 - p), rtol=2 * ulp)
    g = np.linspace(-1.0, 1.0, 1000).astype(dtype)
    y.backward(g)  # the same mask and scale on the way back
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(x.grad[~kept], 0)
    np.testing.assert_allclose(x.grad[kept], g[kept] / dtype(1 - p), rtol=2 * ulp)


def test_dropout_expected_value_is_kept():
    # E[dropout(1)] = (1 - p) / (1 - p) = 1; the mean of n entries has standard deviation
    # sqrt(p / ((1 - p) n)) and the dropped fraction sqrt(p (1 - p) / n): 5 sigma bounds.
    p, n = 0.3, 100_000
    y = F.dropout(Tensor(np.ones(n)), p, True, np.random.default_rng(1)).data
    assert abs(y.mean() - 1) < 5 * math.sqrt(p / ((1 - p) * n))
    assert abs((y == 0).mean() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_dropout_is_the_identity_in_eval_and_for_p_zero():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    for y in (F.dropout(x, 0.5, False, np.random.default_rng(0)), F.dropout(x, 0.5, False),
              F.dropout(x, 0.0, True)):
        np.testing.assert_array_equal(y.data, x.data)
        y.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0, 3.0])


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_dropout_rejects_p_outside_zero_one(p):
    with pytest.raises(ValueError, match=r"dropout: p"):
        F.dropout(Tensor(np.ones(3)), p, True, np.random.default_rng(0))


def test_dropout_training_needs_a_generator():
    with pytest.raises(ValueError, match="rng"):
        F.dropout(Tensor(np.ones(3)), 0.5, True)


# ----- attention ---------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_attention_dropout_drops_weights(causal):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 4, 3)) for _ in range(3))
    out = F.attention(Tensor(q), Tensor(k), Tensor(v), causal, dropout_p=0.25, training=True,
                      rng=np.random.default_rng(9)).data
    keep = np.random.default_rng(9).random((2, 4, 4)) >= 0.25  # the mask F.dropout draws
    weights = softmax(np.where(np.triu(np.ones((4, 4), bool), 1) & causal, -np.inf,
                               q @ np.swapaxes(k, -1, -2) / np.sqrt(3)), axis=-1)
    np.testing.assert_allclose(out, (weights * keep / 0.75) @ v, rtol=1e-13, atol=1e-15)


# ----- where / masked_fill -----------------------------------------------------------------------
def test_masked_fill_with_minus_infinity_before_softmax():
    x = Tensor(np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]), requires_grad=True)
    mask = np.array([False, True, False])
    s = F.softmax(F.masked_fill(x, mask, -np.inf))
    e = np.exp([1.0, 3.0])
    np.testing.assert_allclose(s.data, [[e[0] / e.sum(), 0, e[1] / e.sum()], [0.5, 0, 0.5]],
                               rtol=1e-15)
    s.backward(np.array([[1.0, 5.0, 0.0], [2.0, 7.0, 0.0]]))
    assert np.all(np.isfinite(x.grad))
    np.testing.assert_array_equal(x.grad[:, 1], 0.0)  # filled entries get no gradient


def test_where_gradient_goes_to_the_chosen_side():
    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = Tensor(np.array([[10.0], [20.0]]), requires_grad=True)  # broadcasts to (2, 3)
    F.where(np.array([True, False, True]), a, b).backward(np.ones((2, 3)))
    np.testing.assert_array_equal(a.grad, [2.0, 0.0, 2.0])
    np.testing.assert_array_equal(b.grad, [[1.0], [1.0]])


def test_where_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"where.*\(4,\).*\(2, 3\)"):
        F.where(np.ones(4, bool), Tensor(np.ones((2, 3))), Tensor(np.ones(3)))


# ----- an identity -------------------------------------------------------------------------------
@given(data=st.data())
def test_log_softmax_equals_log_of_softmax(data):
    # an identity between two engine functions, each checked above against SciPy
    x = logits(data.draw(arrays(shapes(min_dims=1))))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    np.testing.assert_allclose(F.log_softmax(Tensor(x), axis).data,
                               np.log(F.softmax(Tensor(x), axis).data), rtol=1e-12, atol=1e-12)
