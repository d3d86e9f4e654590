"""minisage.optim: the stateful optimizers agree with their spec rules bit for bit; groups, the
official SAGE split, state dicts, recording, and bad input. Parameters are stand-ins with .data
and .grad, plus one test with minisage.nn.Parameter."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from minisage import optim, spec
from minisage.nn import Parameter
from minisage.spec import split

CLASSES = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW, "adamax": optim.Adamax,
           "bert-adamw": optim.BertAdamW, "adamw-sage": optim.AdamWSAGE,
           "bert-adamax": optim.BertAdamax, "adamax-sage": optim.AdamaxSAGE,
           "adam-sage": optim.AdamSAGE}
PLAIN_OF = {"adamw-sage": "bert-adamw", "adamax-sage": "bert-adamax", "adam-sage": "adamw"}


def param(rng, shape, dtype=np.float64):
    return SimpleNamespace(data=rng.standard_normal(shape).astype(dtype), grad=None)


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [("blocks.0.attention.self.query.weight", param(rng, (3, 4), dtype)),
            ("blocks.0.attention_norm.weight", param(rng, (4,), dtype)),
            ("blocks.0.intermediate.dense.bias", param(rng, (5,), dtype)),
            ("lm_head.weight", param(rng, (2, 3), dtype))]


def set_grads(named, rng, dtype=np.float64, skip=()):
    for i, (_, p) in enumerate(named):
        p.grad = None if i in skip else rng.standard_normal(p.data.shape).astype(dtype)


@pytest.mark.parametrize("preset", list(CLASSES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optimizers_agree_with_their_spec_rule_bit_for_bit(preset, dtype):
    named = make_params(1, dtype)
    groups = optim.sage_param_groups(named, lr=0.01,
                                     sage_patterns=split.SAGE_PATTERNS
                                     if preset in PLAIN_OF else ())
    opt = optim.make(preset, groups, lr=0.01)
    assert type(opt) is CLASSES[preset]
    # the reference: the spec rule of each parameter's group, stepped by hand
    ref = {}
    for group in opt.param_groups:
        name = preset if group["sage"] or preset not in PLAIN_OF else PLAIN_OF[preset]
        hp = {k: group[k] for k in spec.defaults(name) if k in group}
        for n, p in zip(group["names"], group["params"]):
            rule = spec.make(name, **hp)
            ref[n] = [rule, p.data.copy(), rule.init(p.data)]
    rng = np.random.default_rng(2)
    arrays = {n: p.data for n, p in named}
    for t in range(6):
        set_grads(named, rng, dtype, skip=(3,) if t == 2 else ())
        if t == 4:
            named[0][1].grad[...] = 0.0
        opt.step()
        for n, p in named:
            rule, ref_p, ref_s = ref[n]
            if p.grad is not None:
                ref_p, ref_s, _ = rule.step(ref_p, p.grad, ref_s)
                ref[n][1:] = [ref_p, ref_s]
            assert p.data is arrays[n]                  # updated in place
            assert np.array_equal(p.data, ref_p) and p.data.dtype == dtype
            got = opt.state_of(p)
            for k, v in ref_s.items():
                assert np.array_equal(got[k], v)


def test_sage_groups_follow_the_official_split():
    from types import SimpleNamespace as P
    names = ["embeddings.word.weight", "blocks.0.attention_norm.weight",
             "blocks.0.attention_norm.bias", "blocks.0.attention.self.query.weight",
             "blocks.0.attention.self.query.bias", "blocks.0.attention.output.dense.weight",
             "blocks.0.intermediate.dense.weight", "blocks.0.intermediate.dense.bias",
             "blocks.0.output.dense.weight", "blocks.0.ffn_norm.weight", "final_norm.bias",
             "lm_head.weight", "classifier.bias"]
    named = [(n, P(data=np.ones(2), grad=None)) for n in names]
    groups = optim.sage_param_groups(named, lr=3e-4)
    by_name = {n: (g["sage"], g["weight_decay"], g["lr"]) for g in groups
               for n, _ in g["params"]}
    assert by_name == {
        "embeddings.word.weight": (False, 0.01, 3e-4),
        "blocks.0.attention_norm.weight": (False, 0.0, 3e-4),
        "blocks.0.attention_norm.bias": (False, 0.0, 3e-4),
        "blocks.0.attention.self.query.weight": (True, 0.01, 3e-4),
        "blocks.0.attention.self.query.bias": (True, 0.0, 3e-4),
        "blocks.0.attention.output.dense.weight": (True, 0.01, 3e-4),
        "blocks.0.intermediate.dense.weight": (True, 0.01, 3e-4),
        "blocks.0.intermediate.dense.bias": (True, 0.0, 3e-4),
        "blocks.0.output.dense.weight": (True, 0.01, 3e-4),
        "blocks.0.ffn_norm.weight": (False, 0.0, 3e-4),
        "final_norm.bias": (False, 0.0, 3e-4),
        "lm_head.weight": (False, 0.01, 3e-4),
        "classifier.bias": (False, 0.0, 3e-4),
    }
    # official order: plain+decay, SAGE+decay, plain+no decay, SAGE+no decay
    assert [(g["sage"], g["weight_decay"] > 0) for g in groups] == \
        [(False, True), (True, True), (False, False), (True, False)]
    official = optim.sage_param_groups(named, no_decay_patterns=split.NO_DECAY_PATTERNS)
    decayed = {n for g in official if g["weight_decay"] for n, _ in g["params"]}
    assert "blocks.0.attention_norm.weight" in decayed   # "LayerNorm" does not match "_norm"
    opt = optim.AdamWSAGE(groups, lr=1e-3)
    assert [g["sage"] for g in opt.param_groups] == [False, True, False, True]
    assert opt.param_groups[1]["lr"] == 3e-4             # the group's own lr wins


def test_the_transformer_parameters():
    nn = pytest.importorskip("minisage.nn")
    transformer = pytest.importorskip("minisage.nn.transformer")
    model = transformer.Transformer(transformer.TransformerConfig(d_model=8, n_heads=2,
                                                                  n_layers=1), seed=0)
    named = list(model.named_parameters())
    assert all(isinstance(p, nn.Parameter) for _, p in named)
    opt = optim.AdamWSAGE(optim.sage_param_groups(named, lr=1e-2), record=True)
    rng = np.random.default_rng(0)
    before = {n: p.data.copy() for n, p in named}
    ref = {n: p.data for n, p in named}
    for _ in range(3):
        for _, p in named:
            p.grad = rng.standard_normal(p.data.shape)
        opt.step()
        opt.zero_grad()
    assert all(p.grad is None and p.data is ref[n] for n, p in named)
    moved = {n for n, p in named if not np.array_equal(p.data, before[n])}
    assert moved == set(before)
    assert "lr_multiplier" in opt.last_trace["blocks.0.intermediate.dense.weight"]
    assert "lr_multiplier" not in opt.last_trace["embeddings.word.weight"]


def test_grad_none_is_skipped_and_zero_grad():
    named = make_params()
    opt = optim.Adam(named, lr=0.1)
    rng = np.random.default_rng(0)
    set_grads(named, rng, skip=(1,))
    before = named[1][1].data.copy()
    opt.step()
    assert np.array_equal(named[1][1].data, before) and opt.state_of(named[1][1]) is None
    assert opt.state_of(named[0][1])["step"] == 1
    opt.zero_grad(set_to_none=False)
    assert np.array_equal(named[0][1].grad, np.zeros((3, 4))) and named[1][1].grad is None
    opt.zero_grad()
    assert all(p.grad is None for _, p in named)


@pytest.mark.parametrize("preset", list(CLASSES))
def test_state_dict_round_trip_is_exact(preset):
    def build(seed):
        named = make_params(seed)
        groups = optim.sage_param_groups(named, lr=0.02, sage_patterns=("attention",))
        if preset not in PLAIN_OF:
            for g in groups:
                g["sage"] = False
        return named, optim.make(preset, groups, lr=0.02)

    named_a, a = build(0)
    rng = np.random.default_rng(5)
    for _ in range(3):
        set_grads(named_a, rng)
        a.step()
    sd = a.state_dict()
    named_b, b = build(0)
    for (_, pa), (_, pb) in zip(named_a, named_b):
        pb.data[...] = pa.data
    b.load_state_dict(sd)
    # the copy is deep: stepping a does not change sd
    snapshot = {k: {kk: np.array(vv, copy=True) for kk, vv in v.items()}
                for k, v in sd["state"].items()}
    for _ in range(2):
        set_grads(named_a, rng)
        for (_, pa), (_, pb) in zip(named_a, named_b):
            pb.grad = pa.grad.copy()
        a.step()
        b.step()
    for (_, pa), (_, pb) in zip(named_a, named_b):
        assert np.array_equal(pa.data, pb.data)
    for k, v in snapshot.items():
        for kk, vv in v.items():
            assert np.array_equal(sd["state"][k][kk], vv)
    assert a.state_dict()["param_groups"] == b.state_dict()["param_groups"]


def test_load_state_dict_rejects_mismatches():
    named = make_params()
    opt = optim.AdamW(named, lr=0.1)
    set_grads(named, np.random.default_rng(0))
    opt.step()
    sd = opt.state_dict()
    other = optim.AdamW(make_params()[:2], lr=0.1)
    with pytest.raises(ValueError, match="group 0 has 4 parameters saved, 2 here"):
        other.load_state_dict(sd)
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros(7)
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] of parameter 0 has shape \(7,\)"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    del bad["state"][1]["exp_avg_sq"]
    with pytest.raises(ValueError, match="state of parameter 1 has keys"):
        opt.load_state_dict(bad)
    # nothing was changed by the failed loads
    assert np.array_equal(opt.state[0]["exp_avg"], sd["state"][0]["exp_avg"])
    # a JSON-style state dict (string keys, lists for tuples) loads too
    sd["state"] = {str(k): v for k, v in sd["state"].items()}
    sd["param_groups"][0]["betas"] = list(sd["param_groups"][0]["betas"])
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999) and set(opt.state) == {0, 1, 2, 3}


def test_non_finite_gradient_leaves_everything_untouched():
    named = make_params()
    opt = optim.AdamWSAGE(optim.sage_param_groups(named, lr=0.1))
    rng = np.random.default_rng(0)
    set_grads(named, rng)
    opt.step()
    before = [p.data.copy() for _, p in named]
    state = opt.state_dict()["state"]
    set_grads(named, rng)
    named[2][1].grad[1] = np.nan             # a later parameter: earlier ones must not move
    with pytest.raises(FloatingPointError,
                       match="non-finite gradient for parameter "
                             "'blocks.0.intermediate.dense.bias'"):
        opt.step()
    for (_, p), b in zip(named, before):
        assert np.array_equal(p.data, b)
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert np.array_equal(v, state[idx][k])
    named[0][1].grad = np.ones(5)
    with pytest.raises(ValueError, match=r"grad shape \(5,\) does not match param shape \(3, 4\) "
                                         r"\(parameter 'blocks.0.attention.self.query.weight'\)"):
        opt.step()


def test_recording_traces():
    named = make_params()
    opt = optim.AdamWSAGE(optim.sage_param_groups(named, lr=0.1), record=True)
    rng = np.random.default_rng(0)
    set_grads(named, rng, skip=(3,))
    opt.step()
    assert set(opt.last_trace) == {n for n, _ in named[:3]}
    tr = opt.last_trace["blocks.0.attention.self.query.weight"]
    assert set(tr) == {"sensitivity", "sensitivity_ema", "sensitivity_ema_hat", "uncertainty",
                       "lr_multiplier", "update", "lr"}
    assert set(opt.last_trace["blocks.0.attention_norm.weight"]) == {"update", "lr"}
    p = named[0][1]
    set_grads(named, rng)
    before = p.data.copy()
    opt.step()
    np.testing.assert_array_equal(opt.last_trace[named[0][0]]["update"], p.data - before)
    opt.record = False
    opt.step()
    assert opt.last_trace is None


def test_lr_and_lr_factor():
    named = make_params()
    rng = np.random.default_rng(0)
    a = optim.BertAdamW(named[:1], lr=0.1, weight_decay=0.1)
    rule = spec.make("bert-adamw", lr=0.1, weight_decay=0.1)
    p, st = named[0][1].data.copy(), rule.init(named[0][1].data)
    set_grads(named, rng)
    a.step(lr=0.05)                          # scheduled lr; the decay keeps the base lr 0.1
    p, st, _ = rule.step(p, named[0][1].grad, st, lr=0.05)
    assert np.array_equal(named[0][1].data, p)
    a.step(lr_factor=0.5)
    p, st, _ = rule.step(p, named[0][1].grad, st, lr=0.05)
    assert np.array_equal(named[0][1].data, p)
    a.param_groups[0]["lr"] = 0.2            # torch-style: changing the group's lr remakes the rule
    a.step()
    p, st, _ = spec.make("bert-adamw", lr=0.2, weight_decay=0.1).step(p, named[0][1].grad, st)
    assert np.array_equal(named[0][1].data, p)
    with pytest.raises(ValueError, match="give lr or lr_factor, not both"):
        a.step(lr=0.1, lr_factor=0.5)


def test_bad_construction():
    named = make_params()
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(ValueError, match="Adam: unknown hyperparameter 'beta3'"):
        optim.Adam(named, beta3=0.5)
    with pytest.raises(ValueError, match=r"adam: lr must be in \[0, inf\)"):
        optim.Adam(named, lr=-1.0)
    with pytest.raises(ValueError, match=r"adamw-sage: betas\[1\] must be in \[0, 1\)"):
        optim.AdamWSAGE([{"params": named[:2], "betas": (0.9, 1.0)}])
    with pytest.raises(ValueError, match="Adam has no SAGE variant"):
        optim.Adam([{"params": named, "sage": True}])
    with pytest.raises(ValueError, match="appears in more than one group"):
        optim.Adam([{"params": named[:2]}, {"params": named[1:]}])
    with pytest.raises(ValueError, match="unknown key 'momentum' in a param group"):
        optim.Adam([{"params": named, "momentum": 0.9}])
    with pytest.raises(ValueError, match="must have .data"):
        optim.SGD([SimpleNamespace(data=[1.0, 2.0], grad=None)])
    with pytest.raises(ValueError, match="adamax-sage: lr is required"):
        optim.AdamaxSAGE(named)
    with pytest.raises(ValueError, match="unknown preset 'lamb'"):
        optim.make("lamb", named)


def test_official_params_type_and_unnamed_parameters():
    named = make_params()
    opt = optim.AdamaxSAGE([{"params": [p for _, p in named[:2]], "params_type": "common"},
                            {"params": [p for _, p in named[2:]], "params_type": "mask"}],
                           lr=0.01)
    assert [g["sage"] for g in opt.param_groups] == [False, True]
    assert [n for n, _ in opt.named_parameters()] == ["#0", "#1", "#2", "#3"]
    assert "sage=True" in repr(opt)


def test_clip_grad_norm_in_place():
    a = SimpleNamespace(data=np.zeros(2), grad=np.array([3.0, 0.0]))
    b = SimpleNamespace(data=np.zeros(1), grad=np.array([4.0]))
    c = SimpleNamespace(data=np.zeros(1), grad=None)
    ga = a.grad
    total = optim.clip_grad_norm_([a, ("b", b), c], 1.0)
    assert total == pytest.approx(5.0) and a.grad is ga
    np.testing.assert_allclose(np.r_[a.grad, b.grad], [3 / (5 + 1e-6), 0, 4 / (5 + 1e-6)])


def test_a_split_that_selects_no_parameter_warns_or_refuses():
    named = [("encoder.q_lin.weight", Parameter(np.ones((2, 2)))),
             ("encoder.ffn.lin1.weight", Parameter(np.ones((2, 2))))]
    with pytest.warns(split.NoSageWarning, match="selects none of the 2 parameters.*distilbert"):
        groups = optim.sage_param_groups(named)
    assert not any(g["sage"] for g in groups)
    with pytest.raises(ValueError, match="selects none"):
        optim.sage_param_groups(named, on_no_sage="raise")
    assert any(g["sage"] for g in optim.sage_param_groups(named, sage_patterns="distilbert"))
