"""The torch optimizers beyond the golden vectors: drawn cases, half precision, the split by
structure and the empty-split check, group checks, the per-tensor path, torch.compile, timing.

Skipped where torch does not import. Tolerances: drawn cases use minisage.testing's bound from
the arithmetic; half precision is compared with the float32 spec to the half dtype's unit
roundoff (plus float32's, for the different order of the float32 operations).
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_threads import one_torch_thread  # noqa: E402, F401 (autouse)

from minisage import spec, testing  # noqa: E402
from minisage.backends import torch as tb  # noqa: E402
from minisage.backends.torch import timing  # noqa: E402
from minisage.nn import Transformer, TransformerConfig  # noqa: E402
from minisage.spec import split  # noqa: E402

TINY = TransformerConfig(vocab_size=7, max_len=5, d_model=8, n_layers=2, n_heads=2, num_classes=3)
OURS = [f for f in tb.golden_step_functions("cpu") if not f[0].startswith("torch.optim")]
OPTIMIZERS = [(tb.AdamWSAGE, {"lr": 1e-2}), (tb.AdamaxSAGE, {"lr": 1e-2}),
              (tb.AdamSAGE, {"lr": 1e-2})]
IDS = [c.__name__ for c, _ in OPTIMIZERS]




# -- drawn cases: the hypothesis helper of minisage.testing ---------------------------------------

@pytest.mark.parametrize("impl,preset,fn", OURS, ids=[f[0] for f in OURS])
def test_drawn_cases_multi_tensor(impl, preset, fn):
    testing.check_random(fn, preset, max_examples=8)


PER_TENSOR = [f for f in tb.golden_step_functions("cpu", foreach=False) if f[1].endswith("sage")
              and not f[0].startswith("torch.optim")]


@pytest.mark.parametrize("impl,preset,fn", PER_TENSOR, ids=[f[0] for f in PER_TENSOR])
def test_drawn_cases_one_tensor_at_a_time(impl, preset, fn):
    testing.check_random(fn, preset, max_examples=4)


# -- half precision ------------------------------------------------------------------------------

def _half_params(dtype, steps=3, seed=0, device="cpu"):
    """A weight of order one and an all-zero bias (as in every model built from a config), and
    per step tiny gradients (1e-6: below float16's normal range), in ``dtype``."""
    rng = np.random.default_rng(seed)
    weight = torch.tensor(rng.standard_normal((4, 3)), dtype=dtype, device=device)
    bias = torch.zeros(3, dtype=dtype, device=device)
    grads = [[torch.tensor(1e-6 * rng.standard_normal(s), dtype=dtype, device=device)
              for s in ((4, 3), (3,))] for _ in range(steps)]
    return [torch.nn.Parameter(weight), torch.nn.Parameter(bias)], grads


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("cls,hp", OPTIMIZERS, ids=IDS)
def test_half_precision_steps_are_finite_and_agree_with_the_float32_spec(cls, hp, dtype,
                                                                          device):
    """Three steps from zero biases and tiny gradients: every parameter is finite and equals the
    float32 spec step from the same (widened) inputs, rounded to ``dtype``: within u of the half
    dtype (the final rounding) plus a few float32 roundings; the float32 state agrees to float32
    precision."""
    params, stream = _half_params(dtype, device=device)
    opt = cls(params, **{**hp, "lr": 0.1})  # updates above the half dtype's resolution
    rule = spec.make(opt.presets[0], **{k: v for k, v in opt.param_groups[0].items()
                                        if k in spec.defaults(opt.presets[0])})
    u = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    for grads in stream:
        before = [(p.detach().float().cpu().numpy(), g.float().cpu().numpy())
                  for p, g in zip(params, grads)]
        states = [{k: (int(v) if k == "step" else v.cpu().numpy().copy())
                   for k, v in opt.state[p].items()} for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p, (p32, g32), st in zip(params, before, states):
            expected, expected_state, _ = rule.step(p32, g32, st)
            got = p.detach().float().cpu().numpy()
            assert np.all(np.isfinite(got))
            assert p.dtype == dtype and opt.state[p]["exp_avg"].dtype == torch.float32
            np.testing.assert_allclose(got, expected, rtol=u + 1e-6, atol=0)
            for key in rule.array_keys:
                value = opt.state[p][key].cpu().numpy()
                scale = np.max(np.abs(expected_state[key]))
                np.testing.assert_allclose(value, expected_state[key], rtol=1e-6,
                                           atol=1e-6 * scale, err_msg=key)
    # the weight moved; the zero bias did not: I = |0 * g| = 0, so r = 0 there (the spec)
    assert not np.allclose(params[0].detach().float().cpu().numpy(), _half_params(dtype)[0][0]
                           .detach().float().numpy())
    assert not torch.any(params[1])


def test_float16_statistics_would_not_be_finite():
    """Why the statistics are float32: the spec's own adamw-sage run in float16 turns a zero
    bias into NaN (eps^2 = 1e-12 rounds to 0, so r = 0 / 0), as torch's float16 would."""
    rule = spec.make("adamw-sage", max_grad_norm=-1)
    bias = np.zeros(3, np.float16)
    with np.errstate(invalid="ignore", divide="ignore"):
        new, _, _ = rule.step(bias, np.full(3, 1e-6, np.float16), rule.init(bias))
    assert np.float16(1e-6) ** 2 == 0 and not np.all(np.isfinite(new))


def test_half_precision_training_and_state_dict_keep_float32_statistics():
    twin = tb.to_torch(Transformer(TINY, seed=1)).to(torch.float16)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    opt = tb.AdamWSAGE(tb.sage_param_groups(twin.named_parameters()), lr=1e-2)
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 5)))

    def train(model, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            model.lm_logits(ids).float().logsumexp(-1).mean().backward()
            optimizer.step()

    train(twin, opt, 3)
    assert all(torch.isfinite(p).all() for p in twin.parameters())
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin_b = copy.deepcopy(twin)
    opt_b = tb.AdamWSAGE(tb.sage_param_groups(twin_b.named_parameters()), lr=1e-2)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    for p_a, p_b in zip(twin.parameters(), twin_b.parameters()):
        for key, value in opt.state[p_a].items():
            assert opt_b.state[p_b][key].dtype == value.dtype
            assert torch.equal(opt_b.state[p_b][key], value), key
    train(twin, opt, 2)
    train(twin_b, opt_b, 2)
    for a, b in zip(twin.parameters(), twin_b.parameters()):
        assert torch.equal(a, b)


# -- the split: by structure, and never silently empty --------------------------------------------

def test_structural_groups_are_the_official_split_on_the_twin():
    twin = tb.to_torch(Transformer(TINY))
    by_name = tb.sage_param_groups(twin.named_parameters(), lr=1e-3)
    by_type = tb.structural_param_groups(twin, lr=1e-3)
    assert [(g["sage"], g["weight_decay"], [n for n, _ in g["params"]]) for g in by_type] == [
        (g["sage"], g["weight_decay"], [n for n, _ in g["params"]]) for g in by_name]


class Conv1D(torch.nn.Module):
    """A stand-in for transformers' GPT-2 Conv1D (a linear layer with a transposed weight)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_in, n_out))
        self.bias = torch.nn.Parameter(torch.zeros(n_out))


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(4)
        self.attn = torch.nn.Module()
        self.attn.c_attn = Conv1D(4, 12)
        self.mlp = torch.nn.Module()
        self.mlp.fc_in = torch.nn.Linear(4, 8, bias=False)


class Odd(torch.nn.Module):
    """Names no pattern set knows; blocks in a ModuleList."""

    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(5, 4)
        self.h = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(4, 2)


def test_structural_groups_find_linear_layers_by_type_and_the_pattern_split_warns():
    model = Odd()
    names = tb.block_linear_names(model)
    assert names == ["h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias", "h.0.mlp.fc_in.weight",
                     "h.1.attn.c_attn.weight", "h.1.attn.c_attn.bias", "h.1.mlp.fc_in.weight"]
    groups = tb.structural_param_groups(model, on_no_sage="raise")
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n, _ in g["params"]}
    assert no_decay == {"h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.c_attn.bias",
                        "h.1.ln_1.weight", "h.1.ln_1.bias", "h.1.attn.c_attn.bias", "head.bias"}
    with pytest.warns(split.NoSageWarning, match=r"sage_patterns \('attention.self'.*'wte"):
        groups = tb.sage_param_groups(model.named_parameters())
    assert not any(g["sage"] for g in groups)
    with pytest.raises(ValueError, match="none of the 13 parameters.*'gpt2' \\(4\\)"):
        tb.sage_param_groups(model.named_parameters(), on_no_sage="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        groups = tb.sage_param_groups(model.named_parameters(), sage_patterns=("attn.", "mlp."))
    assert sum(len(g["params"]) for g in groups if g["sage"]) == 6


# -- groups, options -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,hp", OPTIMIZERS, ids=IDS)
def test_add_param_group_checks_before_it_adds(cls, hp):
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = cls([p], **hp)
    bad = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    for group, error in [({"params": [bad], "betas": (0.9, 1.5)}, ValueError),
                         ({"params": [bad], "sage": "yes"}, ValueError),
                         ({"params": [torch.ones(2, dtype=torch.int64)]}, TypeError)]:
        with pytest.raises(error):
            opt.add_param_group(group)
        assert len(opt.param_groups) == 1 and bad not in opt.state
    p.grad = torch.ones_like(p)
    bad.grad = torch.ones_like(bad)
    opt.step()
    assert torch.equal(bad, torch.ones(2, dtype=torch.float64))  # never stepped
    with pytest.raises(ValueError, match="no fused kernel"):
        cls([p], fused=True, **hp)


@pytest.mark.parametrize("cls,hp", OPTIMIZERS, ids=IDS)
def test_one_tensor_at_a_time_equals_the_multi_tensor_path(cls, hp):
    """The same kernel on lists of one: bit for bit."""
    twin = tb.to_torch(Transformer(TINY, seed=2))
    other = copy.deepcopy(twin)
    opts = [cls(tb.sage_param_groups(m.named_parameters()), foreach=f, **hp)
            for m, f in ((twin, True), (other, False))]
    rng = np.random.default_rng(3)
    for _ in range(3):
        for a, b in zip(twin.parameters(), other.parameters()):
            a.grad = torch.tensor(rng.standard_normal(a.shape) * 3)
            b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    for a, b in zip(twin.parameters(), other.parameters()):
        assert torch.equal(a, b)
    # pickled: the options survive, the buffers kept between steps are left behind
    assert pickle.loads(pickle.dumps(opts[1])).foreach is False
    assert "_buffers" in vars(opts[0]) and "_buffers" not in vars(pickle.loads(pickle.dumps(
        opts[0])))


@pytest.mark.parametrize("cls,hp", OPTIMIZERS, ids=IDS)
def test_tensors_cut_into_pieces_or_not_match_the_spec(cls, hp):
    """A tensor larger than a piece (cut into ranges), a non-contiguous one (updated whole) and a
    small one share a chunk; two float64 steps, clipping active, agree with the spec."""
    rng = np.random.default_rng(4)
    big = torch.nn.Parameter(torch.tensor(rng.standard_normal((700, 400))))
    assert big.numel() > tb.optimizers.BLOCK
    strided = torch.nn.Parameter(torch.tensor(rng.standard_normal((5, 7))).t())
    small = torch.nn.Parameter(torch.tensor(rng.standard_normal(3)))
    params = [big, strided, small]
    opt = cls(params, **{**hp, **({"max_grad_norm": 0.5} if cls is not tb.AdamSAGE else {})})
    rule = spec.make(opt.presets[0], **{k: v for k, v in opt.param_groups[0].items()
                                        if k in spec.defaults(opt.presets[0])})
    expected = [(p.detach().numpy().copy(), rule.init(p.detach().numpy())) for p in params]
    for _ in range(2):
        for j, p in enumerate(params):
            g = rng.standard_normal(p.shape)
            p.grad = torch.tensor(g)
            new, st, _ = rule.step(expected[j][0], g, expected[j][1])
            expected[j] = (new, st)
        opt.step()
    for p, (want, st) in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), st["exp_avg"], rtol=1e-12,
                                   atol=1e-15)


# -- torch.compile -------------------------------------------------------------------------------

def _compiled_run(cls, hp, check_finite, fullgraph):
    """Three compiled steps (backend "eager": dynamo's graphs, no code generation) next to three
    eager ones; the number of graphs compiled after each call."""
    import torch._dynamo.testing

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    eager = cls(model.parameters(), **hp)
    opt = cls(twin.parameters(), check_finite=check_finite, **hp)
    counter = torch._dynamo.testing.CompileCounter()
    step = torch.compile(opt.step, backend=counter, fullgraph=fullgraph)
    graphs = []
    for _ in range(3):
        for a, b in zip(model.parameters(), twin.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        eager.step()
        step()
        graphs.append(counter.frame_count)
    worst = max(float((a - b).detach().abs().max())
                for a, b in zip(model.parameters(), twin.parameters()))
    return graphs, worst, step, twin


def test_compiled_step_is_one_graph_without_recompilation():
    """fullgraph=True (no graph break) with check_finite=False: one graph, compiled once; the
    compiled step (its step factors as tensors) equals the eager one to float32 rounding."""
    graphs, worst, _, _ = _compiled_run(tb.AdamWSAGE, {"lr": 1e-2}, False, True)
    assert graphs == [1, 1, 1]
    assert worst < 1e-6


def test_compiled_step_with_the_finite_check_breaks_once_and_still_raises():
    graphs, worst, step, twin = _compiled_run(tb.AdamSAGE, {"lr": 1e-2}, True, False)
    assert graphs == [2, 2, 2]  # the check is the one graph break; no recompilation
    assert worst < 1e-6
    first = next(twin.parameters())
    first.grad[0, 0] = float("nan")
    before = first.detach().clone()
    with pytest.raises(FloatingPointError, match="non-finite gradient for parameter"):
        step()
    assert torch.equal(first, before)


# -- timing ----------------------------------------------------------------------------------------

def test_timing_rows_in_tiny_mode():
    rows = timing.optimizer_step_times("tiny", reps=2, warmup=1)
    names = [r["optimizer"] for r in rows]
    assert names == ["AdamWSAGE", "AdamaxSAGE", "AdamSAGE", timing.BASELINE,
                     "torch.optim.AdamW (foreach)", "torch.optim.AdamW (fused)"]
    base = next(r for r in rows if r["optimizer"] == timing.BASELINE)
    assert base["over_adamw_default"] == 1.0
    assert all(r["median_s"] > 0 and r["threads"] == 1 and r["parameters"] == rows[0]
               ["parameters"] > 0 for r in rows)
    assert torch.get_num_threads() == 1  # restored to what this module set
    assert "/ AdamW default" in timing.format_rows(rows)
    with pytest.raises(ValueError, match="size must be one of bert-10m, tiny"):
        timing.optimizer_step_times("huge")
