"""The official presets against a transcription of the official SAGE code (skipped without torch).

The official code (cliang1453/SAGE, ``module/bert_optim.py``, with pytorch-pretrained-bert 0.6.0's
``warmup_linear``) cannot be installed here, so the functions ``official_*_step`` below are a
TRANSCRIPTION of its ``AdamW`` / ``UnstructAwareAdamW`` and ``Adamax`` / ``UnstructAwareAdamax``
``step`` for one parameter, line for line, in torch. Only the deprecated call forms are modernised
(``add_(1 - beta1, grad)`` -> ``add_(grad, alpha=1 - beta1)``; ``torch.max(..., out=(exp_inf,
idx))`` -> ``copy_`` of the max), which computes the same. The schedule is selected by name from the
official functions instead of ``eval``. Clipping is torch's real ``clip_grad_norm_``.

The hand-derived values of the official presets are in ``tests/test_spec.py``; they need no torch.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from minisage import spec, testing

torch = pytest.importorskip("torch")
clip_grad_norm_ = torch.nn.utils.clip_grad_norm_


# ----- transcription of the official code ---------------------------------------------------------

def warmup_linear(x, warmup=0.002):  # pytorch_pretrained_bert.optimization 0.6.0
    if x < warmup:
        return x / warmup
    return 1.0 - x


def warmup_constant(x, warmup=0.002):  # pytorch_pretrained_bert.optimization 0.6.0
    if x < warmup:
        return x / warmup
    return 1.0


def warmup_linear_xdl(x, warmup=0.002):  # module/bert_optim.py
    if x < warmup:
        return x / warmup
    return (1.0 - x) / (1.0 - warmup)


def schedule_func(sch):
    return {"warmup_linear": warmup_linear, "warmup_constant": warmup_constant,
            "warmup_linear_xdl": warmup_linear_xdl}[sch]


def official_adamw_step(p, state, group, sage):
    """UnstructAwareAdamW.step for one parameter: 'mask' path if sage else 'common' (= AdamW)."""
    beta1, beta2, beta3 = group["betas"]
    grad = p.grad.data
    if len(state) == 0:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p.data)
        state["exp_avg_sq"] = torch.zeros_like(p.data)
        if sage:
            state["exp_avg_ipt"] = torch.zeros_like(p.data)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    state["step"] += 1
    if group["max_grad_norm"] > 0:
        clip_grad_norm_(p, group["max_grad_norm"])
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = exp_avg_sq.sqrt().add_(group["eps"])
    if sage:
        exp_avg_ipt = state["exp_avg_ipt"]
        ipt = (p.data * grad).abs()
        exp_avg_ipt.mul_(beta3).add_(ipt, alpha=1.0 - beta3)
    step_size = group["lr"]
    if group["t_total"] != -1:
        schedule_fct = schedule_func(group["schedule"])
        step_size = group["lr"] * schedule_fct(state["step"] / group["t_total"], group["warmup"])
    else:
        step_size = group["lr"]
    if sage:
        if group["correct_bias"]:
            bias_correction1 = 1.0 - beta1 ** state["step"]
            bias_correction2 = 1.0 - beta2 ** state["step"]
            bias_correction3 = 1.0 - beta3 ** state["step"]
            exp_avg_ipt_bias_corrected = exp_avg_ipt / bias_correction3
            step_size *= (ipt - exp_avg_ipt_bias_corrected).abs() / (
                exp_avg_ipt_bias_corrected + group["eps"] ** 2)
            step_size *= math.sqrt(bias_correction2) / bias_correction1
        else:
            step_size *= (ipt - exp_avg_ipt).abs() / (exp_avg_ipt + group["eps"] ** 2)
        p.data -= exp_avg / denom * step_size
    else:
        if group["correct_bias"]:
            bias_correction1 = 1.0 - beta1 ** state["step"]
            bias_correction2 = 1.0 - beta2 ** state["step"]
            step_size = step_size * math.sqrt(bias_correction2) / bias_correction1
        p.data.addcdiv_(exp_avg, denom, value=-step_size)
    if group["weight_decay"] > 0.0:
        p.data.add_(p.data, alpha=-group["lr"] * group["weight_decay"])


def official_adamax_step(p, state, group, sage):
    """UnstructAwareAdamax.step for one parameter: 'mask' path if sage else 'common' (= Adamax)."""
    beta1, beta2, beta3 = group["betas"]
    grad = p.grad.data
    if len(state) == 0:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p.data)
        state["exp_inf"] = torch.zeros_like(p.data)
        if sage:
            state["exp_avg_ipt"] = torch.zeros_like(p.data)
    exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
    eps = group["eps"]
    if group["max_grad_norm"] > 0:
        clip_grad_norm_(p, group["max_grad_norm"])
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    norm_buf = torch.cat([exp_inf.mul_(beta2).unsqueeze(0), grad.abs().add_(eps).unsqueeze_(0)], 0)
    exp_inf.copy_(torch.max(norm_buf, 0, keepdim=False).values)
    update = exp_avg / (exp_inf + eps)
    if sage:
        exp_avg_ipt = state["exp_avg_ipt"]
        ipt = (p.data * grad).abs()
        exp_avg_ipt.mul_(beta3).add_(ipt, alpha=1.0 - beta3)
        if group["t_total"] != -1:
            schedule_fct = schedule_func(group["schedule"])
            lr_scheduled = group["lr"] * schedule_fct(state["step"] / group["t_total"],
                                                      group["warmup"])
        else:
            lr_scheduled = group["lr"]
        if group["weight_decay"] > 0.0:
            update += group["weight_decay"] * p.data
        lr_scheduled *= (ipt - exp_avg_ipt).abs() / (exp_avg_ipt + eps**2)
    else:
        if group["weight_decay"] > 0.0:
            update += group["weight_decay"] * p.data
        if group["t_total"] != -1:
            schedule_fct = schedule_func(group["schedule"])
            lr_scheduled = group["lr"] * schedule_fct(state["step"] / group["t_total"],
                                                      group["warmup"])
        else:
            lr_scheduled = group["lr"]
    update_with_lr = lr_scheduled * update
    p.data.add_(-update_with_lr)
    state["step"] += 1


# ----- comparisons -----------------------------------------------------------------------------

def official_group(rule):
    """The official param group of a spec rule: its hyperparameters, betas + (beta3,)."""
    group = dict(rule.hparams)
    group["betas"] = (*rule.hparams["betas"], rule.hparams.get("beta3", 0.75))
    return group


def official_step(preset):
    return official_adamw_step if "adamw" in preset else official_adamax_step


SETTINGS = [
    {},                                                               # official defaults
    {"weight_decay": 0.01},
    {"weight_decay": 0.01, "t_total": 25, "warmup": 0.2},             # the jump after step 5
    {"t_total": 40, "warmup": 0.1, "schedule": "warmup_constant", "beta3": 0.6},
    {"t_total": 30, "warmup": 0.3, "schedule": "warmup_linear_xdl", "weight_decay": 0.1},
    {"max_grad_norm": -1, "weight_decay": 0.05, "beta3": 0.9, "betas": (0.8, 0.99)},
    {"max_grad_norm": 0.3, "eps": 1e-4},
]
AW_ONLY = [{"correct_bias": False}, {"correct_bias": False, "weight_decay": 0.01, "t_total": 25,
                                     "warmup": 0.1}]
CASES = [(preset, hp) for preset in ("bert-adamw", "adamw-sage", "bert-adamax", "adamax-sage")
         for hp in SETTINGS + (AW_ONLY if "adamw" in preset else [])]


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


@pytest.mark.parametrize("preset,hp", CASES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(CASES)])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-5)],
                         ids=["f64", "f32"])
def test_matches_the_official_code_over_30_steps(preset, hp, dtype, rtol):
    rng = np.random.default_rng(zlib.crc32(repr((preset, sorted(hp.items()))).encode()))
    shape = (4, 5)
    p0 = rng.standard_normal(shape).astype(dtype)
    p0[1, 2] = 0.0
    if not preset.endswith("sage"):
        hp = {k: v for k, v in hp.items() if k != "beta3"}
    rule = spec.make(preset, lr=0.01, **hp)
    group, step = official_group(rule), official_step(preset)
    tp, tstate = torch.tensor(p0.copy()), {}
    p, state = p0, rule.init(p0)
    clipped = 0
    for t in range(30):
        # alternate small (unclipped) and large (clipped at max_grad_norm 1) gradients
        g = (rng.standard_normal(shape) * (0.05 if t % 2 else 1.0)).astype(dtype)
        if t in (2, 17):
            g[...] = 0.0
        clipped += np.linalg.norm(g) > rule.hparams["max_grad_norm"] > 0
        p, state, _ = rule.step(p, g, state)
        tp.grad = torch.tensor(g.copy())
        step(tp, tstate, group, rule.sage)
        assert_close(p, tp.numpy(), rtol, f"step {t + 1} param")
        assert state["step"] == tstate["step"]
        for key in rule.array_keys:
            theirs = tstate["exp_avg_ipt" if key == "sensitivity_ema" else key]
            assert_close(state[key], theirs.numpy(), rtol, f"step {t + 1} {key}")
    if rule.hparams["max_grad_norm"] > 0:
        assert clipped >= 10                 # per-tensor clipping was active


def official_step_fn(preset):
    """The transcription as a minisage.testing step function (stateless adapter)."""
    sage = preset.endswith("sage")

    def step_fn(param, grad, state, lr, hparams):
        group = dict(hparams)
        group["betas"] = (*hparams["betas"], hparams.get("beta3", 0.75))
        if lr is not None:
            group["lr"] = lr   # only constant-lr golden cases pass lr with decay on (see below)
        p = torch.from_numpy(param)
        p.grad = torch.from_numpy(grad)
        st = {k: (v if k == "step" else torch.from_numpy(v)) for k, v in state.items()}
        if "sensitivity_ema" in st:
            st["exp_avg_ipt"] = st.pop("sensitivity_ema")
        official_step(preset)(p, st, group, sage)
        if "exp_avg_ipt" in st:
            st["sensitivity_ema"] = st.pop("exp_avg_ipt")
        return p.numpy(), {k: (v if k == "step" else v.numpy()) for k, v in st.items()}

    return step_fn


@pytest.mark.parametrize("preset", ["bert-adamw", "adamw-sage", "bert-adamax", "adamax-sage"])
@pytest.mark.parametrize("chain", [False, True])
def test_official_code_passes_the_golden_vectors(preset, chain):
    # A passed lr replaces group["lr"] in the official code, decay included; the golden cases that
    # pass an lr have weight decay off, so the two readings agree there.
    for case in testing.golden_cases(preset):
        if any(s.lr is not None for s in case.steps):
            assert case.hparams["weight_decay"] == 0.0
    assert len(testing.check_rule(official_step_fn(preset), preset, chain=chain)) >= 6


def test_official_presets_reproduce_the_first_steps_exactly_at_dyadic_beta3():
    # with beta3 = 0.75 (1 - beta3 = 1/4) the bias-corrected EMA equals I exactly at step 1
    rule = spec.make("adamw-sage", lr=0.01)
    p0 = np.array([0.5, -1.25, 0.0, 2.0])
    g = np.array([0.1, 0.2, -0.3, 0.05])
    p1, _, trace = rule.step(p0, g, rule.init(p0))
    tp, tstate = torch.tensor(p0.copy()), {}
    tp.grad = torch.tensor(g.copy())
    official_adamw_step(tp, tstate, official_group(rule), True)
    assert np.array_equal(p1, p0) and np.array_equal(tp.numpy(), p0)
    assert not np.any(trace["lr_multiplier"])
