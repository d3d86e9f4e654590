"""The optimizer's in-place path against the pure spec rule, bit for bit.

Both run the same kernel (``rule.update_into``, the one statement of each update), but along two
different code paths: ``rule.step`` copies one tensor and runs the kernel on the copy, while
``Optimizer.step`` prepares every parameter first, then updates large parameters in place and small
ones batched -- concatenated into flat arrays, with each tensor's clipping factor applied to its
own slice -- and copies them back. These tests check that batching, flattening, the per-tensor
clipping factors, the lr overrides and the traces change no bit: every preset and every option
that changes the arithmetic, both float dtypes, clipping active and inactive, zero gradients,
another memory order and dtype of the gradient, record on and off. Plus the facts the optimizer
relies on: the spec's ``step`` is not called, buffers are reused, a step is all-or-nothing.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from minisage import optim, spec
from minisage.optim import optimizer
from minisage.optim.optimizer import SMALL

# preset -> hyperparameter variants (each changes which lines of the update run)
VARIANTS = {
    "sgd": [{"lr": 0.1}, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
            {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}],
    "adam": [{}, {"weight_decay": 0.1}, {"maximize": True, "weight_decay": 0.05}],
    "adamw": [{}, {"weight_decay": 0.0}, {"maximize": True}, {"betas": (0.5, 0.9), "eps": 1e-3}],
    "adamax": [{}, {"weight_decay": 0.1, "maximize": True}],
    "bert-adamw": [{}, {"weight_decay": 0.01}, {"correct_bias": False}, {"max_grad_norm": -1},
                   {"max_grad_norm": 1e6}, {"t_total": 10, "warmup": 0.2}],
    "adamw-sage": [{}, {"weight_decay": 0.01, "beta3": 0.5}, {"correct_bias": False},
                   {"max_grad_norm": -1}, {"t_total": 10, "warmup": 0.2,
                                           "schedule": "warmup_constant"}],
    "bert-adamax": [{"lr": 0.01}, {"lr": 0.01, "weight_decay": 0.0}, {"lr": 0.01,
                                                                      "max_grad_norm": -1},
                    {"lr": 0.01, "t_total": 10, "warmup": 0.2}],
    "adamax-sage": [{"lr": 0.01}, {"lr": 0.01, "weight_decay": 0.0, "beta3": 0.9},
                    {"lr": 0.01, "max_grad_norm": -1}, {"lr": 0.01, "t_total": 10,
                                                        "warmup": 0.3}],
    "adam-sage": [{}, {"weight_decay": 0.1, "beta3": 0.5, "sage_eps": 1e-8}],
}
CASES = [(preset, i) for preset, variants in VARIANTS.items() for i in range(len(variants))]
SHAPES = [(3, 4), (5,), (), (4, 3), (1, 1), (0, 2), (180, 200)]  # the last > SMALL
assert 180 * 200 > SMALL


def _params(rng, dtype, shapes=SHAPES):
    return [SimpleNamespace(data=rng.standard_normal(s).astype(dtype), grad=None) for s in shapes]


def _grad(rng, shape, dtype, scale, kind):
    g = (scale * rng.standard_normal(shape)).astype(dtype)
    if kind == "fortran" and g.ndim == 2:
        return np.asfortranarray(g)          # a transposed layout: sums in another memory order
    if kind == "float64":
        return g.astype(np.float64)          # another dtype: cast to the parameter's first
    if kind == "zero":
        return np.zeros_like(g)
    return g


@pytest.mark.parametrize("blocks", ["default", "tiny"])
@pytest.mark.parametrize("record", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("preset,variant", CASES)
def test_optimizer_step_is_the_spec_rule_bit_for_bit(preset, variant, dtype, record, blocks,
                                                     monkeypatch):
    shapes = SHAPES
    if blocks == "tiny":
        # blocks of 3 (float64) or 6 (float32) entries split every tensor and the batch at odd
        # places; the large tensor is smaller here (and still above SMALL), to keep this quick
        monkeypatch.setattr(optimizer, "BLOCK_BYTES", 24)
        monkeypatch.setattr(optimizer, "SMALL", 100)
        shapes = [*SHAPES[:-1], (18, 20)]
    hp = dict(VARIANTS[preset][variant])
    rng = np.random.default_rng(variant)
    params = _params(rng, dtype, shapes)
    names = [f"#{i}" for i in range(len(params))]
    sage = spec.rule_class(preset).sage
    opt = optim.optimizer_class(preset)([{"params": params, "sage": sage}], record=record, **hp)
    rule = spec.make(preset, **hp)
    ref = [(p.data.copy(), rule.init(p.data)) for p in params]
    kinds = ["plain", "fortran", "float64", "zero", "plain", "plain", "plain"]
    clipped = set()
    for t, kind in enumerate(kinds):
        scale = 10.0 if t % 2 else 0.01      # clipping active on odd steps, not on even ones
        for i, p in enumerate(params):
            p.grad = None if (t == 2 and i == 1) else _grad(rng, p.data.shape, dtype, scale, kind)
        lr = {4: {"lr": 0.003}, 5: {"lr_factor": 0.5}}.get(t, {})
        if lr and hp.get("t_total", -1) != -1:
            lr = {}                          # those rules schedule their own lr
        opt.step(**lr)
        if record:
            assert set(opt.last_trace) == {n for n, p in zip(names, params) if p.grad is not None}
        else:
            assert opt.last_trace is None
        for i, p in enumerate(params):
            ref_p, ref_s = ref[i]
            if p.grad is not None:
                step_lr = lr.get("lr", opt.param_groups[0]["lr"] * lr["lr_factor"]
                                 if "lr_factor" in lr else None)
                prep = rule.prepare(ref_p, p.grad, ref_s, step_lr)
                if prep.clip is not None:
                    clipped.add(i)
                ref_p, ref_s, ref_trace = rule.step(ref_p, p.grad, ref_s, lr=step_lr)
                ref[i] = (ref_p, ref_s)
                if record:
                    got_trace = opt.last_trace[names[i]]
                    assert set(got_trace) == set(ref_trace)
                    for key, value in ref_trace.items():
                        assert got_trace[key].dtype == value.dtype, (t, i, key)
                        assert np.array_equal(got_trace[key], value), (t, i, key)
            assert p.data.dtype == dtype and np.array_equal(p.data, ref_p), (t, i)
            got = opt.state_of(p)
            assert set(got) == set(ref_s)
            for key, value in ref_s.items():
                assert np.array_equal(got[key], value), (t, i, key)
                assert key == "step" or got[key].dtype == dtype
    clips = hp.get("max_grad_norm", spec.defaults(preset).get("max_grad_norm", -1)) > 0
    if clips and hp.get("max_grad_norm") != 1e6:
        # clipping was active for small (batched) and large parameters alike
        assert {0, len(shapes) - 1} <= clipped
    else:
        assert not clipped


@pytest.mark.parametrize("record", [False, True])
def test_parameters_in_another_memory_order(monkeypatch, record):
    """A parameter that is not C-contiguous (its state follows its layout) is updated whole,
    not in blocks: the same numbers as the spec rule, bit for bit."""
    monkeypatch.setattr(optimizer, "SMALL", 4)        # every parameter on its own
    monkeypatch.setattr(optimizer, "BLOCK_BYTES", 24)
    rng = np.random.default_rng(3)
    params = [SimpleNamespace(data=np.asfortranarray(rng.standard_normal((5, 7))), grad=None),
              SimpleNamespace(data=rng.standard_normal((6, 5)).T, grad=None)]
    opt = optim.AdamWSAGE(params, lr=1e-2, record=record)
    rule = spec.make("adamw-sage", lr=1e-2)
    ref = [(p.data.copy(), rule.init(p.data)) for p in params]
    for _ in range(3):
        for p in params:
            p.grad = rng.standard_normal(p.data.shape)
        opt.step()
        for i, p in enumerate(params):
            ref_p, ref_s, ref_trace = rule.step(ref[i][0], p.grad, ref[i][1])
            ref[i] = (ref_p, ref_s)
            assert not p.data.flags.c_contiguous and np.array_equal(p.data, ref_p)
            for key in rule.array_keys:
                assert np.array_equal(opt.state_of(p)[key], ref_s[key])
            if record:
                for key, value in ref_trace.items():
                    assert np.array_equal(opt.last_trace[f"#{i}"][key], value), key


def test_the_spec_step_is_not_called_and_buffers_are_reused(monkeypatch):
    rng = np.random.default_rng(0)
    params = _params(rng, np.float32)
    opt = optim.AdamWSAGE(params, lr=1e-3)
    for p in params:
        p.grad = rng.standard_normal(p.data.shape).astype(np.float32)

    def no_spec(*args, **kwargs):
        raise AssertionError("the spec rule's step ran")

    monkeypatch.setattr(spec.Rule, "step", no_spec)
    opt.step()

    def addresses():
        return {k: v.ctypes.data for scratch in (opt._scratch, opt._flat)
                for k, v in scratch._buffers.items()}

    buffers = addresses()
    state = {k: v.ctypes.data for k, v in opt.state_of(params[0]).items() if k != "step"}
    opt.step()
    assert addresses() == buffers
    assert {k: v.ctypes.data for k, v in opt.state_of(params[0]).items() if k != "step"} == state
    # state: exactly the spec's arrays (m, v, Ibar for SAGE), nothing more
    assert sorted(opt.state_of(params[0])) == ["exp_avg", "exp_avg_sq", "sensitivity_ema", "step"]
    opt.record = True                        # traces come from the same path
    opt.step()
    assert set(opt.last_trace["#0"]) == {"sensitivity", "sensitivity_ema",
                                         "sensitivity_ema_hat", "uncertainty", "lr_multiplier",
                                         "update", "lr"}


def test_a_step_is_all_or_nothing():
    rng = np.random.default_rng(0)
    params = _params(rng, np.float64)
    opt = optim.BertAdamW(params, lr=1e-2, t_total=5, warmup=0.1, weight_decay=0.1)
    for p in params:
        p.grad = rng.standard_normal(p.data.shape)
    opt.step()
    before = [p.data.copy() for p in params]
    saved = opt.state_dict()["state"]
    with pytest.raises(ValueError, match="schedules its own lr"):
        opt.step(lr=0.1)                     # raised for the first parameter, before any write
    params[3].grad = np.full(params[3].data.shape, np.inf)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient for parameter '#3' "
                                                 r"\(12 of 12 entries"):
        opt.step()
    params[3].grad = np.full(params[3].data.shape, 1e308)   # finite, but the sum overflows
    opt2 = optim.BertAdamW([SimpleNamespace(data=np.ones(3), grad=np.full(3, 1e308))], lr=0.1)
    opt2.step()                              # not an error: every entry is finite
    assert np.all(np.isfinite(opt2.param_groups[0]["params"][0].data))
    for p, b in zip(params, before):
        assert np.array_equal(p.data, b)
    for idx, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            assert np.array_equal(value, saved[idx][key])


# ----- prepare_many: prepare of each tensor, bit for bit ------------------------------------------
def _same_prepared(got, want):
    assert got.param is want.param
    assert got.grad.dtype == want.grad.dtype and np.array_equal(got.grad, want.grad)
    assert got.t == want.t and got.lr == want.lr
    assert (got.clip is None) == (want.clip is None)
    if want.clip is not None:
        assert type(got.clip) is type(want.clip) and got.clip == want.clip
    assert got.state.keys() == want.state.keys()
    for key, value in want.state.items():
        assert np.array_equal(got.state[key], value)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("preset", ["bert-adamw", "adamw-sage", "adamax-sage", "adam-sage",
                                    "adamw"])
# the clipping threshold as a multiple of the norm of all gradients together: far below, at, and
# around the margin within which the flat check cannot tell that no tensor is clipped
@pytest.mark.parametrize("factor", [0.05, 0.5, 0.999, 1.0, 1.0005, 1.001, 1.0011, 1.01, 3.0])
def test_prepare_many_is_prepare_of_each_tensor(dtype, preset, factor):
    rng = np.random.default_rng(round(factor * 1e4))
    shapes = [(3, 4), (5,), (), (1, 1), (0, 2), (4, 3), (180, 200)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    # one tensor dominates the norm, so that it alone reaches the threshold near factor 1
    grads = [(rng.standard_normal(s) * {5: 5.0, 6: 1e-3}.get(i, 0.1)).astype(dtype)
             for i, s in enumerate(shapes)]
    grads[3] = np.asfortranarray(grads[3])          # checked by prepare itself
    grads[1] = grads[1].astype(np.float64 if dtype == np.float32 else np.float32)  # cast first
    whole = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    hp = {"max_grad_norm": factor * whole} if "max_grad_norm" in spec.defaults(preset) else {}
    rule = spec.make(preset, lr=1e-3, **hp)
    states = [rule.init(p) for p in params]
    states[0] = {**states[0], "step": 4}             # another step count
    names = [f"w{i}" for i in range(len(params))]
    got = rule.prepare_many(params, grads, states, 0.01, names=names)
    for i, prep in enumerate(got):
        _same_prepared(prep, rule.prepare(params[i], grads[i], states[i], 0.01, name=names[i]))
    if hp and factor < 1:
        assert got[5].clip is not None               # the dominant tensor is clipped


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prepare_many_names_the_culprit_and_allows_finite_overflow(dtype):
    rule = spec.make("adamw-sage", lr=1e-3)
    params = [np.ones((2, 3), dtype), np.ones(4, dtype), np.ones(3, dtype)]
    grads = [np.ones((2, 3), dtype), np.ones(4, dtype), np.ones(3, dtype)]
    grads[1][2] = np.nan
    states = [rule.init(p) for p in params]
    with pytest.raises(FloatingPointError, match=r"non-finite gradient for parameter 'b' "
                                                 r"\(1 of 4 entries"):
        rule.prepare_many(params, grads, states, names=["a", "b", "c"])
    grads[1][2] = 1.0
    params[2][0] = -np.inf
    with pytest.raises(FloatingPointError, match=r"non-finite value in parameter 'c'"):
        rule.prepare_many(params, grads, states, names=["a", "b", "c"])
    params[2][0] = 1.0
    huge = np.finfo(dtype).max / 4                   # finite, but its square overflows
    grads[0][0, 0] = huge
    got = rule.prepare_many(params, grads, states)
    for i, prep in enumerate(got):
        _same_prepared(prep, rule.prepare(params[i], grads[i], states[i]))
    assert got[0].clip == 0                          # its norm is inf: that tensor goes to 0
    with pytest.raises(ValueError, match="as many grads, states and names as params"):
        rule.prepare_many(params, grads[:2], states)
