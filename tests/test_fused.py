"""The fused primitives (F.linear, F.scaled_dot_product_attention), the float32 GELU and the fast
embedding VJP against their references: the unfused compositions on the engine (the documented
math), NumPy/SciPy, and torch where it is installed. Values and every VJP, float64 to rounding;
float32 in gives float32 out."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import ndtr

import minisage.functional as F
from minisage import Tensor, no_grad
from minisage.nn import Transformer, TransformerConfig

SEEDS = st.integers(0, 2**32 - 1)


def _leaves(arrays):
    return [Tensor(a, requires_grad=True) for a in arrays]


def _value_and_grads(f, arrays, u):
    leaves = _leaves(arrays)
    out = f(*leaves)
    out.backward(u)
    return out.data, [t.grad for t in leaves]


def _agree(f, g, arrays, seed, rtol=1e-12, atol=1e-13):
    """f and g have the same value and VJPs on ``arrays`` (a random cotangent)."""
    with no_grad():
        shape = f(*arrays).shape
    u = np.random.default_rng(seed).standard_normal(shape)
    (a, ga), (b, gb) = _value_and_grads(f, arrays, u), _value_and_grads(g, arrays, u)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# ----- linear ------------------------------------------------------------------------------------
def linear_reference(x, w, b=None):
    y = x.reshape(-1, x.shape[-1]) @ w.transpose()
    if b is not None:
        y = y + b
    return y.reshape(*x.shape[:-1], w.shape[0])


@given(lead=st.lists(st.integers(1, 3), max_size=2), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), bias=st.booleans(), seed=SEEDS)
def test_linear_is_the_composition(lead, n_in, n_out, bias, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((*lead, n_in)), rng.standard_normal((n_out, n_in))]
    if bias:
        arrays.append(rng.standard_normal(n_out))
    _agree(F.linear, linear_reference, arrays, seed)


def test_linear_bad_shapes_and_an_input_without_grad():
    with pytest.raises(ValueError, match=r"linear: input \(2, 3\) and weight \(4, 2\)"):
        F.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 2))))
    w = Tensor(np.ones((2, 3)), requires_grad=True)
    F.linear(np.ones((5, 3)), w).backward(np.ones((5, 2)))
    np.testing.assert_array_equal(w.grad, np.full((2, 3), 5.0))


# ----- attention ---------------------------------------------------------------------------------
def attention_reference(q, k, v, causal):
    """The composition nn.SelfAttention writes out (and uses with attention dropout)."""
    t, d = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(*range(k.ndim - 2), k.ndim - 1, k.ndim - 2)) * (1 / math.sqrt(d))
    if causal:
        scores = F.masked_fill(scores, np.triu(np.ones((t, t), bool), 1), -np.inf)
    return F.softmax(scores, axis=-1) @ v


@pytest.mark.parametrize("causal", [False, True])
@given(lead=st.lists(st.integers(1, 3), max_size=2), t=st.integers(1, 5), d=st.integers(1, 4),
       scale=st.sampled_from([1.0, 30.0]), seed=SEEDS)
def test_attention_is_the_composition(causal, lead, t, d, scale, seed):
    # scale 30: scores far apart, so some exceed their diagonal by more than 80 (the row-max path)
    rng = np.random.default_rng(seed)
    arrays = [scale * rng.standard_normal((*lead, t, d)) for _ in range(3)]
    _agree(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal),
           lambda q, k, v: attention_reference(q, k, v, causal), arrays, seed,
           rtol=1e-10, atol=1e-12)


def test_attention_is_exactly_causal_and_float32_stays_float32():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)).astype(np.float32) for _ in range(3))
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=True).data
    k2, v2 = k.copy(), v.copy()
    k2[..., 4:, :] += 5.0
    v2[..., 4:, :] -= 3.0
    out2 = F.scaled_dot_product_attention(Tensor(q), Tensor(k2), Tensor(v2), causal=True).data
    np.testing.assert_array_equal(out[..., :4, :], out2[..., :4, :])  # rows 0-3 see keys 0-3
    assert out.dtype == np.float32
    exact = F.scaled_dot_product_attention(*(Tensor(a.astype(np.float64)) for a in (q, k, v)),
                                           causal=True).data
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-6)


# ----- GELU in float32, the embedding VJP --------------------------------------------------------
def test_float32_gelu_is_exact_to_its_approximation():
    x = np.concatenate([np.linspace(-12, 12, 100_001), [0.0, -0.0, 1e-30, 40.0, -40.0]])
    t = Tensor(x.astype(np.float32), requires_grad=True)
    y = F.gelu(t)
    y.backward(np.ones(x.shape, np.float32))
    x64 = x.astype(np.float32).astype(np.float64)
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    assert y.data.dtype == t.grad.dtype == np.float32
    # |Phi error| < 1.5e-7 (A&S 7.1.26) plus the float32 roundings of its evaluation (~2e-7)
    assert np.all(np.abs(y.data - x64 * ndtr(x64)) <= 3e-7 * np.abs(x64))
    assert np.all(np.abs(t.grad - (ndtr(x64) + x64 * pdf)) <= 4e-7)
    assert F.gelu(Tensor(np.float32(0.0))).data == 0.0  # 0-d works
    assert F.gelu(Tensor(np.array([np.inf], np.float32))).data[0] == np.inf


@given(vocab=st.integers(1, 5), n=st.integers(0, 12), dim=st.integers(1, 3), seed=SEEDS)
def test_embedding_gradient_is_add_at(vocab, n, dim, seed):
    rng = np.random.default_rng(seed)
    w = Tensor(rng.standard_normal((vocab, dim)), requires_grad=True)
    ids = rng.integers(0, vocab, (n,))
    u = rng.standard_normal((n, dim))
    F.embedding(ids, w).backward(u)
    expected = np.zeros((vocab, dim))
    np.add.at(expected, ids, u)
    np.testing.assert_allclose(w.grad, expected, rtol=1e-13, atol=1e-14)


# ----- the model: fused and unfused paths agree --------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_fused_attention_matches_the_unfused_path(causal, monkeypatch):
    cfg = TransformerConfig(vocab_size=7, max_len=6, d_model=8, n_layers=2, n_heads=2)
    ids = np.random.default_rng(0).integers(0, 7, (3, 6))
    fused, grads = {}, {}
    for name, sdpa in (("fused", F.scaled_dot_product_attention),
                       ("unfused", lambda q, k, v, c: attention_reference(q, k, v, c))):
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        model = Transformer(cfg, seed=1)
        logits = model.lm_logits(ids, causal=causal)
        logits.backward(np.ones(logits.shape))
        fused[name] = logits.data
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    np.testing.assert_allclose(fused["fused"], fused["unfused"], rtol=1e-12, atol=1e-13)
    for n in grads["fused"]:
        np.testing.assert_allclose(grads["fused"][n], grads["unfused"][n], rtol=1e-10, atol=1e-12)


# ----- torch -------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_fused_primitives_agree_with_torch(causal):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    x, w, b = rng.standard_normal((2, 5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    for ours, theirs, arrays in (
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal),
         lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v,
                                                                          is_causal=causal),
         (q, k, v)),
        (F.linear, torch.nn.functional.linear, (x, w, b)),
    ):
        leaves = _leaves(arrays)
        out = ours(*leaves)
        tleaves = [torch.tensor(a, requires_grad=True) for a in arrays]
        tout = theirs(*tleaves)
        u = rng.standard_normal(out.shape)
        out.backward(u)
        tout.backward(torch.tensor(u))
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
        for a, ta in zip(leaves, tleaves):
            np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-10, atol=1e-12)
