"""The in-place optimizer kernels (minisage.optim.inplace) against the pure spec rules, bit for
bit: every preset with a kernel, both float dtypes, every option that changes the arithmetic, small
(batched) and large parameters, several steps; plus the facts the optimizer relies on (the kernel
path is taken, buffers are reused, a step is all-or-nothing)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from minisage import optim, spec
from minisage.optim import inplace

# preset -> hyperparameter variants (each changes which lines of the update run)
VARIANTS = {
    "adam": [{}, {"weight_decay": 0.1}, {"maximize": True, "weight_decay": 0.05}],
    "adamw": [{}, {"weight_decay": 0.0}, {"maximize": True}, {"betas": (0.5, 0.9), "eps": 1e-3}],
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
}
CASES = [(preset, i) for preset, variants in VARIANTS.items() for i in range(len(variants))]
SHAPES = [(3, 4), (5,), (), (4, 3), (1, 1), (180, 200)]  # the last > inplace.SMALL


def _params(rng, dtype):
    return [SimpleNamespace(data=rng.standard_normal(s).astype(dtype), grad=None) for s in SHAPES]


def _grad(rng, shape, dtype, scale, kind):
    g = (scale * rng.standard_normal(shape)).astype(dtype)
    if kind == "fortran" and g.ndim == 2:
        return np.asfortranarray(g)          # a transposed layout: sums in another memory order
    if kind == "float64":
        return g.astype(np.float64)          # another dtype: cast to the parameter's first
    if kind == "zero":
        return np.zeros_like(g)
    return g


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("preset,variant", CASES)
def test_kernel_is_the_spec_rule_bit_for_bit(preset, variant, dtype):
    hp = dict(VARIANTS[preset][variant])
    rng = np.random.default_rng(variant)
    params = _params(rng, dtype)
    sage = spec.rule_class(preset).sage
    opt = optim.optimizer_class(preset)([{"params": params, "sage": sage}], **hp)
    rule = spec.make(preset, **hp)
    assert inplace.kernel_for(rule) is not None
    ref = [(p.data.copy(), rule.init(p.data)) for p in params]
    kinds = ["plain", "fortran", "float64", "zero", "plain", "plain", "plain"]
    for t, kind in enumerate(kinds):
        scale = 10.0 if t % 2 else 0.01      # clipping active on odd steps, not on even ones
        for i, p in enumerate(params):
            p.grad = None if (t == 2 and i == 1) else _grad(rng, p.data.shape, dtype, scale, kind)
        lr = {4: {"lr": 0.003}, 5: {"lr_factor": 0.5}}.get(t, {})
        if lr and hp.get("t_total", -1) != -1:
            lr = {}                          # those rules schedule their own lr
        opt.step(**lr)
        for i, p in enumerate(params):
            ref_p, ref_s = ref[i]
            if p.grad is not None:
                step_lr = lr.get("lr", opt.param_groups[0]["lr"] * lr["lr_factor"]
                                 if "lr_factor" in lr else None)
                ref_p, ref_s, _ = rule.step(ref_p, p.grad, ref_s, lr=step_lr)
                ref[i] = (ref_p, ref_s)
            assert p.data.dtype == dtype and np.array_equal(p.data, ref_p), (t, i)
            got = opt.state_of(p)
            assert set(got) == set(ref_s)
            for key, value in ref_s.items():
                assert np.array_equal(got[key], value), (t, i, key)
                assert key == "step" or got[key].dtype == dtype


def test_the_kernel_path_is_taken_and_reuses_its_buffers(monkeypatch):
    rng = np.random.default_rng(0)
    params = _params(rng, np.float32)
    opt = optim.AdamWSAGE(params, lr=1e-3)
    for p in params:
        p.grad = rng.standard_normal(p.data.shape).astype(np.float32)

    def no_spec(*args, **kwargs):
        raise AssertionError("the spec rule ran")

    monkeypatch.setattr(spec.Rule, "step", no_spec)
    opt.step()
    buffers = {k: v.ctypes.data for k, v in opt._scratch._buffers.items()}
    state = {k: v.ctypes.data for k, v in opt.state_of(params[0]).items() if k != "step"}
    opt.step()
    assert {k: v.ctypes.data for k, v in opt._scratch._buffers.items()} == buffers
    assert {k: v.ctypes.data for k, v in opt.state_of(params[0]).items() if k != "step"} == state
    # state: exactly the spec's arrays (m, v, Ibar for SAGE), nothing more
    assert sorted(opt.state_of(params[0])) == ["exp_avg", "exp_avg_sq", "sensitivity_ema", "step"]
    opt.record = True                        # traces need the spec rule
    with pytest.raises(AssertionError, match="the spec rule ran"):
        opt.step()


def test_kernel_path_is_all_or_nothing():
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
    for p, b in zip(params, before):
        assert np.array_equal(p.data, b)
    for idx, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            assert np.array_equal(value, saved[idx][key])
