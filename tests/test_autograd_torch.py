"""The engine against torch.autograd in float64: values and gradients agree to 1e-9.

Skipped when torch is not importable. Each case computes f on the same inputs in both, then the
VJP with the same random cotangent u (backward(u) here, torch.autograd.grad(f, x, u) there).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import (
    arrays,
    axes,
    identity,
    integer_indices,
    matmul_shapes,
    operands,
    shapes,
    spread,
)

import minisage.functional as F
from minisage import Tensor

torch = pytest.importorskip("torch")
tF = torch.nn.functional

# Both sides evaluate the same float64 formulas to ~1e-15 relative; 1e-9 leaves room for a
# different order of summation but not for a different convention or a wrong VJP.
TOL = 1e-9
SEEDS = st.integers(0, 2**32 - 1)


def compare(engine, reference, arrays_, params, seed):
    """f(*arrays) and the VJPs of every array agree between the engine and torch."""
    ours = [Tensor(a, requires_grad=True) for a in arrays_]
    out = engine(*ours, **params)
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays_]
    expected = reference(*theirs, **params)
    assert out.shape == tuple(expected.shape)
    np.testing.assert_allclose(out.data, expected.detach().numpy(), rtol=TOL, atol=TOL)
    u = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(u)
    grads = torch.autograd.grad(expected, theirs, torch.from_numpy(u), allow_unused=True)
    for mine, g in zip(ours, grads):
        expected_grad = np.zeros(mine.shape) if g is None else g.numpy()
        np.testing.assert_allclose(mine.grad, expected_grad, rtol=TOL, atol=TOL)


def _reduce(name):
    def run(x, axis, keepdims):
        dims = tuple(range(x.ndim)) if axis is None else axis
        return getattr(torch, name)(x, dim=dims, keepdim=keepdims)
    return run


# ----- broadcasting arithmetic -------------------------------------------------------------------
@pytest.mark.parametrize("name, f", [
    ("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / (b * b + 1)), ("composite", lambda a, b: (a * b).tanh() - b / 3),
])
@given(data=st.data(), seed=SEEDS)
def test_broadcasting_arithmetic(name, f, data, seed):
    compare(f, f, data.draw(operands(identity, identity)), {}, seed)


@given(data=st.data(), seed=SEEDS)
def test_batched_matmul_with_broadcast_batch_axes_and_1d_operands(data, seed):
    shape_a, shape_b = data.draw(matmul_shapes())
    compare(lambda a, b: a @ b, torch.matmul,
            (data.draw(arrays(shape_a)), data.draw(arrays(shape_b))), {}, seed)


@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sqrt", "relu", "abs"])
@given(data=st.data(), seed=SEEDS)
def test_elementwise_functions(name, data, seed):
    x = data.draw(arrays(shapes()))
    x = x + 3 if name in ("log", "sqrt") else x
    compare(lambda t: getattr(t, name)(), lambda t: getattr(torch, name)(t), (x,), {}, seed)


@pytest.mark.parametrize("exponent", [0, 1, 2, 3, 0.5, -1.5])
def test_powers_including_their_value_at_zero(exponent):
    x = np.array([0.0, 0.5, 2.0]) if exponent >= 1 or exponent == 0 else np.array([0.5, 2.0])
    compare(lambda t: t**exponent, lambda t: t**exponent, (x,), {}, 0)


def test_kinks_at_zero_match_torch():
    x = np.array([0.0, 0.0, 1.0])
    for name in ("relu", "abs", "sqrt"):
        with np.errstate(divide="ignore"):
            ours = Tensor(x, requires_grad=True)
            getattr(ours, name)().backward(np.ones(3))
        theirs = torch.tensor(x, requires_grad=True)
        getattr(torch, name)(theirs).backward(torch.ones(3))
        np.testing.assert_array_equal(ours.grad, theirs.grad.numpy(), err_msg=name)


# ----- reductions, max with ties (torch.amax splits the gradient among ties equally) -------------
@pytest.mark.parametrize("name", ["sum", "mean", "amax"])
@given(data=st.data(), seed=SEEDS)
def test_reductions(name, data, seed):
    x = data.draw(arrays(shapes(min_dims=1)))
    axis = data.draw(axes(x.ndim).filter(lambda a: a != ()))  # torch reads dim=() as all axes
    keepdims = data.draw(st.booleans())
    method = "max" if name == "amax" else name
    compare(lambda t, axis, keepdims: getattr(t, method)(axis=axis, keepdims=keepdims),
            _reduce(name), (x,), {"axis": axis, "keepdims": keepdims}, seed)


@given(data=st.data(), seed=SEEDS)
def test_max_with_ties_matches_amax(data, seed):
    x = data.draw(hnp.arrays(np.float64, shapes(min_dims=1), elements=st.sampled_from([0., 1.])))
    axis = data.draw(axes(x.ndim).filter(lambda a: a != ()))
    compare(lambda t, axis: t.max(axis=axis), lambda t, axis: torch.amax(
        t, dim=tuple(range(t.ndim)) if axis is None else axis), (x,), {"axis": axis}, seed)


# ----- indexing with repeated integer indices ----------------------------------------------------
def _to_torch_index(index):
    """NumPy's reading of an index in torch's terms: arrays and lists become index tensors."""
    parts = index if isinstance(index, tuple) else (index,)
    parts = tuple(torch.tensor(p) if isinstance(p, (np.ndarray, list)) else p for p in parts)
    return parts if isinstance(index, tuple) else parts[0]


@given(data=st.data(), seed=SEEDS)
def test_integer_array_indexing(data, seed):
    x = data.draw(arrays(shapes(min_dims=1)))
    index = data.draw(integer_indices(x.shape))
    compare(lambda t: t[index], lambda t: t[_to_torch_index(index)], (x,), {}, seed)


# ----- functional --------------------------------------------------------------------------------
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(data=st.data(), seed=SEEDS)
def test_gelu(approximate, data, seed):
    x = 3 * data.draw(arrays(shapes()))
    compare(lambda t: F.gelu(t, approximate), lambda t: tF.gelu(t, approximate=approximate),
            (x,), {}, seed)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(data=st.data(), seed=SEEDS)
def test_softmax_of_large_logits(name, data, seed):
    x = 500 * data.draw(arrays(shapes(min_dims=1)))  # logits in [-1000, 1000]
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    compare(lambda t: getattr(F, name)(t, axis), lambda t: getattr(tF, name)(t, dim=axis),
            (x,), {}, seed)


@given(data=st.data(), seed=SEEDS)
def test_cross_entropy_with_ignore_index(data, seed):
    shape = data.draw(shapes(min_dims=2, max_dims=3))
    num_classes = shape[-1]
    z = 10 * data.draw(arrays(shape))
    ignore_index = data.draw(st.sampled_from([None, -100, 0]))
    choices = list(range(num_classes)) + [-100] * (ignore_index == -100)
    targets = data.draw(hnp.arrays(np.int64, shape[:-1], elements=st.sampled_from(choices)))
    # every row ignored included: torch gives a nan loss and zero gradients
    compare(lambda t: F.cross_entropy(t, targets, ignore_index),
            lambda t: tF.cross_entropy(t.reshape(-1, num_classes),
                                       torch.from_numpy(targets.reshape(-1)),
                                       ignore_index=-100 if ignore_index is None else ignore_index),
            (z,), {}, seed)


@pytest.mark.parametrize("affine", [False, True])
@given(data=st.data(), seed=SEEDS)
def test_layer_norm(affine, data, seed):
    shape = data.draw(shapes(min_dims=1))
    x = spread(data.draw(arrays(shape)), 0.5, axis=-1)
    eps = data.draw(st.sampled_from([1e-5, 1e-2]))
    if affine:
        w, b = data.draw(arrays(shape[-1:])), data.draw(arrays(shape[-1:]))
        compare(lambda t, w, b: F.layer_norm(t, w, b, eps),
                lambda t, w, b: tF.layer_norm(t, shape[-1:], w, b, eps), (x, w, b), {}, seed)
    else:
        compare(lambda t: F.layer_norm(t, None, None, eps),
                lambda t: tF.layer_norm(t, shape[-1:], None, None, eps), (x,), {}, seed)


def test_layer_norm_of_constant_rows():
    x = np.full((3, 5), -2.5)
    compare(lambda t: F.layer_norm(t, None, None), lambda t: tF.layer_norm(t, (5,)), (x,), {}, 1)


@given(data=st.data(), seed=SEEDS)
def test_embedding_with_repeated_ids(data, seed):
    vocab = data.draw(st.integers(1, 4))
    w = data.draw(arrays((vocab, data.draw(st.integers(1, 4)))))
    ids = data.draw(hnp.arrays(np.int64, shapes(0, 2, max_side=6),
                               elements=st.integers(0, vocab - 1)))
    compare(lambda t: F.embedding(ids, t), lambda t: tF.embedding(torch.from_numpy(ids), t),
            (w,), {}, seed)


@given(data=st.data(), seed=SEEDS)
def test_linear(data, seed):
    lead = data.draw(shapes(max_dims=2))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    arrays_ = (data.draw(arrays((*lead, n_in))), data.draw(arrays((n_out, n_in))),
               data.draw(arrays((n_out,))))
    compare(F.linear, tF.linear, arrays_, {}, seed)


@pytest.mark.parametrize("causal", [False, True])
@given(data=st.data(), seed=SEEDS)
def test_attention(causal, data, seed):
    lead = data.draw(shapes(max_dims=2, max_side=3))
    t, d = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    qkv = tuple(3 * data.draw(arrays((*lead, t, d))) for _ in range(3))
    compare(lambda q, k, v: F.attention(q, k, v, causal),
            lambda q, k, v: tF.scaled_dot_product_attention(q, k, v, is_causal=causal),
            qkv, {}, seed)
