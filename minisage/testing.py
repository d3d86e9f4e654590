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

Beyond the fixed vectors: drawn cases
-------------------------------------
With hypothesis installed, :func:`check_random` draws cases the golden files do not hold --
every hyperparameter over its range, shapes (0-d and empty included), float64 and float32,
gradient streams with all-zero, tiny, huge and mixed steps, schedules passed as ``lr`` or the
official in-optimizer one -- and checks the same step function against the spec::

    testing.check_random(my_step, "adamw-sage")              # or, per case:
    @given(testing.drawn_cases("adamw-sage"))
    def test_mine(drawn):
        testing.check_drawn(my_step, drawn)

Each step starts from the spec's state. The tolerance is derived per entry from the arithmetic
(:func:`check_drawn`, :func:`error_room`): a few dozen unit roundoffs of the sum of the magnitudes
of the terms the entry is made of, so cancellations are judged fairly. A failure is shrunk by
hypothesis and reported with every number of the drawn case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from minisage import spec
from minisage.golden import GoldenCase, GoldenStep
from minisage.golden import cases as _cases
from minisage.spec.schedules import OFFICIAL_SCHEDULES

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


def _compare(what: str, got: Any, expected: np.ndarray, allowed: np.ndarray, rule: str,
             check_dtype: bool, where: str) -> None:
    """AssertionError unless ``|got - expected| <= allowed`` entrywise; ``rule`` says in words
    how ``allowed`` was made (``"atol 1e-13 + rtol 1e-10 * |expected|"``)."""
    a = np.asarray(got)
    if a.shape != expected.shape:
        raise AssertionError(f"{where}: {what} has shape {a.shape}, expected {expected.shape}")
    if check_dtype and a.dtype != expected.dtype:
        raise AssertionError(f"{where}: {what} has dtype {a.dtype}, expected {expected.dtype}")
    a64 = a.astype(np.float64)
    e64 = expected.astype(np.float64)
    err = np.abs(a64 - e64)
    allowed = np.broadcast_to(np.asarray(allowed, dtype=np.float64), e64.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(err), err / allowed, np.inf)
    ratio = np.where(err == 0, 0.0, ratio)  # 0 / 0 (an exact entry with no room) passes
    if ratio.size == 0 or np.max(ratio) <= 1:
        return
    k = int(np.argmax(ratio))
    idx = [int(i) for i in np.unravel_index(k, a.shape)] if a.ndim else ""
    bad = int(np.count_nonzero(~(ratio <= 1)))
    raise AssertionError(
        f"{where}: {what}{idx} = {float(a64.ravel()[k])!r}, expected "
        f"{float(e64.ravel()[k])!r} (|diff| {float(err.ravel()[k]):.3g} > {rule} = "
        f"{float(allowed.ravel()[k]):.3g}); {bad} of {a.size} entries out of tolerance")


#: ``bound(step_index, key, expected) -> (allowed, rule)``: the room an entry has ("param" or a
#: state key), and how it was made, in words
_Bound = Callable[[int, str, np.ndarray], "tuple[np.ndarray, str]"]


def _relative_bound(rtol: float, atol: float) -> _Bound:
    def bound(j, key, expected):
        allowed = atol + rtol * np.abs(expected.astype(np.float64))
        return allowed, f"atol {atol:g} + rtol {rtol:g} * |expected|"
    return bound


def _run_case(step_fn: StepFn, case: GoldenCase, bound: _Bound, *, chain: bool,
              check_state: bool, check_dtype: bool) -> None:
    """Run ``case`` through ``step_fn`` step by step; AssertionError at the first entry out of
    ``bound``."""
    hparams = dict(case.hparams)
    param = np.array(case.param, copy=True)
    state = _copy_state(case.initial_state())
    n = len(case.steps)
    for j, step in enumerate(case.steps):
        where = f"golden case {case.id!r}, step {j + 1} of {n}"
        result = step_fn(np.array(param, copy=True), np.array(step.grad, copy=True),
                         _copy_state(state), step.lr, dict(hparams))
        got_param, got_state = _split(result)
        _compare("param", got_param, step.param, *bound(j, "param", step.param), check_dtype,
                 where)
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
                _compare(f"state[{key!r}]", got_state[key], expected,
                         *bound(j, key, expected), check_dtype, where)
        if chain and got_state is not None:
            param = np.array(got_param, copy=True)
            state = _copy_state(got_state)
        else:
            param = np.array(step.param, copy=True)
            state = _copy_state(step.state)


def check_case(step_fn: StepFn, case: GoldenCase, *, rtol: float | None = None,
               atol: float | None = None, chain: bool = False, check_state: bool = True,
               check_dtype: bool = True) -> None:
    """Run one golden case through ``step_fn``; AssertionError at the first mismatch.

    The message names the case, the step (1-based), the array (``param`` or ``state['key']``),
    the worst entry, both values and the tolerance.
    """
    rtol, atol = tolerances(case.dtype, rtol, atol)
    _run_case(step_fn, case, _relative_bound(rtol, atol), chain=chain, check_state=check_state,
              check_dtype=check_dtype)


#: unit roundoff of the half-precision parameter dtypes :func:`check_case_half` knows (NumPy has
#: no bfloat16: they are names here, and the arrays travel as float32)
HALF_UNIT_ROUNDOFF: dict[str, float] = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
#: the bound of :func:`check_case_half`, in units of the unit roundoff u
HALF_ROOM = 4.0


def half_bound(param_dtype: str) -> _Bound:
    """The bound of a float32 golden case run with ``param_dtype`` parameters:
    ``|got - expected| <= HALF_ROOM * u * (|expected| + max |expected|)``, ``u`` the dtype's unit
    roundoff, the max over the array (param or state) of that step.

    Why: the backend rounds the parameter and the gradient to ``param_dtype`` (relative error
    ``u`` each), computes the step (in float32, whose rounding is negligible next to ``u``) and
    rounds the new parameter (``u |p_new|``). The rounded ``p`` is carried into ``p_new`` (``u
    |p|``, and ``|p| <= |p_new| + |update|``); the rounded ``g`` moves each average by at most
    ``u`` times its new term (``(1 - beta) |g|``, ``(1 - beta) g g``: at most 2u of the average,
    or of the previous one where the new one cancels), SAGE's ``I = |p g|`` by 2u, and the
    update by a few ``u`` of itself (``m / sqrt(v)`` is invariant to the scale of ``g``; ``r``
    moves by ``2u (r + 2)``). Updates of the golden cases are smaller than the parameters, so
    every term is within a few ``u`` of ``|expected| + max |expected|``: measured, at most
    1.2u for every torch implementation and preset; 4u leaves room for another backend's order.
    """
    try:
        u = HALF_UNIT_ROUNDOFF[param_dtype]
    except KeyError:
        raise ValueError(f"param_dtype must be one of {', '.join(HALF_UNIT_ROUNDOFF)}, "
                         f"got {param_dtype!r}") from None
    k = HALF_ROOM * u

    def bound(j, key, expected):
        e = np.abs(expected.astype(np.float64))
        scale = float(np.max(e)) if e.size else 0.0
        return k * (e + scale), f"{HALF_ROOM:g} u * (|expected| + max |expected|), u = {u:g}"

    return bound


def check_case_half(step_fn: StepFn, case: GoldenCase, param_dtype: str, *,
                    chain: bool = False, check_state: bool = True) -> None:
    """Run a float32 golden case through a step function whose parameters are ``param_dtype``
    (``"bfloat16"`` or ``"float16"``): it receives the float32 inputs, rounds the parameter and
    the gradient itself, and returns float32 arrays. AssertionError, as :func:`check_case`, at
    the first entry out of :func:`half_bound`."""
    if case.dtype != np.float32:
        raise ValueError(f"check_case_half runs float32 golden cases, got {case.id!r} "
                         f"({case.dtype})")
    _run_case(step_fn, case, half_bound(param_dtype), chain=chain, check_state=check_state,
              check_dtype=True)


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


# -- beyond the fixed vectors: drawn cases ------------------------------------------------------

#: the roundings on the longest path of one step of any rule (the constants such as
#: ``1 - beta2**t`` included), before the gradient norm's one rounding per entry
STEP_ROUNDINGS = 24
#: magnitudes of the drawn gradients and parameters, by dtype: "tiny" and "huge" stay far enough
#: from underflow and overflow that every quantity of a step (g * g, |p * g|, eps**2) is normal
MAGNITUDES = {"float64": {"tiny": 1e-30, "huge": 1e12}, "float32": {"tiny": 1e-12, "huge": 1e8}}
GRAD_KINDS = ("normal", "zeros", "tiny", "huge", "mixed")
DRAWN_DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class DrawnCase:
    """A drawn case: inputs, the spec's trajectory, and the error bound of every entry.

    ``case`` is a :class:`~minisage.golden.GoldenCase` (the spec's result after each step, from
    the spec's state before it); ``scales[j][key]`` is the scale ``S`` of the bound on the
    parameter (``key="param"``) and on each state array after step ``j``; ``kinds[j]`` is the
    kind of step ``j``'s gradient. :func:`check_drawn` explains the bound. ``str()`` gives every
    number needed to rebuild the case by hand.
    """

    case: GoldenCase
    scales: tuple[dict[str, np.ndarray], ...]
    kinds: tuple[str, ...]

    def __str__(self) -> str:
        c = self.case
        lines = [f"{c.id}: {c.dtype.name} {c.shape}, hparams {dict(c.hparams)!r}",
                 f"  param = {_listing(c.param)}"]
        for j, (step, kind) in enumerate(zip(c.steps, self.kinds)):
            lines.append(f"  step {j + 1}: {kind} gradient, lr {step.lr!r} (scheduled lr "
                         f"{step.scheduled_lr!r}), grad = {_listing(step.grad)}")
        return "\n".join(lines)

    __repr__ = __str__


def _listing(a: np.ndarray) -> str:
    return repr([float(x) for x in np.asarray(a).ravel()])


def error_room(dtype, size: int) -> tuple[float, float]:
    """``(k, floor)`` of the bound ``|got - expected| <= k * S + floor`` of a drawn case.

    One step of a rule is a chain of at most ``c = STEP_ROUNDINGS + size`` roundings (``size``
    of them in the gradient's norm, a sum of squares, for the clipping rules), each with relative
    error at most the unit roundoff ``u = eps / 2`` of ``dtype``. Standard error analysis then
    bounds the error of every result by ``c * u * S``, where ``S`` is the sum of the magnitudes
    of the terms it is made of (see :func:`check_drawn`); two correct implementations (the spec
    and the backend) differ by at most twice that: ``k = 2 * c * u``. ``floor = k * tiny`` (the
    smallest normal number) covers results in the subnormal range, where rounding is absolute.
    """
    info = np.finfo(np.dtype(dtype))
    k = 2.0 * (STEP_ROUNDINGS + size) * float(info.eps) / 2
    return k, k * float(info.tiny)


def _abs_inputs(param, grad, state, hparams):
    """The step's inputs with every term made positive: |p|, |g| (-|g| under ``maximize``, which
    negates it), |state|. A step on these has no cancellation, so its results are the sums of
    the magnitudes of the terms of the real step's."""
    g = np.abs(grad)
    if hparams.get("maximize"):
        g = -g
    st = {k: (v if k == "step" else np.abs(v)) for k, v in state.items()}
    return np.abs(param), g, st


def _plain_preset(preset: str) -> str:
    """The preset a SAGE preset is built on (its update with ``r = 1``); a plain preset itself."""
    from minisage.optim import optimizer_class

    return optimizer_class(preset).plain_preset


def _drawn_steps(preset: str, hparams: dict, param: np.ndarray, grads, lrs):
    """The spec's trajectory (from its own state at each step) and the scales of the bound."""
    rule = spec.make(preset, **hparams)
    plain_name = _plain_preset(preset)
    plain = spec.make(plain_name, **{k: v for k, v in hparams.items()
                                     if k in spec.defaults(plain_name)})
    p, state = param, rule.init(param)
    steps, scales = [], []
    for g, lr in zip(grads, lrs):
        new_p, new_state, trace = rule.step(p, g, state, lr=lr)
        # S(state[key]) = |before| + |after| + |after, from the all-positive inputs|
        ap, ag, ast = _abs_inputs(p, g, state, hparams)
        abs_p, abs_state, _ = rule.step(ap, ag, ast, lr=lr, trace=False)
        scale = {key: np.abs(state[key]) + np.abs(new_state[key]) + np.abs(abs_state[key])
                 for key in rule.array_keys}
        # S(param) = |p| + |p_new| + |update from positive inputs| + |the plain rule's|: for a
        # SAGE rule, r = |I - Ihat| / (Ihat + eps) comes from a difference whose rounding,
        # u (I + Ihat) / (Ihat + eps) <= u (r + 2), multiplies the plain rule's step
        plain_state = {k: v for k, v in ast.items() if k == "step" or k in plain.array_keys}
        plain_p = plain.step(ap, ag, plain_state, lr=lr, trace=False)[0]
        scale["param"] = (np.abs(p) + np.abs(new_p) + np.abs(abs_p - ap)
                          + np.abs(plain_p - ap))
        steps.append(GoldenStep(grad=g, lr=lr, scheduled_lr=float(trace["lr"]), param=new_p,
                                state=new_state))
        scales.append(scale)
        p, state = new_p, new_state
    return tuple(steps), tuple(scales)


def drawn_cases(preset: str, *, dtypes: Iterable[str] = DRAWN_DTYPES, max_steps: int = 4,
                max_size: int = 12):
    """A hypothesis strategy of :class:`DrawnCase` for ``preset`` (needs ``hypothesis``).

    Drawn: the dtype (of ``dtypes``), a shape of at most ``max_size`` entries (0-d and empty
    included), every hyperparameter of the preset over its useful range (zero weight decay, no
    clipping, ``correct_bias`` off, ``maximize``, ``nesterov``, an official in-optimizer
    schedule included), a parameter with exact zeros and entries of very different sizes, and
    ``1..max_steps`` steps, each with a gradient of a drawn kind (``GRAD_KINDS``: normal, all
    zeros, tiny, huge, mixed magnitudes with zeros) and an lr: None (the rule's own) or a drawn
    schedule passed as ``lr``. Values come from a NumPy generator seeded by a drawn integer.
    """
    try:
        from hypothesis import strategies as st
    except ImportError as err:  # pragma: no cover - hypothesis is in the test extra
        raise ImportError("minisage.testing.drawn_cases needs hypothesis "
                          "(pip install 'minisage[test]')") from err
    names = spec.defaults(preset)  # ValueError for an unknown preset
    dtypes = tuple(np.dtype(d).name for d in dtypes)
    for d in dtypes:
        if d not in MAGNITUDES:
            raise ValueError(f"dtypes must be among {', '.join(MAGNITUDES)}, got {d!r}")

    shapes = st.sampled_from([s for s in _SHAPES if math.prod(s) <= max_size])
    hparams_and_schedule = _hparams(st, names)
    kinds = st.sampled_from(GRAD_KINDS)
    multipliers = st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(1e-3, 1.0)

    @st.composite
    def strategy(draw):
        dtype = np.dtype(draw(st.sampled_from(dtypes)))
        shape = draw(shapes)
        n_steps = draw(st.integers(1, max_steps))
        drawn, internal_schedule = draw(hparams_and_schedule)
        if internal_schedule:  # t_total >= the steps: warmup_linear turns negative after it
            drawn["t_total"] *= n_steps
        hparams = dict(spec.make(preset, **drawn).hparams)  # every one, resolved
        step_kinds = tuple(draw(kinds) for _ in range(n_steps))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        mags = MAGNITUDES[dtype.name]
        param = _values(rng, "mixed" if draw(st.booleans()) else "normal", shape, dtype, mags)
        if param.size:
            param.ravel()[0] = 0.0  # an exact zero: its sensitivity is 0 whatever the gradient
        grads = [_values(rng, kind, shape, dtype, mags) for kind in step_kinds]
        if internal_schedule or not draw(st.booleans()):
            lrs = [None] * n_steps
        else:  # a schedule passed as lr: multipliers 0 or in [1e-3, 1]
            lrs = [hparams["lr"] * draw(multipliers) for _ in range(n_steps)]
        steps, scales = _drawn_steps(preset, hparams, param, grads, lrs)
        case = GoldenCase(id=f"{preset}/drawn-{dtype.name}-{n_steps}steps", preset=preset,
                          description="drawn by minisage.testing.drawn_cases", dtype=dtype,
                          shape=shape, hparams=hparams, param=param, steps=steps,
                          source="hypothesis")
        return DrawnCase(case, scales, step_kinds)

    return strategy()


_SHAPES = [(), (0,), (1,), (3,), (2, 3), (4, 3), (2, 1, 3), (12,)]


def _values(rng, kind: str, shape, dtype, mags) -> np.ndarray:
    """An array of one of the GRAD_KINDS, in ``dtype``."""
    if kind == "zeros":
        return np.zeros(shape, dtype)
    x = rng.standard_normal(shape)
    if kind == "tiny":
        x = x * mags["tiny"]
    elif kind == "huge":
        x = x * mags["huge"]
    elif kind == "mixed":  # each entry: 0, tiny, order 1 or huge
        scale = rng.choice([0.0, mags["tiny"], 1.0, mags["huge"]], size=shape)
        x = x * scale
    return np.asarray(x, dtype=dtype)


def _hparams(st, names: Mapping[str, Any]):
    """Every hyperparameter in ``names`` (a preset's defaults), drawn; and whether the official
    in-optimizer schedule is on (then the lr of each step must be None, and ``t_total`` is a
    factor in 1..4 of the number of steps)."""
    unit = st.floats(0.0, 1.0)
    draws: dict[str, Any] = {
        "lr": st.sampled_from([1e-3, 1e-2, 0.1]) | st.floats(1e-5, 0.3),
        # beta1, beta3 >= 0.5: below it an average written as torch writes its first moment,
        # m + (1 - beta1) (g - m) (a lerp, one fused pass), rounds in proportion to the previous
        # average rather than to the new one; a backend may use that form for any average
        "betas": st.tuples(st.sampled_from([0.5, 0.9]) | st.floats(0.5, 0.99),
                           st.sampled_from([0.999]) | st.floats(0.5, 0.9999)),
        "beta3": st.sampled_from([0.5, 0.75]) | st.floats(0.5, 0.99),
        "eps": st.sampled_from([1e-8, 1e-6]) | st.floats(1e-10, 1e-4),
        "sage_eps": st.sampled_from([1e-12]) | st.floats(1e-14, 1e-6),
        "weight_decay": st.sampled_from([0.0, 0.01]) | st.floats(0.0, 0.3),
        "correct_bias": st.booleans(),
        "max_grad_norm": st.sampled_from([-1.0, 1.0]) | st.floats(0.05, 10.0),
        "maximize": st.booleans(),
        "momentum": st.sampled_from([0.0, 0.9]) | unit.map(lambda x: 0.99 * x),
        "dampening": st.sampled_from([0.0]) | unit.map(lambda x: 0.5 * x),
    }

    draws = {k: v for k, v in draws.items() if k in names}
    nesterov_momentum = st.floats(0.1, 0.99)
    t_total_factor = st.integers(1, 4)
    warmup = st.sampled_from([-1, 0.1]) | st.floats(0.0, 0.9)
    schedule = st.sampled_from(sorted(OFFICIAL_SCHEDULES))

    @st.composite
    def strategy(draw):
        hp = {k: draw(v) for k, v in draws.items()}
        if "nesterov" in names:  # torch's rule: momentum > 0 and no dampening
            hp["nesterov"] = draw(st.booleans())
            if hp["nesterov"]:
                hp["momentum"], hp["dampening"] = draw(nesterov_momentum), 0.0
        internal = "t_total" in names and draw(st.booleans())
        if internal:
            hp["t_total"] = draw(t_total_factor)
            hp["warmup"] = draw(warmup)
            hp["schedule"] = draw(schedule)
        return hp, internal

    return strategy()


def check_drawn(step_fn: StepFn, drawn: DrawnCase, *, check_state: bool = True,
                check_dtype: bool = True) -> None:
    """Run one drawn case through ``step_fn`` (each step from the spec's state before it, as
    :func:`check_case` does by default); AssertionError at the first entry out of its bound, with
    the whole drawn case in the message.

    The bound of an entry is ``|got - expected| <= k * S + floor`` (:func:`error_room` gives
    ``k`` and ``floor`` from the dtype's unit roundoff and the number of roundings). ``S`` is the
    sum of the magnitudes of the terms that make the entry: for a state array, its value before
    and after the step and its value after a step on all-positive inputs (``|p|``, ``|g|``,
    ``|state|``: no cancellation, so every term adds); for the parameter, the same plus the step
    of the plain rule the SAGE rule is built on (SAGE's multiplier is a relative difference, whose
    rounding multiplies that step). Hard cases stay fair: a cancellation (``m`` near zero,
    ``|I - Ihat|`` near zero) is measured against the terms that cancelled.
    """
    k, floor = error_room(drawn.case.dtype, max(drawn.case.param.size, 1))

    def bound(j, key, expected):
        scale = drawn.scales[j][key]
        return k * scale + floor, f"{k:.3g} * S + {floor:.3g}"

    try:
        _run_case(step_fn, drawn.case, bound, chain=False, check_state=check_state,
                  check_dtype=check_dtype)
    except AssertionError as err:
        raise AssertionError(f"{err}\ndrawn case (minisage.testing.drawn_cases):\n{drawn}") \
            from None


def check_random(step_fn: StepFn, preset: str, *, max_examples: int | None = None,
                 dtypes: Iterable[str] = DRAWN_DTYPES, max_steps: int = 4, max_size: int = 12,
                 check_state: bool = True, check_dtype: bool = True) -> None:
    """Check ``step_fn`` against the spec on cases hypothesis draws (:func:`drawn_cases`).

    ``step_fn`` has :func:`check_case`'s signature. ``max_examples`` (default: the loaded
    hypothesis profile's) cases are drawn; the first failure is shrunk and reported with the
    whole case (:func:`check_drawn`). The current hypothesis settings profile applies otherwise
    (e.g. ``derandomize`` in CI); the deadline is off (a backend's first call may compile) and
    no example database is kept.
    """
    from hypothesis import given, settings

    # no example database: one inner function serves every preset and backend, so saved
    # examples would be replayed against the wrong strategy; a failure prints the whole case
    options = {"deadline": None, "database": None}
    if max_examples is not None:
        options["max_examples"] = max_examples

    @settings(**options)
    @given(drawn_cases(preset, dtypes=dtypes, max_steps=max_steps, max_size=max_size))
    def run(drawn):
        check_drawn(step_fn, drawn, check_state=check_state, check_dtype=check_dtype)

    run()


def spec_step_fn(preset: str) -> StepFn:
    """The spec's own rule as a step function (the reference passes its own golden cases)."""

    def step_fn(param, grad, state, lr, hparams):
        return spec.make(preset, **hparams).step(param, grad, state, lr=lr)

    return step_fn


__all__ = ["check_rule", "check_case", "golden_cases", "tolerances", "DEFAULT_TOLERANCES",
           "spec_step_fn", "drawn_cases", "check_drawn", "check_random", "DrawnCase",
           "error_room", "check_case_half", "half_bound", "HALF_UNIT_ROUNDOFF", "HALF_ROOM"]
