"""minisage.fast against the reference forms of minisage.functional: every fused function has the
value and VJPs of its reference (float64 to rounding, ~1e-12 relative; float32 to ~1e-5, and
float32 in gives float32 out), the fused and reference Transformers agree, and the fused functions
agree with torch where it is installed."""

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import ndtr
from strategies import spread

import minisage.fast as fast
import minisage.functional as F
from minisage import Tensor, no_grad
from minisage.nn import Transformer, TransformerConfig

SEEDS = st.integers(0, 2**32 - 1)
LEAD = st.lists(st.integers(1, 3), max_size=2)  # leading (batch) axes
# float64: both sides round ~tens of times at unit roundoff 1.1e-16, relative to the largest
# entry; float32: the same at 6e-8.
TOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])


def _leaves(arrays):
    return [Tensor(a, requires_grad=True) for a in arrays]


def _value_and_grads(f, arrays, u):
    leaves = _leaves(arrays)
    out = f(*leaves)
    out.backward(u)
    return out.data, [t.grad for t in leaves]


def _close(actual, expected, rtol):
    """Equal up to ``rtol`` relative to the largest entry (sums round relative to their terms)."""
    np.testing.assert_allclose(actual, expected, rtol=rtol,
                               atol=rtol * max(1.0, np.abs(expected).max(initial=0)))


def _agree(fused, reference, arrays, seed, dtype=np.float64, rtol=None):
    """``fused`` and ``reference`` have the same value and VJPs on ``arrays`` in ``dtype`` (a
    random cotangent), and keep the dtype."""
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    with no_grad():
        shape = reference(*arrays).shape
    u = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    (a, ga), (b, gb) = _value_and_grads(fused, arrays, u), _value_and_grads(reference, arrays, u)
    assert a.dtype == b.dtype == dtype
    for x, y in zip([a, *ga], [b, *gb]):
        assert x.dtype == dtype
        _close(x, y, rtol or TOL[dtype])


# ----- linear ------------------------------------------------------------------------------------
@DTYPES
@given(lead=LEAD, n_in=st.integers(1, 4), n_out=st.integers(1, 4), bias=st.booleans(),
       seed=SEEDS)
def test_linear_is_the_reference(dtype, lead, n_in, n_out, bias, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((*lead, n_in)), rng.standard_normal((n_out, n_in))]
    if bias:
        arrays.append(rng.standard_normal(n_out))
    _agree(fast.linear, F.linear, arrays, seed, dtype)


@pytest.mark.parametrize("linear", [fast.linear, F.linear], ids=["fast", "reference"])
def test_linear_bad_shapes_and_an_input_without_grad(linear):
    with pytest.raises(ValueError, match=r"linear: input \(2, 3\) and weight \(4, 2\)"):
        linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 2))))
    w = Tensor(np.ones((2, 3)), requires_grad=True)
    linear(np.ones((5, 3)), w).backward(np.ones((5, 2)))
    np.testing.assert_array_equal(w.grad, np.full((2, 3), 5.0))


# ----- attention ---------------------------------------------------------------------------------
def _attention_arrays(seed, lead, t, s, d, scale=1.0):
    rng = np.random.default_rng(seed)
    return [scale * rng.standard_normal((*lead, n, d)) for n in (t, s, s)]


@pytest.mark.parametrize("causal", [False, True])
@given(lead=LEAD, t=st.integers(1, 5), s=st.integers(1, 5), d=st.integers(1, 4),
       scale=st.sampled_from([1.0, 30.0]), seed=SEEDS)
def test_attention_is_the_reference(causal, lead, t, s, d, scale, seed):
    # scale 30: scores far apart, so some exceed their diagonal by more than 80 (the row-max
    # path); scores up to ~1e3 round at ~1e-13 absolute, and exp turns that into a relative error
    _agree(lambda q, k, v: fast.attention(q, k, v, causal),
           lambda q, k, v: F.attention(q, k, v, causal),
           _attention_arrays(seed, lead, t, s, d, scale), seed, rtol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
@given(lead=LEAD, t=st.integers(1, 5), s=st.integers(1, 5), d=st.integers(1, 4), seed=SEEDS)
def test_attention_in_float32_is_the_reference(causal, lead, t, s, d, seed):
    _agree(lambda q, k, v: fast.attention(q, k, v, causal),
           lambda q, k, v: F.attention(q, k, v, causal),
           _attention_arrays(seed, lead, t, s, d), seed, np.float32)


def test_attention_is_exactly_causal_and_float32_stays_float32():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)).astype(np.float32) for _ in range(3))
    out = fast.attention(Tensor(q), Tensor(k), Tensor(v), causal=True).data
    k2, v2 = k.copy(), v.copy()
    k2[..., 4:, :] += 5.0
    v2[..., 4:, :] -= 3.0
    out2 = fast.attention(Tensor(q), Tensor(k2), Tensor(v2), causal=True).data
    np.testing.assert_array_equal(out[..., :4, :], out2[..., :4, :])  # rows 0-3 see keys 0-3
    assert out.dtype == np.float32
    exact = F.attention(*(Tensor(a.astype(np.float64)) for a in (q, k, v)), causal=True).data
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_dropout_is_the_reference_composition(causal):
    arrays = _attention_arrays(2, (2, 2), 5, 5, 3)
    with_dropout = [lambda q, k, v, f=f: f(q, k, v, causal, 0.3, True, np.random.default_rng(4))
                    for f in (fast.attention, F.attention)]
    u = np.random.default_rng(5).standard_normal((2, 2, 5, 3))
    (a, ga), (b, gb) = (_value_and_grads(f, arrays, u) for f in with_dropout)
    np.testing.assert_array_equal(a, b)  # the same masks from the same seed, the same function
    for x, y in zip(ga, gb):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a, fast.attention(*arrays, causal).data)  # dropout did apply
    # not training: no dropout, the fused path
    _agree(lambda q, k, v: fast.attention(q, k, v, causal, 0.3, False),
           lambda q, k, v: F.attention(q, k, v, causal), arrays, 6)
    with pytest.raises(ValueError, match=r"dropout: p must lie in \[0, 1\)"):
        fast.attention(*arrays, causal, dropout_p=1.0)


@pytest.mark.parametrize("blocks", [1, 3, 100])
def test_causal_attention_in_blocks_of_rows_is_the_reference(blocks, monkeypatch):
    """exp over blocks of rows up to their last visible column: seamless for any number of
    blocks (one, uneven, more than rows), square or not, weights kept or recomputed."""
    monkeypatch.setattr(fast, "CAUSAL_BLOCKS", blocks)
    for t, s, d in ((7, 7, 3), (5, 9, 1), (8, 8, 1)):
        _agree(lambda q, k, v: fast.attention(q, k, v, True),
               lambda q, k, v: F.attention(q, k, v, True), _attention_arrays(blocks, (2,), t, s, d),
               blocks, rtol=1e-10)


@pytest.mark.parametrize("chunk_bytes", [1, 200, 10**9])
def test_attention_in_chunks_is_the_reference(chunk_bytes, monkeypatch):
    """Chunks of one matrix (the second leading axis split), of several, or one for all: the
    same values and gradients, for broadcast leading axes and for self-attention."""
    monkeypatch.setattr(fast, "ATTENTION_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((3, 2, 4, 2)), rng.standard_normal((2, 6, 2)), \
        rng.standard_normal((1, 2, 6, 3))
    for causal in (False, True):
        _agree(lambda q, k, v, c=causal: fast.attention(q, k, v, c),
               lambda q, k, v, c=causal: F.attention(q, k, v, c), [q, k, v], 5, rtol=1e-10)
    x, ws = rng.standard_normal((3, 5, 4)), [rng.standard_normal((4, 4)) for _ in range(3)]
    _agree(lambda x, a, b, c: fast.self_attention(x, (a, None), (b, None), (c, None), 2, True),
           lambda x, a, b, c: _heads_composition(x, a, None, b, None, c, None, 2, True),
           [x, *ws], 6)


def test_attention_over_long_rows_keeps_no_weights():
    """Rows longer than 3 d: the VJP recomputes the (T, S) weights instead of keeping them, and
    still agrees with the reference (values and gradients)."""
    rng = np.random.default_rng(7)
    q, k, v = (Tensor(rng.standard_normal((2, 64, 2)), requires_grad=True) for _ in range(3))
    fast.attention(q, k, v, causal=True)  # the causal mask is made once, and kept
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = fast.attention(q, k, v, causal=True)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    weights_bytes = 2 * 64 * 64 * 8
    assert out.data.nbytes <= held < weights_bytes / 4
    _agree(lambda q, k, v: fast.attention(q, k, v, True),
           lambda q, k, v: F.attention(q, k, v, True), [q.data, k.data, v.data], 7)


def _heads_composition(x, wq, bq, wk, bk, wv, bv, n_heads, causal, attention=F.attention,
                       queries=None):
    B, T, D = x.shape
    Tq = T if queries is None else queries

    def heads(t):
        return t.reshape(B, t.shape[1], n_heads, D // n_heads).transpose(0, 2, 1, 3)

    q = heads(F.linear(x[:, :Tq], wq, bq))  # the first Tq positions ask
    k, v = (heads(F.linear(x, w, b)) for w, b in ((wk, bk), (wv, bv)))
    return attention(q, k, v, causal).transpose(0, 2, 1, 3).reshape(B, Tq, D)


@DTYPES
@pytest.mark.parametrize("causal", [False, True])
@given(batch=st.integers(1, 3), seq=st.integers(1, 7), n_heads=st.integers(1, 3),
       head_dim=st.integers(1, 3), biases=st.sampled_from(["all", "none", "some"]), seed=SEEDS,
       asking=st.floats(0, 1))
def test_self_attention_is_the_composition(dtype, causal, batch, seq, n_heads, head_dim, biases,
                                           seed, asking):
    # seq up to 7 and head_dim down to 1: both short rows (weights kept) and long (recomputed);
    # all positions ask (queries=None) or the first 1..seq
    queries = None if asking == 1 else 1 + int(asking * seq)
    rng = np.random.default_rng(seed)
    d = n_heads * head_dim
    x = rng.standard_normal((batch, seq, d))
    ws = [rng.standard_normal((d, d)) / math.sqrt(d) for _ in range(3)]
    has_bias = {"all": (True,) * 3, "none": (False,) * 3, "some": (True, False, True)}[biases]
    bs = [rng.standard_normal(d) for b in has_bias if b]

    def with_pairs(f):
        def g(x, *params):
            params, pairs = list(params), []
            ws = params[:3]
            bs = iter(params[3:])
            for w, b in zip(ws, has_bias):
                pairs.append((w, next(bs) if b else None))
            return f(x, *pairs)
        return g

    _agree(with_pairs(lambda x, *pairs: fast.self_attention(x, *pairs, n_heads, causal,
                                                            queries)),
           with_pairs(lambda x, *pairs: _heads_composition(
               x, *(t for pair in pairs for t in pair), n_heads, causal, queries=queries)),
           [x, *ws, *bs], seed, dtype)


def test_self_attention_bad_shapes():
    with pytest.raises(ValueError, match=r"self_attention: weights must be \(4, 4\)"):
        fast.self_attention(np.ones((1, 2, 4)), (np.ones((4, 4)), None), (np.ones((4, 3)), None),
                            (np.ones((4, 4)), None), 2)
    square = (np.ones((4, 4)), None)
    for queries in (0, 3):
        with pytest.raises(ValueError, match=rf"queries must be in \[1, 2\], got {queries}"):
            fast.self_attention(np.ones((1, 2, 4)), square, square, square, 2, queries=queries)


# ----- layer_norm --------------------------------------------------------------------------------
@DTYPES
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       affine=st.sampled_from(["none", "weight", "bias", "both"]),
       eps=st.sampled_from([1e-5, 1e-2]), seed=SEEDS)
def test_layer_norm_is_the_reference(dtype, shape, affine, eps, seed):
    rng = np.random.default_rng(seed)
    arrays = [spread(rng.standard_normal(shape), 0.5, axis=-1)]  # variance >= 1/16: rstd <= 4
    use_weight, use_bias = affine in ("weight", "both"), affine in ("bias", "both")
    arrays += [rng.standard_normal(shape[-1:]) for _ in range(use_weight + use_bias)]

    def with_params(layer_norm):
        def f(x, *params):
            weight = params[0] if use_weight else None
            bias = params[-1] if use_bias else None
            return layer_norm(x, weight, bias, eps)
        return f

    _agree(with_params(fast.layer_norm), with_params(F.layer_norm), arrays, seed, dtype)


@DTYPES
def test_layer_norm_of_a_constant_row_is_the_reference(dtype):
    arrays = [np.full((2, 4), 3.25), np.array([1.0, -2.0, 0.5, 3.0]),
              np.array([0.1, 0.2, 0.3, 0.4])]
    _agree(fast.layer_norm, F.layer_norm, arrays, 0, dtype)
    out = fast.layer_norm(*(Tensor(a.astype(dtype)) for a in arrays))
    np.testing.assert_array_equal(out.data, np.broadcast_to(arrays[2].astype(dtype), (2, 4)))


# ----- GELU --------------------------------------------------------------------------------------
def test_float32_gelu_is_exact_to_its_approximation():
    x = np.concatenate([np.linspace(-12, 12, 100_001), [0.0, -0.0, 1e-30, 40.0, -40.0]])
    t = Tensor(x.astype(np.float32), requires_grad=True)
    y = fast.gelu(t)
    y.backward(np.ones(x.shape, np.float32))
    x64 = x.astype(np.float32).astype(np.float64)
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    assert y.data.dtype == t.grad.dtype == np.float32
    # |Phi error| < 1.5e-7 (A&S 7.1.26) plus the float32 roundings of its evaluation (~2e-7)
    assert np.all(np.abs(y.data - x64 * ndtr(x64)) <= 3e-7 * np.abs(x64))
    assert np.all(np.abs(t.grad - (ndtr(x64) + x64 * pdf)) <= 4e-7)
    assert fast.gelu(Tensor(np.float32(0.0))).data == 0.0  # 0-d works
    assert fast.gelu(Tensor(np.array([np.inf], np.float32))).data[0] == np.inf


@DTYPES
@given(seed=SEEDS, shape=st.lists(st.integers(1, 5), max_size=3))
def test_gelu_is_the_reference(dtype, seed, shape):
    x = 4 * np.random.default_rng(seed).standard_normal(shape)
    _agree(fast.gelu, F.gelu, [x], seed, dtype)


@DTYPES
def test_gelu_in_blocks_is_the_reference(dtype, monkeypatch):
    """Blocks of 7 entries: every block boundary (and the short last block) is seamless."""
    monkeypatch.setattr(fast, "GELU_BLOCK", 7)
    x = 4 * np.random.default_rng(1).standard_normal((5, 9))
    _agree(fast.gelu, F.gelu, [x], 1, dtype)
    _agree(fast.linear_gelu, lambda x, w, b: F.gelu(F.linear(x, w, b)),
           [x, np.ones((3, 9)), np.zeros(3)], 2, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tanh_gelu_is_the_reference_itself(dtype):
    approximate = "tanh"
    x = np.linspace(-5, 5, 41).astype(dtype)
    u = np.random.default_rng(0).standard_normal(41).astype(dtype)
    a, (ga,) = _value_and_grads(lambda t: fast.gelu(t, approximate), [x], u)
    b, (gb,) = _value_and_grads(lambda t: F.gelu(t, approximate), [x], u)
    assert a.dtype == ga.dtype == dtype
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ga, gb)


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        fast.gelu(Tensor(np.ones(2, np.float32)), approximate="sigmoid")


# ----- fused linear layers -----------------------------------------------------------------------
@DTYPES
@given(lead=LEAD, n_in=st.integers(1, 4), n_out=st.integers(1, 4), bias=st.booleans(),
       seed=SEEDS)
def test_residual_linear_and_linear_gelu_are_their_compositions(dtype, lead, n_in, n_out, bias,
                                                               seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((*lead, n_in)), rng.standard_normal((n_out, n_in))
    b = [rng.standard_normal(n_out)] if bias else []
    _agree(lambda r, x, w, *b: fast.residual_linear(r, x, w, *b),
           lambda r, x, w, *b: r + F.linear(x, w, *b),
           [rng.standard_normal((*lead, n_out)), x, w, *b], seed, dtype)
    _agree(fast.linear_gelu, lambda x, w, *b: F.gelu(F.linear(x, w, *b)), [x, w, *b], seed, dtype)


def test_residual_linear_needs_the_output_shape():
    with pytest.raises(ValueError, match=r"residual_linear: residual \(2, 4\) and output \(2, 3\)"):
        fast.residual_linear(np.ones((2, 4)), np.ones((2, 5)), np.ones((3, 5)))


# ----- embeddings --------------------------------------------------------------------------------
@given(vocab=st.integers(1, 5), n=st.integers(0, 12), dim=st.integers(1, 3), seed=SEEDS)
def test_embedding_gradient_is_add_at(vocab, n, dim, seed):
    rng = np.random.default_rng(seed)
    w = Tensor(rng.standard_normal((vocab, dim)), requires_grad=True)
    ids = rng.integers(0, vocab, (n,))
    u = rng.standard_normal((n, dim))
    fast.embedding(ids, w).backward(u)
    expected = np.zeros((vocab, dim))
    np.add.at(expected, ids, u)
    np.testing.assert_allclose(w.grad, expected, rtol=1e-13, atol=1e-14)


@DTYPES
@given(vocab=st.integers(1, 5), ids_shape=st.lists(st.integers(0, 4), max_size=2),
       dim=st.integers(1, 3), seed=SEEDS)
def test_embedding_is_the_reference(dtype, vocab, ids_shape, dim, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, ids_shape)
    _agree(lambda w: fast.embedding(ids, w), lambda w: F.embedding(ids, w),
           [rng.standard_normal((vocab, dim))], seed, dtype)


@pytest.mark.parametrize("ids, error", [
    ([0, 3], ValueError), ([-1], ValueError), ([0.0, 1.0], TypeError),
])
def test_embedding_bad_ids(ids, error):
    with pytest.raises(error, match="embedding"):
        fast.embedding(np.array(ids), Tensor(np.zeros((3, 2))))


@DTYPES
@given(batch=st.integers(1, 3), seq=st.integers(1, 5), extra=st.integers(0, 2),
       vocab=st.integers(1, 5), seed=SEEDS)
def test_token_and_position_embedding_is_the_sum_of_two_lookups(dtype, batch, seq, extra, vocab,
                                                                  seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, seq))
    word, position = rng.standard_normal((vocab, 3)), rng.standard_normal((seq + extra, 3))
    _agree(lambda w, p: fast.token_and_position_embedding(ids, w, p),
           lambda w, p: F.embedding(ids, w) + F.embedding(np.arange(seq), p),
           [word, position], seed, dtype)


def test_token_and_position_embedding_needs_a_row_per_position():
    with pytest.raises(ValueError, match=r"embedding: ids must lie in \[0, 3\)"):
        fast.token_and_position_embedding(np.zeros((2, 4), int), Tensor(np.zeros((5, 2))),
                                          Tensor(np.zeros((3, 2))))


# ----- the model: fused and reference Transformers agree -----------------------------------------
@DTYPES
@pytest.mark.parametrize("head", ["lm", "classify"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_and_reference_transformers_agree(dtype, head, causal, dropout):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, (3, 6))
    targets = rng.integers(0, 7, (3, 6)) if head == "lm" else rng.integers(0, 3, 3)
    losses, grads = {}, {}
    for fused in (True, False):
        config = TransformerConfig(vocab_size=7, max_len=8, d_model=8, n_layers=2, n_heads=2,
                                   num_classes=3, dropout=dropout, dtype=np.dtype(dtype).name,
                                   fused=fused)
        model = Transformer(config, seed=1)  # the same weights and dropout masks
        logits = model.lm_logits(ids, causal) if head == "lm" else model.classify_logits(ids,
                                                                                         causal)
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        losses[fused] = loss.data
        grads[fused] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert losses[True].dtype == dtype
    _close(losses[True], losses[False], TOL[dtype])
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[True].items():
        assert grad.dtype == dtype, name
        _close(grad, grads[False][name], TOL[dtype])


# ----- torch -------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_fused_functions_agree_with_torch(causal):
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    x, w, b = rng.standard_normal((2, 5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    ids = rng.integers(0, 3, (2, 5))
    for ours, theirs, arrays in (
        (lambda q, k, v: fast.attention(q, k, v, causal),
         lambda q, k, v: tF.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v)),
        (fast.linear, tF.linear, (x, w, b)),
        (lambda x, w, b: fast.layer_norm(x, w, b), lambda x, w, b: tF.layer_norm(x, (4,), w, b),
         (x, w[0] + 1, b[:1] * w[1])),
        (lambda w: fast.embedding(ids, w), lambda w: tF.embedding(torch.from_numpy(ids), w),
         (w,)),
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


def test_float32_gelu_agrees_with_torch():
    torch = pytest.importorskip("torch")
    x = np.linspace(-8, 8, 4001).astype(np.float32)
    t = Tensor(x, requires_grad=True)
    y = fast.gelu(t)
    y.backward(np.ones_like(x))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.gelu(tx)
    ty.backward(torch.ones_like(tx))
    # both evaluate x Phi(x) in float32 to ~1e-7 relative (torch's CPU kernel may use another
    # formula for Phi than A&S 7.1.26)
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-6, atol=1e-6)
