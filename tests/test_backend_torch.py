"""The torch backend against the spec: golden cases, a training run, state dicts, the model twin.

Skipped where torch does not import. Tolerances: float64 1e-10 relative (reordered arithmetic
differs by a few ulps per step), float32 those of ``minisage.testing`` (2e-5).
"""

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_threads import one_torch_thread  # noqa: E402, F401 (autouse)

import minisage.functional as F  # noqa: E402
from minisage import spec, testing  # noqa: E402
from minisage.backends import torch as tb  # noqa: E402
from minisage.cli import main  # noqa: E402
from minisage.crosscheck import check_implementation, format_table  # noqa: E402
from minisage.nn import Transformer, TransformerConfig  # noqa: E402

TINY = TransformerConfig(vocab_size=7, max_len=5, d_model=8, n_layers=2, n_heads=2, num_classes=3)
FUNCTIONS = tb.golden_step_functions("cpu")
CUDA = torch.cuda.is_available()




# -- every golden case, through every implementation ---------------------------------------------

@pytest.mark.parametrize("chain", [False, True], ids=["golden-state", "chained"])
@pytest.mark.parametrize("impl,preset,fn", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_golden_cases(impl, preset, fn, chain):
    ids = testing.check_rule(fn, preset, chain=chain)  # both dtypes, default tolerances
    assert len(ids) == len(testing.golden_cases(preset)) >= 6


def test_crosscheck_detects_a_mismatch():
    impl, preset, fn = next(f for f in FUNCTIONS if f[1] == "adamw-sage")

    def off_by(rel):
        def wrong(param, grad, state, lr, hparams):
            p, st = fn(param, grad, state, lr, hparams)
            return p * (1 + rel), st
        return wrong

    # A relative error of 1e-9 is ten times the float64 tolerance; 1e-4 five times float32's.
    row = check_implementation(impl, preset, off_by(1e-9), "float64")
    assert not row.ok and 5e-10 < row.worst < 2e-9
    assert "FAIL" in format_table([row])
    assert not check_implementation(impl, preset, off_by(1e-4), "float32").ok
    good = check_implementation(impl, preset, fn, "float64")
    assert good.ok and good.worst < 1e-13 and good.cases == len(testing.golden_cases(preset,
                                                                                     "float64"))


def test_crosscheck_bfloat16_mode_passes_and_detects_a_mismatch(capsys):
    assert main(["crosscheck", "--backend", "torch", "--dtype", "bfloat16", "--preset",
                 "adamw-sage", "--preset", "sgd"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "bfloat16" in line
            and line.split()[0] in ("AdamWSAGE", "torch.optim.SGD")]
    assert len(rows) == 2 and all(r[-1] == "ok" and float(r[-2]) == 0.016 for r in rows)
    impl, preset, fn = next(f for f in tb.golden_step_functions("cpu", param_dtype="bfloat16")
                            if f[1] == "adamax-sage")

    def off_by_8u(param, grad, state, lr, hparams):  # a relative error of 8u: out of 4u
        p, st = fn(param, grad, state, lr, hparams)
        return p * (1 + 2**-5), st

    assert check_implementation(impl, preset, fn, "bfloat16").ok
    row = check_implementation(impl, preset, off_by_8u, "bfloat16")
    assert not row.ok and row.worst > 2**-6


def test_cli_crosscheck_prints_a_passing_table(capsys):
    argv = ["crosscheck", "--backend", "torch", "--dtype", "float64", "--preset", "adamw-sage",
            "--preset", "adamw"]
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "float64" in line]
    assert sorted(r[0] for r in rows) == ["AdamSAGE(sage=False)", "AdamWSAGE", "torch.optim.AdamW"]
    assert all(r[-1] == "ok" and float(r[-3]) < 1e-13 for r in rows)
    assert main(["crosscheck", "--backend", "torch", "--preset", "lamb"]) == 2
    assert "no preset 'lamb'" in capsys.readouterr().err


@pytest.mark.skipif(CUDA, reason="CUDA is available here")
def test_cuda_unavailable_is_a_one_line_error(capsys):
    assert main(["crosscheck", "--backend", "torch", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "CUDA is not available" in err
    with pytest.raises(ValueError, match="CUDA"):
        tb.to_torch(Transformer(TINY), device="cuda")


@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_golden_cases_on_cuda(dtype):
    half = dtype if dtype == "bfloat16" else None
    for impl, preset, fn in tb.golden_step_functions("cuda", param_dtype=half):
        row = check_implementation(impl, preset, fn, dtype)
        assert row.ok, row.failure


# -- a training run: the torch twin with the torch optimizers vs minisage with the spec ----------

def _batch(seed=1):
    """Token ids, LM targets (some ignored) and class labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY.vocab_size, (3, 5))
    targets = rng.integers(0, TINY.vocab_size, (3, 5))
    targets[0, :2] = -100
    labels = rng.integers(0, TINY.num_classes, 3)
    return ids, targets, labels


def _ms_loss(model, ids, targets, labels, causal=None):
    """minisage: LM loss + classification loss (so every parameter gets a gradient)."""
    lm = F.cross_entropy(model.lm_logits(ids, causal), targets, ignore_index=-100)
    return lm + F.cross_entropy(model.classify_logits(ids, causal), labels)


def _torch_loss(twin, ids, targets, labels, causal=None):
    ce = torch.nn.functional.cross_entropy
    lm = ce(twin.lm_logits(ids, causal).reshape(-1, TINY.vocab_size),
            torch.as_tensor(targets).reshape(-1), ignore_index=-100)
    return lm + ce(twin.classify_logits(ids, causal), torch.as_tensor(labels))


OPTIMIZERS = [
    (tb.AdamWSAGE, {"lr": 2e-2, "max_grad_norm": 0.5}),
    (tb.AdamaxSAGE, {"lr": 2e-2}),
    (tb.AdamSAGE, {"lr": 2e-2}),
]


@pytest.mark.parametrize("cls,hp", OPTIMIZERS, ids=[c.__name__ for c, _ in OPTIMIZERS])
def test_training_matches_the_spec_with_a_torch_scheduler(cls, hp):
    """Five steps of the whole model (both heads), the official split (SAGE and plain groups,
    decay and none), a LambdaLR warmup: every parameter agrees with minisage stepped by the spec
    rules."""
    ids, targets, labels = _batch()
    model = Transformer(TINY, seed=3)
    twin = tb.to_torch(model)
    multiplier = lambda t: min(1.0, (t + 1) / 3)  # warmup over 3 steps, then constant
    opt = cls(tb.sage_param_groups(twin.named_parameters(), weight_decay=0.05), **hp)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
    assert {g["sage"] for g in opt.param_groups} == {True, False}

    # The reference: one spec rule per group, the scheduled lr passed to step().
    groups = tb.sage_param_groups(model.named_parameters(), weight_decay=0.05)
    ref = []
    for g in groups:
        preset = opt.preset(g)
        accepted = spec.defaults(preset)
        rule = spec.make(preset, **{k: v for k, v in {**hp, **g}.items() if k in accepted})
        ref += [(name, p, rule, rule.init(p.data)) for name, p in g["params"]]

    for t in range(5):
        model.zero_grad()
        _ms_loss(model, ids, targets, labels).backward()
        stepped = []
        for name, p, rule, st in ref:
            new_p, st, _ = rule.step(p.data, p.grad, st, lr=hp["lr"] * multiplier(t), name=name)
            p.data[...] = new_p
            stepped.append((name, p, rule, st))
        ref = stepped
        opt.zero_grad()
        _torch_loss(twin, ids, targets, labels).backward()
        opt.step()
        sched.step()
    theirs = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        got = theirs[name].detach().numpy()
        np.testing.assert_allclose(got, p.data, rtol=1e-10, atol=1e-13, err_msg=name)


# -- state_dict round trip, bad input ------------------------------------------------------------

def _setup(seed=3):
    model = Transformer(TINY, seed=seed)
    twin = tb.to_torch(model)
    opt = tb.AdamWSAGE(tb.sage_param_groups(twin.named_parameters()), lr=1e-2, t_total=10,
                       warmup=0.2)
    return twin, opt


def _train(twin, opt, steps, batch):
    for _ in range(steps):
        opt.zero_grad()
        _torch_loss(twin, *batch).backward()
        opt.step()


def test_state_dict_round_trip_continues_bit_for_bit():
    batch = _batch(2)
    twin_a, opt_a = _setup()
    _train(twin_a, opt_a, 3, batch)
    buffer = io.BytesIO()
    torch.save({"model": twin_a.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # ints, floats, strings, tensors only
    twin_b, opt_b = _setup(seed=9)  # other weights, fresh state: all replaced by the load
    twin_b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.state_dict()["state"][0]["step"] == 3
    _train(twin_a, opt_a, 2, batch)
    _train(twin_b, opt_b, 2, batch)
    for (name, a), (_, b) in zip(twin_a.named_parameters(), twin_b.named_parameters()):
        assert torch.equal(a, b), name
    for p_a, p_b in zip(twin_a.parameters(), twin_b.parameters()):
        for key, value in opt_a.state[p_a].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b.state[p_b][key]))
    assert set(opt_a.state[next(twin_a.parameters())]) == {"step", "exp_avg", "exp_avg_sq"}


def test_non_finite_gradient_changes_nothing_and_names_the_parameter():
    batch = _batch(2)
    twin, opt = _setup()
    _train(twin, opt, 2, batch)
    opt.zero_grad()
    _torch_loss(twin, *batch).backward()
    twin.blocks[1].intermediate.dense.weight.grad[0, 0] = float("nan")
    params = copy.deepcopy(twin.state_dict())
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(FloatingPointError, match="blocks.1.intermediate.dense.weight"):
        opt.step()
    for name, value in twin.state_dict().items():
        assert torch.equal(value, params[name]), name
    after = opt.state_dict()["state"]
    for idx, st in state["state"].items():
        for key, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after[idx][key]))


def test_bad_hyperparameters_name_themselves():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"beta3 must be in \(0, 1\)"):
        tb.AdamWSAGE([p], beta3=1.5)
    with pytest.raises(ValueError, match="sage_eps"):
        tb.AdamSAGE([p], sage_eps=-1.0)
    with pytest.raises(TypeError):
        tb.AdamaxSAGE([p])  # lr is required, as in the official class
    opt = tb.AdamaxSAGE([p], lr=1e-3)
    with pytest.raises(ValueError, match="eps"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "eps": -1.0})
    with pytest.raises(ValueError, match="sage must be True or False"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "sage": "yes"})


def test_official_split_matches_minisage_optim():
    twin = tb.to_torch(Transformer(TINY))
    groups = tb.sage_param_groups(twin.named_parameters(), lr=1e-3)
    names = {(g["sage"], g["weight_decay"] > 0): [n for n, _ in g["params"]] for g in groups}
    assert names[(True, True)] == [n for n, _ in twin.named_parameters()
                                   if n.endswith("weight") and ("attention." in n or "dense" in n)]
    assert all(n.endswith("bias") for n in names[(True, False)])
    assert "lm_head.weight" in names[(False, True)] and "classifier.weight" in names[(False, True)]
    assert "blocks.0.ffn_norm.weight" in names[(False, False)]
    optim = pytest.importorskip("minisage.optim")
    ms = optim.sage_param_groups(Transformer(TINY).named_parameters())
    assert [(g["sage"], g["weight_decay"], [n for n, _ in g["params"]]) for g in ms] == [
        (g["sage"], g["weight_decay"], [n for n, _ in g["params"]]) for g in groups]


# -- the model twin --------------------------------------------------------------------------------

def _relative_gradient_errors(model, twin, floor=1e-6):
    """Per parameter: max |minisage - torch| over max |minisage|, floored at ``floor`` times the
    largest gradient of the model (the key biases' gradients are exactly zero in exact arithmetic
    -- softmax ignores a shift shared by all keys -- so theirs are rounding noise)."""
    theirs = dict(twin.named_parameters())
    scale = max(np.abs(p.grad).max() for p in model.parameters())
    errors = {}
    for name, p in model.named_parameters():
        g = theirs[name].grad.detach().numpy()
        errors[name] = np.abs(p.grad - g).max() / max(np.abs(p.grad).max(), floor * scale)
    return errors


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_twin_agrees_in_float64(causal):
    model = Transformer(TINY, seed=5)
    twin = tb.to_torch(model)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert all(p.dtype == torch.float64 for p in twin.parameters())
    ids, targets, labels = _batch(4)
    lm, tlm = model.lm_logits(ids, causal).data, twin.lm_logits(ids, causal).detach().numpy()
    np.testing.assert_allclose(tlm, lm, rtol=1e-10, atol=0)
    cl = model.classify_logits(ids, causal).data
    np.testing.assert_allclose(twin.classify_logits(ids, causal).detach().numpy(), cl,
                               rtol=1e-10, atol=0)
    loss = _ms_loss(model, ids, targets, labels, causal)
    tloss = _torch_loss(twin, ids, targets, labels, causal)
    assert abs(loss.item() - tloss.item()) <= 1e-10 * abs(loss.item())
    model.zero_grad()
    loss.backward()
    tloss.backward()
    errors = _relative_gradient_errors(model, twin)
    assert len(errors) == len(list(twin.parameters()))
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-10, (worst, errors[worst])


def test_twin_agrees_in_float32():
    """float32 in, float32 out: the same computation, to float32 rounding (eps 6e-8 times the
    depth of the graph, ~1e-5 of the largest gradient)."""
    cfg = TransformerConfig(**{**TINY.to_dict(), "dtype": "float32"})
    model = Transformer(cfg, seed=5)
    twin = tb.to_torch(model)
    assert all(p.dtype == torch.float32 for p in twin.parameters())
    ids, targets, labels = _batch(4)
    loss = _ms_loss(model, ids, targets, labels)
    tloss = _torch_loss(twin, ids, targets, labels)
    assert loss.data.dtype == np.float32
    assert abs(loss.item() - tloss.item()) <= 1e-6 * abs(loss.item())
    loss.backward()
    tloss.backward()
    errors = _relative_gradient_errors(model, twin, floor=1e-2)
    assert max(errors.values()) < 1e-4
    assert all(np.abs(p.grad).max() < 1e-6 for n, p in model.named_parameters() if ".key.bias" in n)


def test_twin_checks_its_input():
    with pytest.raises(ValueError, match="minisage Transformer"):
        tb.to_torch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="float32 or float64"):
        tb.to_torch(Transformer(TINY), dtype="float16")
    twin = tb.to_torch(Transformer(TINY).eval())
    assert not twin.training
