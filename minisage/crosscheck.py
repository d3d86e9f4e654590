"""``minisage crosscheck``: run every golden case of the spec through another backend.

::

    minisage crosscheck --backend torch [--dtype float32|float64|bfloat16] [--device cpu|cuda]
                        [--chain] [--preset PRESET ...]
    minisage crosscheck --backend jax   [--dtype float32|float64|bfloat16] [--device cpu|cuda]

For each implementation the backend offers (e.g. ``AdamWSAGE`` for preset ``adamw-sage``,
``AdamWSAGE(sage=False)`` for ``bert-adamw``, ``torch.optim.AdamW`` for ``adamw``) it runs the
committed golden cases of that preset with :func:`minisage.testing.check_case` and prints one row:
implementation, preset, dtype, number of cases, the worst relative error over every entry of the
parameter and the state at every step, the tolerance, and ok. The relative error of an entry is
``|got - expected| / (|expected| + atol/rtol)``, so an entry passes exactly when it is ``<= rtol``
(``|got - expected| <= atol + rtol |expected|``, the rule of ``minisage.testing``). The exit
status is 1 if any case fails (its first mismatch is printed under the table).

``--dtype bfloat16`` runs the float32 golden cases with bfloat16 parameters (and gradients) and
compares with the float32 results to a tolerance derived from bfloat16's unit roundoff
(:func:`minisage.testing.half_bound`); by default both float64 and float32 run.

By default each step starts from the *golden* state of the previous step; ``--chain`` carries the
backend's own state along instead, as in training. The torch and jax imports happen inside
:func:`backend_functions`; the jax backend turns on ``jax_enable_x64`` first (needed for float64;
float32 arrays stay float32).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from minisage import testing
from minisage.errors import UsageError

BACKENDS = ("torch", "jax")
DTYPES = ("float64", "float32")
#: half-precision modes: the float32 golden cases run with parameters of this dtype (the step
#: functions are built for it), checked by :func:`minisage.testing.check_case_half`
HALF_DTYPES = ("bfloat16",)


@dataclass
class Row:
    """One line of the crosscheck table."""

    implementation: str
    preset: str
    dtype: str
    cases: int
    worst: float
    rtol: float
    atol: float
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def _worst(got, expected: np.ndarray, rtol: float, atol: float, half: bool = False) -> float:
    """The largest ``|got - expected| / (|expected| + atol / rtol)``; for a half-precision mode
    ``|got - expected| / (|expected| + max |expected|)`` (:func:`testing.half_bound`)."""
    a = np.asarray(got, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape or a.size == 0:
        return float("inf") if a.shape != e.shape else 0.0
    floor = np.max(np.abs(e)) if half else atol / rtol
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(a - e) / (np.abs(e) + floor)
    err = np.where(a == e, 0.0, err)
    return float(np.max(np.where(np.isfinite(err), err, np.inf)))


def check_implementation(implementation: str, preset: str, step_fn: Callable, dtype: str, *,
                         chain: bool = False) -> Row:
    """Run every golden case of ``preset`` in ``dtype`` through ``step_fn``; one table row.

    ``minisage.testing.check_case`` decides pass or fail; the worst relative error is measured
    on what ``step_fn`` returned (param and state) against the golden values of each step. For a
    half-precision ``dtype`` (HALF_DTYPES), ``step_fn`` must be built for it: the float32 cases
    run through it and :func:`minisage.testing.check_case_half` decides, with the tolerance
    ``HALF_ROOM * u`` of the dtype's unit roundoff ``u`` (the derivation is in
    :func:`minisage.testing.half_bound`).
    """
    half = dtype in HALF_DTYPES
    cases = testing.golden_cases(preset, "float32" if half else dtype)
    if half:
        rtol, atol = testing.HALF_ROOM * testing.HALF_UNIT_ROUNDOFF[dtype], 0.0
    else:
        rtol, atol = testing.tolerances(dtype)
    worst = 0.0
    failure = None
    for case in cases:
        outputs: list = []

        def recording(param, grad, state, lr, hparams, _out=outputs):
            result = step_fn(param, grad, state, lr, hparams)
            _out.append(result)
            return result

        try:
            if half:
                testing.check_case_half(recording, case, dtype, chain=chain)
            else:
                testing.check_case(recording, case, chain=chain)
        except AssertionError as err:
            failure = failure or str(err)
        except Exception as err:  # a crash in the backend is a failure of this row, not the run
            failure = failure or f"golden case {case.id!r}: {type(err).__name__}: {err}"
        for result, step in zip(outputs, case.steps):
            got_param, got_state = (result[0], result[1]) if isinstance(result, tuple) else (
                result, None)
            worst = max(worst, _worst(got_param, step.param, rtol, atol, half))
            if isinstance(got_state, dict):
                for key, expected in step.state.items():
                    if key != "step" and key in got_state:
                        worst = max(worst, _worst(got_state[key], expected, rtol, atol, half))
    return Row(implementation, preset, dtype, len(cases), worst, rtol, atol, failure)


def check_backend(functions: Sequence[tuple[str, str, Callable]],
                  dtypes: Sequence[str] = DTYPES, *, chain: bool = False) -> list[Row]:
    """One row per (implementation, dtype), from ``(implementation, preset, step_fn)`` triples."""
    return [check_implementation(impl, preset, fn, dtype, chain=chain)
            for dtype in dtypes for impl, preset, fn in functions]


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table (and the first failure of each failing row below it)."""
    header = ("implementation", "preset", "dtype", "cases", "worst rel. error", "tolerance", "ok")
    body = [(r.implementation, r.preset, r.dtype, str(r.cases), f"{r.worst:.2e}",
             f"{r.rtol:.2g}", "ok" if r.ok else "FAIL") for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    right = {3, 4, 5}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]
    for r in rows:
        if not r.ok:
            out.append(f"FAIL {r.implementation} ({r.preset}, {r.dtype}): {r.failure}")
    return "\n".join(out)


def backend_functions(backend: str, device: str = "cpu", param_dtype: str | None = None
                      ) -> list[tuple[str, str, Callable]]:
    """The step functions of ``backend`` ("torch" or "jax") on ``device``; imports the framework.
    ``param_dtype`` (one of HALF_DTYPES): the functions of that half-precision mode.

    Raises ValueError (one line) if the backend is not installed, the device is unavailable or
    the backend has no such mode.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    extra = {"torch": "torch", "jax": "jax"}[backend]
    try:
        if backend == "torch":
            from minisage.backends import torch as module
        else:
            from minisage.backends import jax as module
    except ImportError as err:
        raise UsageError(f"the {backend} backend needs the {backend} extra "
                        f"(pip install 'minisage[{extra}]'): {err}") from None
    if param_dtype is None:
        return module.golden_step_functions(device)
    if "param_dtype" not in inspect.signature(module.golden_step_functions).parameters:
        raise UsageError(f"the {backend} backend has no {param_dtype} mode")
    return module.golden_step_functions(device, param_dtype=param_dtype)
