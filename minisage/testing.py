"""Check another implementation of an optimizer rule against the spec's golden vectors.

For a backend's test suite (PyTorch, JAX, a GPU kernel)::

    import numpy as np, pytest
    from minisage import testing

    def my_step(param, grad, state, lr, hparams):       # NumPy in, NumPy out
        ...                                              # one step of *your* optimizer
        return new_param, new_state                      # or just new_param

    @pytest.mark.parametrize("case", testing.golden_cases("adamw-sage"), ids=str)
    def test_my_adamw_sage(case):
        testing.check_case(my_step, case)

    # or all cases of a preset at once:
    testing.check_rule(my_step, "adamw-sage")

The step function
-----------------
``step_fn(param, grad, state, lr, hparams)`` is called once per golden step with

- ``param``: the parameter before the step (a fresh, writable ndarray of the case's dtype);
- ``grad``: the gradient of this step (fresh ndarray, same shape and dtype);
- ``state``: the state before the step in the spec's format -- ``{"step": int, name: ndarray}``
  with torch's names (``exp_avg``, ``exp_avg_sq``, ``exp_inf``, ``momentum_buffer``) and
  ``sensitivity_ema`` for SAGE (fresh copies: mutate them if you like). By default it is the
  *golden* state after the previous step (so every step is checked on exact inputs, and a
  stateless backend only needs to convert); with ``chain=True`` it is what your function returned
  at the previous step (your own state carried along, as in training);
- ``lr``: this step's scheduled lr as a float, or ``None`` meaning "use the rule's own": the base
  ``hparams["lr"]``, or for the official presets made with ``t_total != -1`` their internal
  ``warmup_linear``-style schedule (:func:`minisage.spec.official_lr` computes it);
- ``hparams``: every hyperparameter of the preset, resolved (``spec.defaults(preset)`` lists
  them), ``betas`` as a tuple.

It returns the new parameter, or ``(param, state)``, or ``(param, state, anything)`` -- so the
spec's own ``rule.step`` fits. Return ``state=None`` to skip the state comparison. Extra state keys
are ignored; the expected ones must be there.

Tolerances
----------
An entry passes when ``|got - expected| <= atol + rtol * |expected|``. Defaults, from the
arithmetic (a backend that reorders or fuses operations differs by a few units in the last place
per step): float64 ``rtol=1e-10, atol=1e-13``; float32 ``rtol=2e-5, atol=1e-7``. The dtype of
what you return must match the case's (``check_dtype=False`` to relax).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from minisage.golden import GoldenCase
from minisage.golden import cases as _cases

#: dtype name -> (rtol, atol)
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-13),
    "float32": (2e-5, 1e-7),
}

StepFn = Callable[[np.ndarray, np.ndarray, dict, "float | None", dict], Any]


def golden_cases(preset: str, dtype: str | None = None) -> list[GoldenCase]:
    """The committed golden cases of ``preset`` (and ``dtype``), for ``pytest.mark.parametrize``.

    Each case has an ``id`` such as ``"adamw-sage/f64-3steps-zero-grad"``; ``str(case)`` is the id,
    so ``ids=str`` names the tests.
    """
    return _cases(preset, dtype)


def tolerances(dtype, rtol: float | None = None, atol: float | None = None) -> tuple[float, float]:
    """``(rtol, atol)`` for ``dtype``: the defaults of DEFAULT_TOLERANCES unless given."""
    d_rtol, d_atol = DEFAULT_TOLERANCES[np.dtype(dtype).name]
    return (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol)


def _copy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (int(v) if k == "step" else np.array(v, copy=True)) for k, v in state.items()}


def _split(result: Any) -> tuple[Any, Any]:
    if isinstance(result, tuple):
        if len(result) in (2, 3):
            return result[0], result[1]
        raise AssertionError(f"step_fn returned a tuple of {len(result)} items; expected param, "
                             "(param, state) or (param, state, trace)")
    return result, None


def _compare(what: str, got: Any, expected: np.ndarray, rtol: float, atol: float,
             check_dtype: bool, where: str) -> None:
    a = np.asarray(got)
    if a.shape != expected.shape:
        raise AssertionError(f"{where}: {what} has shape {a.shape}, expected {expected.shape}")
    if check_dtype and a.dtype != expected.dtype:
        raise AssertionError(f"{where}: {what} has dtype {a.dtype}, expected {expected.dtype}")
    a64 = a.astype(np.float64)
    e64 = expected.astype(np.float64)
    err = np.abs(a64 - e64)
    allowed = atol + rtol * np.abs(e64)
    ratio = np.where(np.isfinite(err), err / allowed, np.inf)
    if ratio.size == 0 or np.max(ratio) <= 1:
        return
    k = int(np.argmax(ratio))
    idx = [int(i) for i in np.unravel_index(k, a.shape)] if a.ndim else ""
    bad = int(np.count_nonzero(~(ratio <= 1)))
    raise AssertionError(
        f"{where}: {what}{idx} = {float(a64.ravel()[k])!r}, expected "
        f"{float(e64.ravel()[k])!r} (|diff| {float(err.ravel()[k]):.3g} > atol {atol:g} + "
        f"rtol {rtol:g} * |expected| = {float(allowed.ravel()[k]):.3g}); {bad} of {a.size} "
        "entries out of tolerance")


def check_case(step_fn: StepFn, case: GoldenCase, *, rtol: float | None = None,
               atol: float | None = None, chain: bool = False, check_state: bool = True,
               check_dtype: bool = True) -> None:
    """Run one golden case through ``step_fn``; AssertionError at the first mismatch.

    The message names the case, the step (1-based), the array (``param`` or ``state['key']``),
    the worst entry, both values and the tolerance.
    """
    rtol, atol = tolerances(case.dtype, rtol, atol)
    hparams = dict(case.hparams)
    param = np.array(case.param, copy=True)
    state = _copy_state(case.initial_state())
    n = len(case.steps)
    for j, step in enumerate(case.steps):
        where = f"golden case {case.id!r}, step {j + 1} of {n}"
        result = step_fn(np.array(param, copy=True), np.array(step.grad, copy=True),
                         _copy_state(state), step.lr, dict(hparams))
        got_param, got_state = _split(result)
        _compare("param", got_param, step.param, rtol, atol, check_dtype, where)
        if check_state and got_state is not None:
            if not isinstance(got_state, Mapping):
                raise AssertionError(f"{where}: step_fn returned a state of type "
                                     f"{type(got_state).__name__}, expected a mapping")
            for key, expected in step.state.items():
                if key not in got_state:
                    raise AssertionError(f"{where}: the returned state has no {key!r} "
                                         f"(expected keys {sorted(step.state)})")
                if key == "step":
                    if float(np.asarray(got_state[key])) != expected:
                        raise AssertionError(f"{where}: state['step'] = {got_state[key]!r}, "
                                             f"expected {expected}")
                    continue
                _compare(f"state[{key!r}]", got_state[key], expected, rtol, atol,
                         check_dtype, where)
        if chain and got_state is not None:
            param = np.array(got_param, copy=True)
            state = _copy_state(got_state)
        else:
            param = np.array(step.param, copy=True)
            state = _copy_state(step.state)


def check_rule(step_fn: StepFn, preset: str, *, dtype: str | None = None,
               rtol: float | None = None, atol: float | None = None, chain: bool = False,
               check_state: bool = True, check_dtype: bool = True,
               cases: Iterable[GoldenCase] | None = None) -> list[str]:
    """Run every golden case of ``preset`` (of ``dtype``, if given) through ``step_fn``.

    Raises AssertionError at the first mismatch (see :func:`check_case`); returns the ids of the
    cases checked. ``cases`` replaces the committed cases (e.g. ``golden.load(path)``).
    """
    selected = list(golden_cases(preset, dtype) if cases is None else cases)
    if not selected:
        raise AssertionError(f"no golden cases for preset {preset!r} (dtype {dtype!r})")
    for case in selected:
        if case.preset != preset:
            raise AssertionError(f"case {case.id!r} is for preset {case.preset!r}, not {preset!r}")
        check_case(step_fn, case, rtol=rtol, atol=atol, chain=chain, check_state=check_state,
                   check_dtype=check_dtype)
    return [c.id for c in selected]


def spec_step_fn(preset: str) -> StepFn:
    """The spec's own rule as a step function (the reference passes its own golden cases)."""
    from minisage import spec

    def step_fn(param, grad, state, lr, hparams):
        return spec.make(preset, **hparams).step(param, grad, state, lr=lr)

    return step_fn


__all__ = ["check_rule", "check_case", "golden_cases", "tolerances", "DEFAULT_TOLERANCES",
           "spec_step_fn"]
