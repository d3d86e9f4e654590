"""The spec: hand-derived values, identities, the facts of docs/spec.md section 5, purity, dtypes,
schedules, clipping and bad input. Needs no torch."""

from __future__ import annotations

import ast
import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minisage import spec

PRESETS = spec.presets()
SAGE_PRESETS = ("adamw-sage", "adamax-sage", "adam-sage")
OFFICIAL = ("bert-adamw", "bert-adamax", "adamw-sage", "adamax-sage")
TORCH = ("sgd", "adam", "adamw", "adamax")
REL64 = 1e-12

P0 = np.array([1.5, -0.5, 0.0])
G1 = np.array([0.2, -0.4, 0.3])
G2 = np.array([-0.1, 0.25, 0.0])


def run(preset, grads, p=P0, lrs=None, **hp):
    rule = spec.make(preset, **hp)
    state = rule.init(p)
    out = []
    for k, g in enumerate(grads):
        p, state, trace = rule.step(p, g, state, lr=None if lrs is None else lrs[k])
        out.append((p, state, trace))
    return out


def close(a, b, rel=REL64):
    np.testing.assert_allclose(a, b, rtol=rel, atol=0)


#: hyperparameter -> the symbols (regular expressions) that stand for it in a rule's update block
#: (the schedule's warmup, t_total and schedule enter through lr_t and are described in words)
SYMBOLS = {"lr": ("lr(_t)?",), "betas": ("beta1", "beta2"), "beta3": ("beta3",),
           "eps": ("eps",), "sage_eps": ("sage_eps",), "weight_decay": ("weight_decay",),
           "momentum": ("momentum",), "dampening": ("dampening",), "nesterov": ("nesterov",),
           "maximize": ("maximize",), "correct_bias": ("correct_bias",),
           "max_grad_norm": ("max_grad_norm",)}


def update_block(doc: str) -> str:
    """The literal block after the first ``::`` of a docstring (the update equations)."""
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", inspect.cleandoc(doc) + "\n")
    assert match, "no update block"
    return match.group(1)


def test_presets_listing():
    assert PRESETS == ("sgd", "adam", "adamw", "adamax", "bert-adamw", "bert-adamax",
                       "adamw-sage", "adamax-sage", "adam-sage")
    for name in PRESETS:
        rule = spec.make(name, lr=0.01)
        assert rule.name == name and rule.hparams["lr"] == 0.01
        assert rule.reproduces
        doc = spec.rule_class(name).__doc__
        assert "Warning" in doc
        # the update block updates p and names every hyperparameter that enters the arithmetic
        block = update_block(doc)
        assert re.search(r"^\s*p\s+=", block, re.MULTILINE), name
        for key in spec.defaults(name):
            for symbol in SYMBOLS.get(key, ()):
                assert re.search(rf"\b{symbol}\b", block), (name, key, symbol)


def test_defaults_mirror_the_implementations():
    assert spec.defaults("adam") == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                                     "weight_decay": 0.0, "maximize": False}
    assert spec.defaults("adamw")["weight_decay"] == 1e-2
    assert spec.defaults("adamax")["lr"] == 2e-3
    w = spec.defaults("adamw-sage")
    assert (w["eps"], w["beta3"], w["weight_decay"], w["correct_bias"], w["max_grad_norm"],
            w["warmup"], w["t_total"], w["schedule"]) == (1e-6, 0.75, 0.0, True, 1.0, -1, -1,
                                                          "warmup_linear")
    x = spec.defaults("adamax-sage")
    assert x["lr"] is spec.REQUIRED and x["weight_decay"] == 0.01 and "correct_bias" not in x
    a = spec.defaults("adam-sage")
    assert (a["eps"], a["sage_eps"], a["beta3"], a["weight_decay"]) == (1e-8, 1e-12, 0.75, 0.0)


# ----- hand-derived values ------------------------------------------------------------------


def test_sgd_hand_values():
    lr, mu, damp, wd = 0.1, 0.9, 0.1, 0.01
    (p1, s1, _), (p2, s2, _) = run("sgd", [G1, G2], lr=lr, momentum=mu, dampening=damp,
                                   weight_decay=wd)
    b1 = G1 + wd * P0                        # the first buffer is the (decayed) gradient
    close(p1, P0 - lr * b1)
    b2 = mu * b1 + (1 - damp) * (G2 + wd * p1)
    close(p2, p1 - lr * b2)
    close(s2["momentum_buffer"], b2)
    (q1, _, _), (q2, _, _) = run("sgd", [G1, G2], lr=lr, momentum=mu, nesterov=True)
    close(q1, P0 - lr * (G1 + mu * G1))
    c2 = mu * G1 + G2
    close(q2, q1 - lr * (G2 + mu * c2))


def test_plain_sgd_is_p_minus_lr_g_exactly():
    (p1, s1, _), = run("sgd", [G1], lr=0.3)
    assert np.array_equal(p1, P0 - 0.3 * G1) and s1 == {"step": 1}


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_and_adamw_hand_values(wd):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    # step 1: mhat = g and sqrt(vhat) = |g|, so the step is lr * g / (|g| + eps)
    (p1, _, _), (p2, _, _) = run("adamw", [G1, G2], lr=lr, weight_decay=wd)
    close(p1, P0 * (1 - lr * wd) - lr * G1 / (np.abs(G1) + eps))
    # step 2: mhat = (b1 g1 + g2) / (1 + b1), vhat = (b2 g1^2 + g2^2) / (1 + b2)
    mhat = (b1 * G1 + G2) / (1 + b1)
    vhat = (b2 * G1**2 + G2**2) / (1 + b2)
    close(p2, p1 * (1 - lr * wd) - lr * mhat / (np.sqrt(vhat) + eps))
    # adam: the decay is L2 in the gradient instead
    (q1, _, _), (q2, _, _) = run("adam", [G1, G2], lr=lr, weight_decay=wd)
    d1 = G1 + wd * P0
    close(q1, P0 - lr * d1 / (np.abs(d1) + eps))
    d2 = G2 + wd * q1
    mhat = (b1 * d1 + d2) / (1 + b1)
    vhat = (b2 * d1**2 + d2**2) / (1 + b2)
    close(q2, q1 - lr * mhat / (np.sqrt(vhat) + eps))


def test_adamax_hand_values():
    lr, b1, b2, eps = 0.02, 0.9, 0.999, 1e-8
    (p1, s1, _), (p2, s2, _) = run("adamax", [G1, G2], lr=lr)
    close(p1, P0 - lr * G1 / (np.abs(G1) + eps))
    u2 = np.maximum(b2 * (np.abs(G1) + eps), np.abs(G2) + eps)
    close(s2["exp_inf"], u2)
    close(p2, p1 - lr * (b1 * G1 + G2) / ((1 + b1) * u2))


@pytest.mark.parametrize("correct_bias", [True, False])
def test_bert_adamw_hand_values(correct_bias):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-6, 0.01
    (p1, _, _), (p2, _, _) = run("bert-adamw", [G1, G2], lr=lr, weight_decay=wd,
                                 correct_bias=correct_bias, max_grad_norm=-1)
    # step 1: m = (1-b1) g, sqrt(v) = sqrt(1-b2) |g|; eps is added to the uncorrected sqrt(v)
    s1 = lr * math.sqrt(1 - b2) / (1 - b1) if correct_bias else lr
    q1 = P0 - s1 * (1 - b1) * G1 / (math.sqrt(1 - b2) * np.abs(G1) + eps)
    close(p1, q1 * (1 - lr * wd))           # decay after the step, base lr
    s2 = lr * math.sqrt(1 - b2**2) / (1 - b1**2) if correct_bias else lr
    m2 = (1 - b1) * (b1 * G1 + G2)
    v2 = (1 - b2) * (b2 * G1**2 + G2**2)
    q2 = p1 - s2 * m2 / (np.sqrt(v2) + eps)
    close(p2, q2 * (1 - lr * wd))


def test_official_per_tensor_clipping_hand_values():
    g = np.array([2.0, -1.0, 0.5])           # norm sqrt(5.25) > 1: clipped to norm ~1
    c = 1.0 / (math.sqrt(5.25) + 1e-6)
    (p1, s1, _), = run("bert-adamw", [g], lr=0.01, correct_bias=False)
    close(s1["exp_avg"], 0.1 * g * c)
    (p1, s1, _), = run("bert-adamw", [g], lr=0.01, max_grad_norm=3.0)
    close(s1["exp_avg"], 0.1 * g)            # norm below 3: untouched


def test_bert_adamax_hand_values():
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-6, 0.01
    (p1, _, _), (p2, s2, _) = run("bert-adamax", [G1, G2], lr=lr, max_grad_norm=0)
    # eps twice, no bias correction, L2-style decay added to the update
    u1 = np.abs(G1) + eps
    close(p1, P0 - lr * ((1 - b1) * G1 / (u1 + eps) + wd * P0))
    u2 = np.maximum(b2 * u1, np.abs(G2) + eps)
    close(s2["exp_inf"], u2)
    close(p2, p1 - lr * ((1 - b1) * (b1 * G1 + G2) / (u2 + eps) + wd * p1))


@pytest.mark.parametrize("beta3", [0.75, 0.6])
def test_adamw_sage_hand_values(beta3):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-6, 0.01
    (p1, _, t1), (p2, s2, t2) = run("adamw-sage", [G1, G2], lr=lr, beta3=beta3,
                                    weight_decay=wd)
    # step 1: Ihat = I, so r = 0 and only the decay acts
    close(p1, P0 * (1 - lr * wd))
    I1, I2 = np.abs(P0 * G1), np.abs(p1 * G2)
    # step 2: Ihat = (b3 I1 + I2) / (1 + b3), so U = b3 |I2 - I1| / (1 + b3)
    ihat = (beta3 * I1 + I2) / (1 + beta3)
    r2 = beta3 * np.abs(I2 - I1) / (1 + beta3) / (ihat + eps**2)
    close(t2["sensitivity_ema_hat"], ihat)
    close(t2["lr_multiplier"], r2, rel=1e-10)
    m2 = (1 - b1) * (b1 * G1 + G2)
    v2 = (1 - b2) * (b2 * G1**2 + G2**2)
    q2 = p1 - lr * r2 * math.sqrt(1 - b2**2) / (1 - b1**2) * m2 / (np.sqrt(v2) + eps)
    close(p2, q2 * (1 - lr * wd), rel=1e-10)
    close(s2["sensitivity_ema"], (1 - beta3) * (beta3 * I1 + I2))


def test_adamax_sage_hand_values():
    lr, b1, b2, b3, eps, wd = 0.01, 0.9, 0.999, 0.75, 1e-6, 0.01
    (p1, _, t1), (p2, _, t2) = run("adamax-sage", [G1, G2], lr=lr, max_grad_norm=-1)
    I1 = np.abs(P0 * G1)
    r1 = b3 * I1 / ((1 - b3) * I1 + eps**2)  # ~ b3 / (1 - b3) = 3 where I > 0, 0 where I = 0
    close(t1["lr_multiplier"], r1)
    u1 = np.abs(G1) + eps
    close(p1, P0 - lr * r1 * ((1 - b1) * G1 / (u1 + eps) + wd * P0))
    I2 = np.abs(p1 * G2)
    ibar2 = (1 - b3) * (b3 * I1 + I2)
    r2 = np.abs(I2 - ibar2) / (ibar2 + eps**2)
    u2 = np.maximum(b2 * u1, np.abs(G2) + eps)
    close(p2, p1 - lr * r2 * ((1 - b1) * (b1 * G1 + G2) / (u2 + eps) + wd * p1))


def test_adam_sage_hand_values():
    lr, b1, b2, b3, eps, seps, wd = 0.02, 0.9, 0.999, 0.75, 1e-8, 1e-12, 0.1
    (p1, _, t1), (p2, _, t2) = run("adam-sage", [G1, G2], lr=lr, weight_decay=wd)
    I1 = np.abs(P0 * G1)
    r1 = b3 * I1 / ((1 - b3) * I1 + seps)
    close(p1, P0 * (1 - lr * wd) - lr * r1 * G1 / (np.abs(G1) + eps))
    I2 = np.abs(p1 * G2)                     # p before this step's decay
    ibar2 = (1 - b3) * (b3 * I1 + I2)
    r2 = np.abs(I2 - ibar2) / (ibar2 + seps)
    mhat = (b1 * G1 + G2) / (1 + b1)
    vhat = (b2 * G1**2 + G2**2) / (1 + b2)
    close(p2, p1 * (1 - lr * wd) - lr * r2 * mhat / (np.sqrt(vhat) + eps))


def test_internal_schedules_hand_values():
    # Adamax pair: scheduled with the count *before* the increment: the first update is zero
    lr = 0.01
    (p1, _, t1), (p2, _, t2) = run("bert-adamax", [G1, G2], lr=lr, t_total=10, warmup=0.1,
                                   max_grad_norm=-1)
    assert float(t1["lr"]) == 0.0 and np.array_equal(p1, P0)
    assert float(t2["lr"]) == pytest.approx(lr * 0.9, rel=1e-15)   # x = 0.1: past warmup, 1 - x
    # AdamW pair: scheduled with the count *after* the increment; the decay uses the base lr
    wd = 0.01
    (q1, _, u1), (q2, _, u2) = run("bert-adamw", [G1, G2], lr=lr, t_total=10, warmup=0.2,
                                   weight_decay=wd, correct_bias=False, max_grad_norm=-1)
    assert float(u1["lr"]) == pytest.approx(lr * 0.5, rel=1e-15)   # x = 0.1 < 0.2: x / warmup
    assert float(u2["lr"]) == pytest.approx(lr * 0.8, rel=1e-15)   # x = 0.2: the jump to 1 - x
    step = 0.5 * lr * 0.1 * G1 / (math.sqrt(0.001) * np.abs(G1) + 1e-6)
    close(q1, (P0 - step) * (1 - lr * wd))


def test_passed_lr_overrides_and_official_decay_keeps_base_lr():
    wd = 0.1
    (p1, _, t1), = run("bert-adamw", [G1], lrs=[0.003], lr=0.01, weight_decay=wd,
                       correct_bias=False, max_grad_norm=-1)
    assert float(t1["lr"]) == 0.003
    q = P0 - 0.003 * 0.1 * G1 / (math.sqrt(0.001) * np.abs(G1) + 1e-6)
    close(p1, q * (1 - 0.01 * wd))
    (p1, _, _), = run("adamw", [G1], lrs=[0.003], lr=0.01, weight_decay=wd)
    close(p1, P0 * (1 - 0.003 * wd) - 0.003 * G1 / (np.abs(G1) + 1e-8))


# ----- identities -----------------------------------------------------------------------------

arrays64 = hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-3, 3))


@given(p=arrays64, data=st.data(), lr=st.floats(0, 0.5), b1=st.floats(0, 0.99),
       b2=st.floats(0, 0.999))
def test_adamw_without_decay_is_adam(p, data, lr, b1, b2):
    grads = [data.draw(hnp.arrays(np.float64, p.shape, elements=st.floats(-3, 3)))
             for _ in range(3)]
    hp = dict(lr=lr, betas=(b1, b2), weight_decay=0.0)
    for (pa, sa, _), (pw, sw, _) in zip(run("adam", grads, p, **hp), run("adamw", grads, p, **hp)):
        assert np.array_equal(pa, pw)
        assert np.array_equal(sa["exp_avg_sq"], sw["exp_avg_sq"])


@given(p=arrays64, data=st.data(), lr=st.floats(0, 1))
def test_plain_sgd_is_p_minus_lr_g(p, data, lr):
    g = data.draw(hnp.arrays(np.float64, p.shape, elements=st.floats(-3, 3)))
    rule = spec.make("sgd", lr=lr)
    new, _, trace = rule.step(p, g, rule.init(p))
    assert np.array_equal(new, p - lr * g)
    assert np.array_equal(trace["update"], new - p)


# ----- docs/spec.md section 5 ---------------------------------------------------------------------

def trajectory(preset, p, grads, **hp):
    rule = spec.make(preset, **hp)
    state = rule.init(p)
    out = []
    for g in grads:
        p, state, trace = rule.step(p, g, state)
        out.append((p, state, trace))
    return out


def draw_problem(data, min_steps=1, max_steps=6, nonzero=False):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    # magnitudes in {0} U [1e-3, 3] (or [0.05, 3]): no underflow in |p * g| and its EMA
    el = st.floats(0.05, 3) if nonzero else st.one_of(st.just(0.0), st.floats(1e-3, 3))
    sign = hnp.arrays(np.float64, shape, elements=st.sampled_from([-1.0, 1.0]))
    p = data.draw(hnp.arrays(np.float64, shape, elements=el)) * data.draw(sign)
    n = data.draw(st.integers(min_steps, max_steps))
    grads = [data.draw(hnp.arrays(np.float64, shape, elements=el)) * data.draw(sign)
             for _ in range(n)]
    return p, grads


@pytest.mark.parametrize("exact", [True, False])
@given(data=st.data(), wd=st.sampled_from([0.0, 0.01]))
def test_adamw_sage_first_step_moves_nothing(exact, data, wd):
    # exact: beta3 = 0.75, where 1 - beta3 is a power of two; else any beta3
    beta3 = 0.75 if exact else data.draw(st.floats(0.05, 0.95), label="beta3")
    p, grads = draw_problem(data, 1, 1)
    (p1, _, tr), = trajectory("adamw-sage", p, grads, lr=0.1, beta3=beta3, weight_decay=wd)
    I = tr["sensitivity"]  # noqa: E741
    # Ihat = I up to rounding: U is at most a few ulps of I
    assert np.all(tr["uncertainty"] <= 4 * np.finfo(np.float64).eps * I)
    if exact:  # Ibar = I / 4 and Ihat = Ibar / (1 / 4) = I without rounding: U = 0 exactly
        assert beta3 == 0.75 and not np.any(tr["uncertainty"])
    # so the step is at most a few ulps of lr (the decay is exact arithmetic on p)
    np.testing.assert_allclose(p1, p - 0.1 * wd * p, rtol=1e-15, atol=1e-14)


def sage_no_bias_correction():
    return [("adamax-sage", {"lr": 0.01}), ("adam-sage", {}),
            ("adamw-sage", {"correct_bias": False})]


@pytest.mark.parametrize("preset,hp", sage_no_bias_correction())
@given(data=st.data(), beta3=st.floats(0.05, 0.95))
def test_multiplier_range_without_bias_correction(preset, hp, data, beta3):
    p, grads = draw_problem(data, 1, 8)
    out = trajectory(preset, p, grads, beta3=beta3, **hp)
    bound = max(1.0, beta3 / (1 - beta3))
    for _, _, tr in out:
        assert np.all(tr["lr_multiplier"] >= 0)
        assert np.all(tr["lr_multiplier"] <= bound * (1 + 1e-12))
    # the first step: r = b3 / (1 - b3) wherever I > 0 (up to eps_s)
    first = out[0][2]
    big = first["sensitivity"] > 1e-6
    np.testing.assert_allclose(first["lr_multiplier"][big], beta3 / (1 - beta3), rtol=1e-5)


@pytest.mark.parametrize("preset,hp", sage_no_bias_correction())
def test_multiplier_tends_to_one_as_sensitivity_vanishes(preset, hp):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(5) + 3.0
    grads = [rng.standard_normal(5) for _ in range(3)] + [np.zeros(5)]
    *_, (_, _, tr) = trajectory(preset, p, grads, **hp)
    assert not np.any(tr["sensitivity"])
    np.testing.assert_allclose(tr["lr_multiplier"], 1.0, rtol=1e-9)


@pytest.mark.parametrize("preset", SAGE_PRESETS)
@given(data=st.data())
def test_zero_entries_never_move(preset, data):
    p, grads = draw_problem(data, 1, 6)
    mask = data.draw(hnp.arrays(np.bool_, p.shape))
    p = np.where(mask, 0.0, p)
    hp = {"lr": 0.05, "weight_decay": 0.01}
    for new, state, tr in trajectory(preset, p, grads, **hp):
        assert np.all(new[mask] == 0)
        assert not np.any(state["sensitivity_ema"][mask])
        assert not np.any(tr["uncertainty"][mask]) and not np.any(tr["lr_multiplier"][mask])


@pytest.mark.parametrize("preset", SAGE_PRESETS)
@given(data=st.data(), c=st.floats(1e-3, 1e3))
def test_multiplier_invariant_to_loss_scaling(preset, data, c):
    p, grads = draw_problem(data, 1, 5, nonzero=True)
    hp = {"lr": 0.01, "max_grad_norm": -1} if preset != "adam-sage" else {}
    a = trajectory(preset, p, grads, **hp)
    b = trajectory(preset, p, [c * g for g in grads], **hp)
    # at the first step p is the same, so I, Ibar and U scale by c and r = U / (Ibar + eps_s)
    # changes only through eps_s = 1e-12: by at most eps_s (1 + 1/c) / Ibar, relatively
    ra, rb = a[0][2]["lr_multiplier"], b[0][2]["lr_multiplier"]
    ibar = a[0][2]["sensitivity_ema"]
    bound = 1e-14 + 2e-12 * (1 + 1 / c) / ibar
    assert np.all(np.abs(rb - ra) <= bound * ra)
    np.testing.assert_allclose(b[0][2]["sensitivity_ema"], c * a[0][2]["sensitivity_ema"],
                               rtol=1e-12)


@given(data=st.data(), c=st.floats(1e-2, 1e2))
def test_sage_adam_step_invariant_to_loss_scaling_as_eps_vanish(data, c):
    p, grads = draw_problem(data, 1, 5, nonzero=True)
    hp = {"lr": 0.01, "eps": 0.0, "sage_eps": 0.0}
    a = trajectory("adam-sage", p, grads, **hp)
    b = trajectory("adam-sage", p, [c * g for g in grads], **hp)
    for (pa, _, _), (pb, _, _) in zip(a, b):
        np.testing.assert_allclose(pb, pa, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("preset", SAGE_PRESETS)
@given(data=st.data(), beta3=st.floats(0.0, 0.99))
def test_sensitivity_ema_is_bounded_by_the_largest_sensitivity(preset, data, beta3):
    p, grads = draw_problem(data, 1, 8)
    hp = {"lr": 0.05, "beta3": beta3}
    top = 0.0
    for _, state, tr in trajectory(preset, p, grads, **hp):
        top = np.maximum(top, tr["sensitivity"])
        for ibar in (state["sensitivity_ema"], tr["sensitivity_ema"]):
            assert np.all(ibar >= 0)
            assert np.all(ibar <= top * (1 + 1e-12))
        assert np.all(tr["uncertainty"] >= 0)


def test_sage_pieces_are_the_equations():
    p, g = np.array([2.0, -1.0, 0.0]), np.array([0.5, 0.5, 9.0])
    I = spec.sensitivity(p, g)  # noqa: E741
    assert I.tolist() == [1.0, 0.5, 0.0]
    ibar = spec.sensitivity_ema(np.array([2.0, 0.0, 0.0]), I, 0.75)
    assert ibar.tolist() == [1.75, 0.125, 0.0]
    U = spec.uncertainty(I, ibar)
    assert U.tolist() == [0.75, 0.375, 0.0]
    with np.errstate(invalid="ignore"):  # eps = 0 makes the zero entry 0/0
        assert spec.lr_multiplier(U, ibar, 0.0)[:2].tolist() == [0.75 / 1.75, 3.0]
    assert spec.bias_correct(np.array([0.25]), 0.75, 1).tolist() == [1.0]


# ----- purity, dtypes, shapes -------------------------------------------------------------------

def hparams_for(preset):
    common = {"lr": st.floats(0, 0.5)}
    if preset == "sgd":
        return st.fixed_dictionaries({**common, "momentum": st.sampled_from([0.0, 0.9]),
                                      "weight_decay": st.sampled_from([0.0, 0.01])})
    betas = st.tuples(st.floats(0, 0.99), st.floats(0, 0.999))
    d = {**common, "betas": betas, "weight_decay": st.sampled_from([0.0, 0.01]),
         "eps": st.sampled_from([1e-8, 1e-6, 1e-3])}
    if preset in SAGE_PRESETS:
        d["beta3"] = st.floats(0, 0.95)
    if preset in OFFICIAL:
        d["max_grad_norm"] = st.sampled_from([-1.0, 0.5, 1.0])
    if preset in ("bert-adamw", "adamw-sage"):
        d["correct_bias"] = st.booleans()
    return st.fixed_dictionaries(d)


@pytest.mark.parametrize("preset", PRESETS)
@given(data=st.data())
def test_step_is_pure_and_keeps_dtype(preset, data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    el = st.floats(-3, 3, width=32)
    p = data.draw(hnp.arrays(dtype, shape, elements=el))
    hp = data.draw(hparams_for(preset))
    rule = spec.make(preset, **hp)
    state = rule.init(p)
    assert state["step"] == 0 and all(state[k].dtype == dtype for k in rule.array_keys)
    for _ in range(3):
        g = data.draw(hnp.arrays(dtype, shape, elements=el))
        frozen = [p, g, *(state[k] for k in rule.array_keys)]
        copies = [a.copy() for a in frozen]
        for a in frozen:
            a.flags.writeable = False        # any in-place write would raise
        new_p, new_state, trace = rule.step(p, g, state)
        for a, c in zip(frozen, copies):
            assert np.array_equal(a, c)
        assert new_p.dtype == dtype and new_p.shape == p.shape
        assert not np.shares_memory(new_p, p)
        for k in rule.array_keys:
            assert new_state[k].dtype == dtype and new_state[k].shape == p.shape
            assert not any(np.shares_memory(new_state[k], a) for a in frozen)
        assert new_state["step"] == state["step"] + 1
        for key, value in trace.items():
            if key != "lr":
                assert value.dtype == dtype, key
        expected = {"update", "lr"}
        if preset in SAGE_PRESETS:
            expected |= {"sensitivity", "sensitivity_ema", "sensitivity_ema_hat", "uncertainty",
                         "lr_multiplier"}
        assert set(trace) == expected
        assert np.all(np.isfinite(new_p))
        p, state = new_p, new_state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("preset", PRESETS)
def test_step_on_0d_and_empty_arrays(preset, dtype):
    rule = spec.make(preset, lr=0.1, **({"momentum": 0.9} if preset == "sgd" else {}))
    # a 0-d parameter steps exactly as the same entry in a 1-d array (the update is elementwise)
    p0, p1 = np.array(0.7, dtype), np.array([0.7], dtype)
    s0, s1 = rule.init(p0), rule.init(p1)
    for g in (0.3, -2.0, 0.0):
        p0, s0, t0 = rule.step(p0, np.array(g, dtype), s0)
        p1, s1, t1 = rule.step(p1, np.array([g], dtype), s1)
        assert p0.shape == () and p0.dtype == dtype and p0.tobytes() == p1.tobytes()
        for key in rule.array_keys:
            assert s0[key].shape == () and s0[key].tobytes() == s1[key].tobytes()
        assert set(t0) == set(t1)
        assert all(t0[k].shape == () and t0[k].tobytes() == t1[k].tobytes()
                   for k in t0 if k != "lr")
    # an empty parameter: empty results of its shape and dtype, the step count still advances
    pe = np.zeros((0, 3), dtype)
    new, state, trace = rule.step(pe, np.zeros((0, 3), dtype), rule.init(pe))
    assert new.shape == (0, 3) and new.dtype == dtype and state["step"] == 1
    assert all(state[k].shape == (0, 3) and state[k].dtype == dtype for k in rule.array_keys)
    assert trace["update"].shape == (0, 3)


def test_state_layout():
    p = np.zeros(3)
    keys = {name: set(spec.make(name, lr=0.1).init(p)) for name in PRESETS}
    assert keys["sgd"] == {"step"}
    assert set(spec.make("sgd", momentum=0.5).init(p)) == {"step", "momentum_buffer"}
    assert keys["adam"] == keys["adamw"] == keys["bert-adamw"] == {"step", "exp_avg",
                                                                    "exp_avg_sq"}
    assert keys["adamax"] == keys["bert-adamax"] == {"step", "exp_avg", "exp_inf"}
    # SAGE: exactly three arrays per parameter
    assert keys["adamw-sage"] == keys["adam-sage"] == {"step", "exp_avg", "exp_avg_sq",
                                                       "sensitivity_ema"}
    assert keys["adamax-sage"] == {"step", "exp_avg", "exp_inf", "sensitivity_ema"}


def test_trace_off_returns_empty_and_same_numbers():
    rule = spec.make("adamw-sage", lr=0.1)
    s = rule.init(P0)
    a = rule.step(P0, G1, s)
    b = rule.step(P0, G1, s, trace=False)
    assert b[2] == {} and np.array_equal(a[0], b[0])


def test_float32_is_not_upcast_by_numpy_scalars():
    p = np.ones(3, np.float32)
    rule = spec.make("adam", lr=np.float64(0.1), betas=(np.float64(0.9), 0.999))
    new, state, _ = rule.step(p, np.ones(3, np.float32), rule.init(p), lr=np.float64(0.01))
    assert new.dtype == np.float32 and state["exp_avg"].dtype == np.float32
    # a float64 gradient is cast to the parameter's dtype
    new, _, _ = rule.step(p, np.ones(3), rule.init(p))
    assert new.dtype == np.float32


# ----- bad input ------------------------------------------------------------------------------

BAD_HPARAMS = [
    ("lr", -1.0, r"lr must be in \[0, inf\)"),
    ("lr", float("nan"), r"lr must be in \[0, inf\)"),
    ("betas", (1.0, 0.999), r"betas\[0\] must be in \[0, 1\)"),
    ("betas", (0.9, -0.1), r"betas\[1\] must be in \[0, 1\)"),
    ("betas", (0.9,), r"betas must be a pair"),
    ("eps", -1e-8, r"eps must be in \[0, inf\)"),
    ("weight_decay", -0.1, r"weight_decay must be in \[0, inf\)"),
    ("lr", "fast", r"lr must be a real number"),
]


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "sgd"])
@pytest.mark.parametrize("key,value,message", BAD_HPARAMS)
def test_bad_hyperparameters_name_themselves_and_their_range(preset, key, value, message):
    with pytest.raises(ValueError, match=f"{preset}: {message}"):
        spec.make(preset, **{"lr": 0.1, key: value})


@pytest.mark.parametrize("preset", SAGE_PRESETS)
@pytest.mark.parametrize("value", [1.0, -0.5, 2.0])
def test_bad_beta3(preset, value):
    with pytest.raises(ValueError, match=r"beta3 must be in \[0, 1\)"):
        spec.make(preset, lr=0.1, beta3=value)


@pytest.mark.parametrize("preset", OFFICIAL)
def test_bad_official_hyperparameters(preset):
    with pytest.raises(ValueError, match=r"warmup must be in \[0, 1\) or -1"):
        spec.make(preset, lr=0.1, warmup=1.5)
    with pytest.raises(ValueError, match="t_total must be a positive integer or -1"):
        spec.make(preset, lr=0.1, t_total=0)
    with pytest.raises(ValueError, match="schedule must be one of warmup_linear"):
        spec.make(preset, lr=0.1, schedule="warmup_cosine")
    with pytest.raises(ValueError, match="give betas or b1/b2"):
        spec.make(preset, lr=0.1, betas=(0.9, 0.99), b1=0.8)
    rule = spec.make(preset, lr=0.1, b1=0.8, e=1e-5)   # the official docstrings' names
    assert rule.hparams["betas"] == (0.8, 0.999) and rule.hparams["eps"] == 1e-5


def test_bad_sgd_and_flags():
    with pytest.raises(ValueError, match=r"sgd: momentum must be in \[0, inf\)"):
        spec.make("sgd", momentum=-0.9)
    with pytest.raises(ValueError, match="nesterov=True requires momentum"):
        spec.make("sgd", nesterov=True)
    with pytest.raises(ValueError, match="correct_bias must be True or False"):
        spec.make("adamw-sage", correct_bias=1)
    with pytest.raises(ValueError, match=r"adam-sage: sage_eps must be in \[0, inf\)"):
        spec.make("adam-sage", sage_eps=-1.0)


def test_unknown_preset_and_hyperparameter():
    with pytest.raises(ValueError, match="unknown preset 'lamb'; choose one of: sgd, adam"):
        spec.make("lamb")
    with pytest.raises(ValueError, match="adamw: unknown hyperparameter 'beta3'; allowed: lr, "
                                         "betas, eps, weight_decay, maximize"):
        spec.make("adamw", beta3=0.75)
    with pytest.raises(ValueError, match="bert-adamax: lr is required"):
        spec.make("bert-adamax")


@pytest.mark.parametrize("preset", PRESETS)
def test_step_rejects_bad_input_and_touches_nothing(preset):
    rule = spec.make(preset, lr=0.1)
    p = P0.copy()
    state = rule.init(p)
    p, state, _ = rule.step(p, G1, state)
    snapshot = (p.copy(), {k: np.array(v, copy=True) for k, v in state.items()})
    g = G2.copy()
    g[1] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite gradient for parameter "
                                                 "'blocks.0.output.dense.weight'"):
        rule.step(p, g, state, name="blocks.0.output.dense.weight")
    g[1] = np.inf
    with pytest.raises(FloatingPointError, match="the parameter"):
        rule.step(p, g, state)
    assert np.array_equal(p, snapshot[0])
    for k, v in state.items():
        assert np.array_equal(v, snapshot[1][k])
    with pytest.raises(ValueError, match=r"grad shape \(2,\) does not match param shape \(3,\) "
                                         r"\(parameter 'w'\)"):
        rule.step(p, np.ones(2), state, name="w")
    with pytest.raises(ValueError, match=r"lr must be in \[0, inf\)"):
        rule.step(p, G2, state, lr=-0.1)
    with pytest.raises(ValueError, match="state keys"):
        rule.step(p, G2, {"step": 1, "bogus": p})
    if rule.array_keys:
        bad = dict(state)
        bad[rule.array_keys[0]] = np.zeros(4)
        with pytest.raises(ValueError, match=r"has shape \(4,\)"):
            rule.step(p, G2, bad)
    with pytest.raises(ValueError, match="state\\['step'\\] must be an integer >= 0"):
        rule.step(p, G2, {**state, "step": -1})
    with pytest.raises(TypeError, match="floating-point"):
        rule.step(np.arange(3), G2, state)


def test_internal_schedule_refuses_a_passed_lr():
    rule = spec.make("adamw-sage", lr=0.1, t_total=10, warmup=0.1)
    with pytest.raises(ValueError, match="schedules its own lr"):
        rule.step(P0, G1, rule.init(P0), lr=0.05)


# ----- schedules and clipping ---------------------------------------------------------------------

def test_official_warmup_linear_and_its_jump():
    assert spec.warmup_linear(0.05, 0.1) == pytest.approx(0.5)
    assert spec.warmup_linear(0.0999, 0.1) == pytest.approx(0.999)
    assert spec.warmup_linear(0.1, 0.1) == pytest.approx(0.9)        # the jump: ~1 -> 1 - warmup
    assert spec.warmup_linear(1.2, 0.1) == pytest.approx(-0.2)       # negative past t_total
    assert spec.warmup_linear(0.5, -1) == 0.5                        # warmup = -1: no warmup
    assert spec.warmup_linear_xdl(0.1, 0.1) == pytest.approx(1.0)    # the continuous variant
    assert spec.warmup_constant(0.5, 0.1) == 1.0
    assert spec.official_lr(2.0, 3, -1, 0.1, "warmup_linear") == 2.0
    assert spec.official_lr(2.0, 1, 10, 0.2, "warmup_linear") == pytest.approx(1.0)
    f = spec.make_schedule("warmup_linear", warmup=0.2, t_total=10)
    assert [f(t) for t in (0, 1, 2)] == pytest.approx([0.0, 0.5, 0.8])


@given(total=st.integers(2, 200), frac=st.floats(0, 0.9), data=st.data())
def test_linear_and_cosine_schedules(total, frac, data):
    warm = int(frac * total)
    lin = spec.make_schedule("linear", warmup_steps=warm, total_steps=total)
    cos = spec.make_schedule("cosine", warmup_steps=warm, total_steps=total)
    assert lin(total) == 0.0 and cos(total) == pytest.approx(0.0, abs=1e-15)
    assert lin(warm) == 1.0 and cos(warm) == 1.0
    t = data.draw(st.integers(0, total + 5))
    for f in (lin, cos):
        assert 0.0 <= f(t) <= 1.0
        if t < warm:
            assert f(t) == t / warm
    if warm <= t < total:   # monotone decay after warmup, continuous (no jump)
        assert lin(t + 1) <= lin(t) and cos(t + 1) <= cos(t) + 1e-15
    assert spec.make_schedule("constant")(t) == 1.0


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        spec.make_schedule("step")
    with pytest.raises(ValueError, match="missing"):
        spec.make_schedule("cosine", warmup_steps=3)


@given(g=hnp.arrays(np.float64, st.integers(1, 8), elements=st.floats(-10, 10)),
       max_norm=st.floats(0.1, 5))
def test_per_tensor_clipping(g, max_norm):
    n = np.linalg.norm(g)
    out = spec.clip_per_tensor(g, max_norm)
    if max_norm / (n + 1e-6) < 1:
        assert np.linalg.norm(out) <= max_norm * (1 + 1e-12)
        np.testing.assert_allclose(np.linalg.norm(out), max_norm * n / (n + 1e-6), rtol=1e-12)
    else:
        assert out is g
    assert spec.clip_per_tensor(g, -1) is g and spec.clip_per_tensor(g, 0) is g
    single, total = spec.clip_global_norm([g], max_norm)
    assert np.array_equal(single[0], out) and total == pytest.approx(n, rel=1e-12)


def test_global_norm_clipping():
    a, b = np.array([3.0, 0.0]), np.array([[4.0]], np.float32)
    (ca, cb), total = spec.clip_global_norm([a, b], 1.0)
    assert total == pytest.approx(5.0)
    assert cb.dtype == np.float32
    np.testing.assert_allclose([ca[0], cb[0, 0]], [3 / (5 + 1e-6), 4 / (5 + 1e-6)], rtol=1e-6)
    (ua, ub), _ = spec.clip_global_norm([a, b], 10.0)
    assert ua is a and ub is b
    with pytest.raises(ValueError, match=r"max_norm must be in \(0, inf\)"):
        spec.clip_global_norm([a], 0.0)


def test_spec_imports_numpy_only():
    folder = Path(spec.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in {"numpy", "math", "numbers", "collections", "typing",
                               "__future__", "warnings"} or name.startswith("minisage.spec"), \
                    f"{path.name} imports {name}"
