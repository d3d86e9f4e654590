"""minisage.testing: the helpers another backend's test suite uses."""

from __future__ import annotations

import numpy as np
import pytest

from minisage import golden, spec, testing


@pytest.mark.parametrize("preset", spec.presets())
def test_the_spec_passes_its_own_golden_cases(preset):
    for chain in (False, True):
        ids = testing.check_rule(testing.spec_step_fn(preset), preset, chain=chain)
        assert ids == [c.id for c in golden.load_preset(preset)]


@pytest.mark.parametrize("case", testing.golden_cases("adamw-sage", "float32"), ids=str)
def test_golden_cases_parametrize(case):
    assert case.dtype == np.float32 and case.id.startswith("adamw-sage/f32-")
    testing.check_case(testing.spec_step_fn("adamw-sage"), case)


def test_a_wrong_backend_fails_with_case_step_entry_and_values():
    rule_fn = testing.spec_step_fn("adamw")

    def off_by_a_bit(param, grad, state, lr, hparams):
        new, st, _ = spec.make("adamw", **hparams).step(param, grad, state, lr=lr)
        if st["step"] == 3:
            new = new.copy()
            new.reshape(-1)[1] *= 1 + 1e-8
        return new, st

    with pytest.raises(AssertionError) as err:
        testing.check_rule(off_by_a_bit, "adamw")
    msg = str(err.value)
    assert "golden case 'adamw/f64-3steps-zero-grad', step 3 of 3: param[0, 1] = " in msg
    assert "expected" in msg and "atol 1e-13 + rtol 1e-10" in msg
    assert "1 of 6 entries out of tolerance" in msg
    # the same step function passes with a looser tolerance
    testing.check_rule(off_by_a_bit, "adamw", rtol=1e-7)
    testing.check_rule(rule_fn, "adamw")


def test_state_mismatch_and_missing_keys_are_reported():
    def wrong_state(param, grad, state, lr, hparams):
        new, st, _ = spec.make("adamax", **hparams).step(param, grad, state, lr=lr)
        st["exp_inf"] = st["exp_inf"] * 1.001
        return new, st

    with pytest.raises(AssertionError,
                       match=r"step 1 of 1: state\['exp_inf'\]\[\d\] = [0-9.]+, expected [0-9.]+ "):
        testing.check_rule(wrong_state, "adamax")

    def no_state_key(param, grad, state, lr, hparams):
        new, st, _ = spec.make("adamax", **hparams).step(param, grad, state, lr=lr)
        del st["exp_inf"]
        return new, st

    with pytest.raises(AssertionError, match="the returned state has no 'exp_inf'"):
        testing.check_rule(no_state_key, "adamax")

    def bad_step(param, grad, state, lr, hparams):
        new, st, _ = spec.make("adamax", **hparams).step(param, grad, state, lr=lr)
        st["step"] += 1
        return new, st

    with pytest.raises(AssertionError, match=r"state\['step'\] = 2, expected 1"):
        testing.check_rule(bad_step, "adamax")


def test_param_only_backends_and_dtype_checks():
    def param_only(param, grad, state, lr, hparams):
        return spec.make("sgd", **hparams).step(param, grad, state, lr=lr)[0]

    testing.check_rule(param_only, "sgd")

    def upcasts(param, grad, state, lr, hparams):
        new, st, _ = spec.make("adam", **hparams).step(param, grad, state, lr=lr)
        return new.astype(np.float64), st

    with pytest.raises(AssertionError, match="param has dtype float64, expected float32"):
        testing.check_rule(upcasts, "adam", dtype="float32")
    with pytest.raises(AssertionError, match="has dtype float64"):
        testing.check_rule(upcasts, "adam", dtype="float32", check_state=False)
    testing.check_rule(lambda *a: upcasts(*a)[0], "adam", dtype="float32", check_dtype=False)
    with pytest.raises(AssertionError, match=r"param has shape \(2,\), expected \(3,\)"):
        testing.check_rule(lambda p, *a: p[:2], "adam", dtype="float64")


def test_inputs_are_fresh_copies_and_lr_is_passed_as_recorded():
    seen = []

    def mutating(param, grad, state, lr, hparams):
        out = spec.make("bert-adamw", **hparams).step(param, grad, state, lr=lr)
        seen.append(lr)
        param[...] = np.nan                      # a backend may scribble on its inputs
        grad[...] = np.nan
        for key in state:
            if key != "step":
                state[key][...] = np.nan
        return out

    testing.check_rule(mutating, "bert-adamw")
    assert None in seen and any(isinstance(x, float) for x in seen)


def test_tolerances_and_errors():
    assert testing.tolerances("float64") == (1e-10, 1e-13)
    assert testing.tolerances(np.float32) == (2e-5, 1e-7)
    assert testing.tolerances("float32", rtol=1e-3) == (1e-3, 1e-7)
    with pytest.raises(ValueError, match="unknown preset"):
        testing.golden_cases("lamb")
    with pytest.raises(AssertionError, match="is for preset 'adam'"):
        testing.check_rule(testing.spec_step_fn("sgd"), "sgd",
                           cases=golden.load_preset("adam"))
    with pytest.raises(AssertionError, match="tuple of 4 items"):
        testing.check_rule(lambda *a: (1, 2, 3, 4), "sgd")


# -- drawn cases (hypothesis) --------------------------------------------------------------------

def more_accurate(preset):
    """The spec computed in a wider dtype (float64 for float32 cases, long double for float64),
    rounded back: a correct implementation whose roundings all differ from the spec's."""
    wider = {np.dtype(np.float32): np.float64, np.dtype(np.float64): np.longdouble}

    def step_fn(param, grad, state, lr, hparams):
        dt, w = param.dtype, wider[param.dtype]
        st = {k: (v if k == "step" else v.astype(w)) for k, v in state.items()}
        p, s, _ = spec.make(preset, **hparams).step(param.astype(w), grad.astype(w), st, lr=lr)
        return p.astype(dt), {k: (v if k == "step" else v.astype(dt)) for k, v in s.items()}

    return step_fn


def draw(strategy, n):
    """``n`` examples of ``strategy``, the same on every run (no shrinking, no database)."""
    from hypothesis import Phase, given, settings

    out = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate])
    @given(strategy)
    def collect(example):
        out.append(example)

    collect()
    return out


@pytest.mark.parametrize("preset", spec.presets())
def test_drawn_cases_pass_a_more_accurate_implementation(preset):
    """The bound follows from the arithmetic, so an implementation that rounds differently (here:
    less) passes on every drawn case, the hard ones included."""
    testing.check_random(more_accurate(preset), preset, max_examples=12)


def test_drawn_cases_reach_the_hard_cases():
    cases = draw(testing.drawn_cases("adamw-sage"), 40)
    assert {"huge", "tiny", "zeros", "mixed", "normal"} <= {k for d in cases for k in d.kinds}
    assert {d.case.dtype.name for d in cases} == {"float32", "float64"}
    assert any(d.case.hparams["max_grad_norm"] <= 0 for d in cases)
    assert any(d.case.hparams["max_grad_norm"] > 0 for d in cases)
    assert all(d.case.param.ravel()[0] == 0.0 for d in cases if d.case.param.size)
    internal = [d for d in cases if d.case.hparams["t_total"] > 0]
    assert internal and all(s.lr is None for d in internal for s in d.case.steps)
    passed = [s for d in cases for s in d.case.steps if s.lr is not None]
    assert passed and all(s.scheduled_lr == s.lr for s in passed)
    assert any(d.case.shape == () for d in cases) and any(d.case.param.size == 0 for d in cases)


def test_drawn_cases_catch_small_bugs_and_show_the_case():
    def beta3_off(param, grad, state, lr, hparams):  # a SAGE EMA with beta3 off by 1e-3
        hp = {**hparams, "beta3": hparams["beta3"] * (1 - 1e-3)}
        return spec.make("adam-sage", **hp).step(param, grad, state, lr=lr)

    def one_part_in_1e9(param, grad, state, lr, hparams):  # 1e-9 relative: fails in float64
        new, st, _ = spec.make("bert-adamax", **hparams).step(param, grad, state, lr=lr)
        return new + 1e-9 * np.abs(new), st

    for preset, wrong in [("adam-sage", beta3_off), ("bert-adamax", one_part_in_1e9)]:
        failures = []
        for drawn in draw(testing.drawn_cases(preset), 20):
            try:
                testing.check_drawn(wrong, drawn)
            except AssertionError as err:
                failures.append(str(err))
        assert len(failures) >= 3, preset
    message = failures[0]
    assert "drawn case (minisage.testing.drawn_cases):" in message
    assert "hparams {'lr':" in message and "param = [" in message and "grad = [" in message
    assert "* S +" in message

    def stale_step_count(param, grad, state, lr, hparams):
        new, st, _ = spec.make("adamw", **hparams).step(param, grad, state, lr=lr)
        return new, {**st, "step": state["step"]}

    with pytest.raises(AssertionError, match=r"state\['step'\] = 0, expected 1"):
        testing.check_drawn(stale_step_count, draw(testing.drawn_cases("adamw"), 1)[0])


def test_error_room_follows_the_unit_roundoff():
    k64, floor64 = testing.error_room("float64", 10)
    k32, _ = testing.error_room(np.float32, 10)
    assert k64 == 2 * (testing.STEP_ROUNDINGS + 10) * 2.0**-53
    assert k32 == 2 * (testing.STEP_ROUNDINGS + 10) * 2.0**-24
    assert floor64 == k64 * np.finfo(np.float64).tiny
    with pytest.raises(ValueError, match="dtypes must be among float64, float32"):
        testing.drawn_cases("adam", dtypes=["float16"])
