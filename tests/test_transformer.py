"""The Transformer: finite-difference gradients of the whole model, state dicts, names, masks."""

from dataclasses import replace

import numpy as np
import pytest

import minisage.functional as F
from minisage.autograd import no_grad
from minisage.nn import Linear, Module, Parameter, Transformer, TransformerConfig
from minisage.tasks import IGNORE

TINY = TransformerConfig(vocab_size=7, max_len=5, d_model=8, n_layers=2, n_heads=2, num_classes=3)


def _loss(model, head, causal, ids, targets):
    if head == "lm":
        return F.cross_entropy(model.lm_logits(ids, causal), targets, ignore_index=IGNORE)
    return F.cross_entropy(model.classify_logits(ids, causal), targets)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("head", ["lm", "classify"])
@pytest.mark.parametrize("causal", [True, False])
def test_whole_model_gradient_matches_central_differences(head, causal, fused):
    rng = np.random.default_rng(1)
    model = Transformer(replace(TINY, fused=fused), seed=3)
    ids = rng.integers(0, TINY.vocab_size, (3, 5))
    if head == "lm":
        targets = rng.integers(0, TINY.vocab_size, (3, 5))
        targets[0, :2] = IGNORE
    else:
        targets = rng.integers(0, TINY.num_classes, 3)
    loss = _loss(model, head, causal, ids, targets)
    loss.backward()
    # Per parameter tensor: the directional derivative along a random v, by central differences
    # (h = 1e-5: truncation ~h^2 * |f'''| ~ 1e-10, rounding ~1e-16 / h ~ 1e-11) and by backward.
    h = 1e-5
    for name, p in model.named_parameters():
        if head == "lm" and name.startswith("classifier"):
            assert p.grad is None
            continue
        if head == "classify" and name.startswith("lm_head"):
            assert p.grad is None
            continue
        v = rng.standard_normal(p.shape)
        original = p.data.copy()
        with no_grad():
            p.data[...] = original + h * v
            plus = _loss(model, head, causal, ids, targets).item()
            p.data[...] = original - h * v
            minus = _loss(model, head, causal, ids, targets).item()
        p.data[...] = original
        numeric = (plus - minus) / (2 * h)
        analytic = float(np.vdot(p.grad, v))
        assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic)), name


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_classifier_computes_the_last_block_at_the_first_position_only(fused, causal, dtype):
    # classify_logits runs the last block for the first position alone: the same logits and
    # gradients as the classifier on the full forward's first position, to rounding
    rng = np.random.default_rng(2)
    ids = rng.integers(0, TINY.vocab_size, (4, 5))
    targets = rng.integers(0, TINY.num_classes, 4)
    results = []
    for full in (False, True):
        model = Transformer(replace(TINY, fused=fused, dtype=dtype), seed=3)
        logits = (model.classifier(model(ids, causal)[:, 0, :]) if full
                  else model.classify_logits(ids, causal))
        F.cross_entropy(logits, targets).backward()
        results.append([logits.data] + [p.grad for _, p in model.named_parameters()
                                        if not _.startswith("lm_head")])
    rtol = {"float64": 1e-12, "float32": 1e-5}[dtype]
    for fast_one, full_one in zip(*results):
        assert fast_one.dtype == np.dtype(dtype)
        # relative to the largest entry, or to 1 where all are tiny (the key bias's gradient
        # is 0 up to rounding: softmax ignores what it adds to a whole row)
        np.testing.assert_allclose(fast_one, full_one, rtol=rtol,
                                   atol=rtol * max(1.0, np.abs(full_one).max()))
    with no_grad():  # only the first position: (B, 1, D)
        assert Transformer(TINY, seed=3)(ids, queries=1).shape == (4, 1, TINY.d_model)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_causal_mask_hides_the_future(fused):
    model = Transformer(replace(TINY, fused=fused), seed=0)
    ids = np.array([[1, 2, 3, 4, 5]])
    changed = ids.copy()
    changed[0, 3:] = [6, 0]
    with no_grad():
        a, b = model.lm_logits(ids, causal=True), model.lm_logits(changed, causal=True)
        c, d = model.lm_logits(ids, causal=False), model.lm_logits(changed, causal=False)
    np.testing.assert_array_equal(a.data[0, :3], b.data[0, :3])  # positions 0-2 cannot see 3-4
    assert not np.allclose(c.data[0, :3], d.data[0, :3])  # bidirectional: they can


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_same_seed_same_model_and_float32_stays_float32(fused):
    a, b = Transformer(TINY, seed=5), Transformer(replace(TINY, fused=fused), seed=5)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)
    model = Transformer(replace(TINY, dtype="float32", fused=fused), seed=0)
    logits = model.lm_logits(np.zeros((2, 3), dtype=int))
    assert logits.dtype == np.float32
    F.cross_entropy(logits, np.zeros((2, 3), dtype=int)).backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters() if p.grad is not None)


def test_bert_style_names_and_shapes():
    names = dict(Transformer(TINY).named_parameters())
    assert names["blocks.1.attention.self.query.weight"].shape == (8, 8)
    assert names["blocks.0.intermediate.dense.weight"].shape == (32, 8)  # 4x width
    assert names["blocks.0.output.dense.weight"].shape == (8, 32)
    assert names["lm_head.weight"].shape == (7, 8)
    assert names["classifier.weight"].shape == (3, 8)
    # Linear biases start non-zero (zero entries would never move under SAGE).
    assert np.all(names["blocks.0.attention.self.key.bias"].data != 0)


def test_state_dict_round_trip_is_exact_and_mismatch_changes_nothing():
    a, b = Transformer(TINY, seed=1), Transformer(TINY, seed=2)
    b.load_state_dict(a.state_dict())
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    before = b.state_dict()
    bad = a.state_dict()
    bad["final_norm.weight"] = np.ones(9)
    with pytest.raises(ValueError, match="final_norm.weight"):
        b.load_state_dict(bad)
    for name, value in b.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({"final_norm.weight": np.ones(8)})


def test_module_walks_lists_and_train_eval_reaches_children():
    class Net(Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.scale = Parameter(np.ones(2))
            self.layers = [Linear(2, 2, rng), Linear(2, 1, rng, bias=False)]

    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale", "layers.0.weight", "layers.0.bias", "layers.1.weight"]
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_bad_config_and_too_long_input_raise():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="max_len"):
        Transformer(TINY).lm_logits(np.zeros((1, 6), dtype=int))
    with pytest.raises(ValueError, match="classification head"):
        Transformer(TransformerConfig(vocab_size=5, max_len=4, d_model=8, n_heads=2)) \
            .classify_logits(np.zeros((1, 3), dtype=int))
