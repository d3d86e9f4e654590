"""The torch-semantics presets against torch.optim itself (skipped without torch).

25- and 30-step trajectories with schedules (the lr passed to the spec and set on torch's param
group), all-zero gradient steps, weight decay on and off, float64 and float32; then the same torch
optimizers run through ``minisage.testing.check_rule`` as another backend would.
"""

from __future__ import annotations

import numpy as np
import pytest

from minisage import spec, testing

torch = pytest.importorskip("torch")

TORCH_OPT = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adamax": "Adamax"}
RTOL = {np.float64: 1e-10, np.float32: 2e-5}

SETTINGS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.0, "maximize": True}),
    ("adamw", {"lr": 0.03, "betas": (0.5, 0.9), "weight_decay": 0.3}),
    ("adamax", {"lr": 0.02}),
    ("adamax", {"lr": 0.02, "betas": (0.8, 0.99), "weight_decay": 0.1}),
]


def assert_close(got, expected, rtol, what):
    """Entrywise ``|got - expected| <= rtol |expected| + 8 ulp(scale)``: an entry that came out of
    a cancellation (e.g. m = b1 m + (1 - b1) g near 0) keeps only an absolute accuracy of a few
    ulps of the array's scale, and torch fuses some multiply-adds where NumPy rounds twice."""
    dtype = np.asarray(expected).dtype
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    err = np.abs(got - expected)
    ok = err <= rtol * np.abs(expected) + 8 * np.finfo(dtype).eps * scale
    assert np.all(ok), f"{what}: worst relative error {np.max(err / np.abs(expected))}"


def trajectory_pair(preset, hp, dtype, steps, schedule, seed=0):
    rng = np.random.default_rng(seed)
    shape = (4, 5)
    p0 = rng.standard_normal(shape).astype(dtype)
    p0[0, 0] = 0.0
    rule = spec.make(preset, **hp)
    tp = torch.nn.Parameter(torch.tensor(p0.copy()))
    opt = getattr(torch.optim, TORCH_OPT[preset])([tp], **hp)
    factor = spec.make_schedule(schedule, warmup_steps=5, total_steps=steps) \
        if schedule != "constant" else spec.constant
    p, state = p0, rule.init(p0)
    for t in range(steps):
        g = (rng.standard_normal(shape) * (0.1 if t % 2 else 2.0)).astype(dtype)
        if t in (3, 11):
            g[...] = 0.0
        lr = hp["lr"] * factor(t)
        p, state, _ = rule.step(p, g, state, lr=lr)
        opt.param_groups[0]["lr"] = lr
        tp.grad = torch.tensor(g.copy())
        opt.step()
        yield t, p, state, tp.detach().numpy(), opt.state[tp]


@pytest.mark.parametrize("preset,hp", SETTINGS, ids=lambda x: x if isinstance(x, str) else "")
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("steps,schedule", [(25, "constant"), (30, "cosine"), (30, "linear")])
def test_matches_torch_optim(preset, hp, dtype, steps, schedule):
    rtol = RTOL[dtype]
    for t, p, state, tp, tstate in trajectory_pair(preset, hp, dtype, steps, schedule):
        assert p.dtype == dtype
        assert_close(p, tp, rtol, f"{preset} step {t + 1} param")
        for key in spec.make(preset, **hp).array_keys:
            assert_close(state[key], tstate[key].numpy(), rtol, f"{preset} step {t + 1} {key}")
        if "step" in tstate:
            assert state["step"] == int(tstate["step"])


def torch_step_fn(preset):
    """A stateless adapter: torch.optim as a minisage.testing step function."""

    def step_fn(param, grad, state, lr, hparams):
        p = torch.nn.Parameter(torch.from_numpy(param))
        opt = getattr(torch.optim, TORCH_OPT[preset])([p], **hparams)
        if state["step"] > 0 or preset != "sgd":
            st = {k: torch.from_numpy(v) for k, v in state.items() if k != "step"}
            if preset != "sgd":
                st["step"] = torch.tensor(float(state["step"]))
            if st:
                opt.state[p] = st
        if lr is not None:
            opt.param_groups[0]["lr"] = lr
        p.grad = torch.from_numpy(grad)
        opt.step()
        new = {"step": state["step"] + 1}
        new.update({k: v.numpy() for k, v in opt.state[p].items()
                    if k != "step" and v is not None})
        return p.detach().numpy(), new

    return step_fn


@pytest.mark.parametrize("preset", list(TORCH_OPT))
@pytest.mark.parametrize("chain", [False, True])
def test_torch_optim_passes_the_golden_vectors(preset, chain):
    ids = testing.check_rule(torch_step_fn(preset), preset, chain=chain)
    assert len(ids) >= 6
