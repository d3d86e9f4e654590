"""The golden-vector JSON format (schema version 1): reading, validating and writing it.

One file per preset, ``<preset>.json``::

    {
      "schema": "minisage-golden",
      "schema_version": 1,
      "preset": "adamw-sage",
      "reproduces": "...",                 # what the preset reproduces (information)
      "note": "...",                       # how the file was made (information)
      "cases": [
        {
          "id": "adamw-sage/f64-3steps-zero-grad",   # unique, readable, stable
          "description": "...",
          "dtype": "float64",                         # or "float32"
          "shape": [2, 3],
          "hparams": {"lr": 0.01, "betas": [0.9, 0.999], ...},   # every hyperparameter, resolved
          "param": [...],                             # the initial parameter, flat, row-major
          "steps": [                                  # one entry per step, in order
            {
              "grad": [...],                          # the gradient given to the step
              "lr": 0.001,                            # the lr argument of step(): a number, or
                                                      # null = the rule's own (base lr, or its
                                                      # internal schedule when t_total != -1)
              "scheduled_lr": 0.001,                  # the lr_t the step actually used
              "param": [...],                         # the expected parameter after the step
              "state": {"step": 1, "exp_avg": [...], ...}   # the expected state after the step
            }
          ]
        }
      ]
    }

Arrays are flat lists in row-major (C) order; ``shape`` gives their shape. Floats are written
with Python's ``repr`` (the shortest string that reads back to the same double), so the numbers
are exact; a float32 value is written as the double equal to it (e.g. ``0.10000000149011612``),
which reads back exactly when cast to float32. The initial state is the rule's ``init`` (zeros,
step 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minisage.errors import GoldenFormatError

SCHEMA = "minisage-golden"
SCHEMA_VERSION = 1
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class GoldenStep:
    """One step of a golden case: its inputs and the expected results (read-only arrays)."""

    grad: np.ndarray
    lr: float | None
    scheduled_lr: float
    param: np.ndarray
    state: Mapping[str, Any]


@dataclass(frozen=True)
class GoldenCase:
    """One golden trajectory. ``str(case)`` is its ``id``, so ``ids=str`` works in pytest."""

    id: str
    preset: str
    description: str
    dtype: np.dtype
    shape: tuple[int, ...]
    hparams: Mapping[str, Any]
    param: np.ndarray
    steps: tuple[GoldenStep, ...] = field(repr=False)
    source: str = ""

    def __str__(self) -> str:
        return self.id

    def make_rule(self):
        """The spec rule of this case (``spec.make(preset, **hparams)``)."""
        from minisage import spec

        return spec.make(self.preset, **self.hparams)

    def initial_state(self) -> dict[str, Any]:
        """A fresh initial state (``rule.init(param)``): step 0 and zero arrays."""
        return self.make_rule().init(self.param)


# -- writing ------------------------------------------------------------------------------------


def to_list(a: np.ndarray) -> list[float]:
    """An array as a flat list of Python floats (exact: float32 values widen exactly)."""
    return [float(x) for x in np.asarray(a).ravel(order="C")]


def encode_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A spec state as JSON-ready data: ``step`` as int, each array as a flat list."""
    out: dict[str, Any] = {"step": int(state["step"])}
    for key, value in state.items():
        if key != "step":
            out[key] = to_list(value)
    return out


def decode_state(data: Mapping[str, Any], dtype, shape) -> dict[str, Any]:
    """The inverse of :func:`encode_state` (no validation; see :func:`parse_document`)."""
    out: dict[str, Any] = {"step": int(data["step"])}
    for key, value in data.items():
        if key != "step":
            out[key] = _array(value, dtype, shape)
    return out


def render(obj: Any, indent: int = 0) -> str:
    """Deterministic JSON text: objects indented, lists of numbers on one line, floats as repr."""
    pad = " " * indent
    if isinstance(obj, Mapping):
        if not obj:
            return "{}"
        items = [f'{pad}  {json.dumps(str(k))}: {render(v, indent + 2)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(x, (Mapping, list, tuple)) for x in obj):
            return "[" + ", ".join(render(x) for x in obj) + "]"
        items = [pad + "  " + render(x, indent + 2) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"golden files hold finite numbers only, got {obj!r}")
        return repr(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return json.dumps(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to a golden file")


# -- reading ------------------------------------------------------------------------------------


def _array(values, dtype, shape) -> np.ndarray:
    a = np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    a.flags.writeable = False
    return a


class _Reader:
    """Validates one parsed document, building error messages that say where the fault is."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str):
        raise GoldenFormatError(f"{self.source}: {where}: {what}")

    def get(self, obj: Mapping, key: str, where: str, kind, kind_text: str):
        if key not in obj:
            self.fail(where, f"missing key {key!r}")
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.fail(f"{where}.{key}", f"expected {kind_text}, got {type(value).__name__}")
        return value

    def numbers(self, values, where: str, n: int, shape, dtype) -> np.ndarray:
        if not isinstance(values, list):
            self.fail(where, f"expected a list of {n} numbers, got {type(values).__name__}")
        if len(values) != n:
            self.fail(where, f"expected {n} numbers (shape {list(shape)}), got {len(values)}")
        for k, x in enumerate(values):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                self.fail(f"{where}[{k}]", f"expected a finite number, got {x!r}")
        a = np.array(values, dtype=np.float64)
        if dtype == np.float32:
            narrowed = a.astype(np.float32)
            bad = np.flatnonzero(narrowed.astype(np.float64) != a)
            if bad.size:
                k = int(bad[0])
                self.fail(f"{where}[{k}]", f"{values[k]!r} is not a float32 value (the case's "
                                           "dtype is float32; values must be exact float32s)")
        out = a.astype(dtype).reshape(shape)
        out.flags.writeable = False
        return out

    def case(self, data: Any, i: int, preset: str) -> GoldenCase:
        from minisage import spec

        where = f"cases[{i}]"
        if not isinstance(data, Mapping):
            self.fail(where, f"expected an object, got {type(data).__name__}")
        case_id = self.get(data, "id", where, str, "a string")
        where = f"cases[{i}] ({case_id})"
        description = self.get(data, "description", where, str, "a string")
        dtype_name = self.get(data, "dtype", where, str, "a string")
        if dtype_name not in DTYPES:
            self.fail(f"{where}.dtype", f"expected one of {', '.join(DTYPES)}, got {dtype_name!r}")
        dtype = np.dtype(dtype_name)
        shape_list = self.get(data, "shape", where, list, "a list of sizes")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape_list):
            self.fail(f"{where}.shape", f"expected sizes >= 0, got {shape_list!r}")
        shape = tuple(shape_list)
        n = math.prod(shape)
        raw = self.get(data, "hparams", where, Mapping, "an object")
        hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        try:
            rule = spec.make(preset, **hparams)
        except ValueError as err:
            self.fail(f"{where}.hparams", str(err))
        param = self.numbers(data.get("param"), f"{where}.param", n, shape, dtype)
        steps_data = self.get(data, "steps", where, list, "a list of steps")
        if not steps_data:
            self.fail(f"{where}.steps", "expected at least one step")
        keys = {"step", *rule.array_keys}
        steps = []
        for j, s in enumerate(steps_data):
            w = f"{where}.steps[{j}]"
            if not isinstance(s, Mapping):
                self.fail(w, f"expected an object, got {type(s).__name__}")
            grad = self.numbers(s.get("grad"), f"{w}.grad", n, shape, dtype)
            if "lr" not in s:
                self.fail(w, "missing key 'lr'")
            lr = s["lr"]
            if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
                self.fail(f"{w}.lr", f"expected a number or null, got {lr!r}")
            scheduled = self.get(s, "scheduled_lr", w, (int, float), "a number")
            expected = self.numbers(s.get("param"), f"{w}.param", n, shape, dtype)
            st = self.get(s, "state", w, Mapping, "an object")
            if set(st) != keys:
                self.fail(f"{w}.state", f"expected keys {sorted(keys)}, got {sorted(st)}")
            count = st["step"]
            if not isinstance(count, int) or isinstance(count, bool) or count != j + 1:
                self.fail(f"{w}.state.step", f"expected the integer {j + 1}, got {count!r}")
            state: dict[str, Any] = {"step": count}
            for key in rule.array_keys:
                state[key] = self.numbers(st[key], f"{w}.state.{key}", n, shape, dtype)
            steps.append(GoldenStep(grad=grad, lr=None if lr is None else float(lr),
                                    scheduled_lr=float(scheduled), param=expected, state=state))
        return GoldenCase(id=case_id, preset=preset, description=description, dtype=dtype,
                          shape=shape, hparams=hparams, param=param, steps=tuple(steps),
                          source=self.source)


def parse_document(doc: Any, source: str = "<golden>") -> list[GoldenCase]:
    """Validate a parsed golden document and return its cases; GoldenFormatError if malformed."""
    from minisage import spec

    r = _Reader(source)
    if not isinstance(doc, Mapping):
        r.fail("top level", f"expected an object, got {type(doc).__name__}")
    schema = doc.get("schema")
    if schema != SCHEMA:
        r.fail("schema", f"expected {SCHEMA!r}, got {schema!r}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        r.fail("schema_version", f"this minisage reads version {SCHEMA_VERSION}, got {version!r}")
    preset = r.get(doc, "preset", "top level", str, "a string")
    if preset not in spec.presets():
        r.fail("preset", f"unknown preset {preset!r}; known: {', '.join(spec.presets())}")
    cases_data = r.get(doc, "cases", "top level", list, "a list of cases")
    if not cases_data:
        r.fail("cases", "expected at least one case")
    cases = [r.case(c, i, preset) for i, c in enumerate(cases_data)]
    seen: set[str] = set()
    for i, c in enumerate(cases):
        if c.id in seen:
            r.fail(f"cases[{i}].id", f"duplicate id {c.id!r}")
        seen.add(c.id)
    return cases


def load(path: str | Path) -> list[GoldenCase]:
    """Read and validate one golden file; GoldenFormatError names the file and the fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"golden file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise GoldenFormatError(f"{path}: not UTF-8 text ({err.reason} at byte "
                                f"{err.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise GoldenFormatError(f"{path}: not valid JSON: {err}") from None
    return parse_document(doc, str(path))
