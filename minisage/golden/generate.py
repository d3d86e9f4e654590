"""Generate the golden vectors from the spec: seeded, deterministic, byte for byte.

``minisage golden export DIR`` writes ``DIR/<preset>.json`` for every preset; the files committed
under ``minisage/golden/vectors/`` are exactly that output. Each case draws its initial parameter
and gradients from ``numpy.random.default_rng(crc32(case id))``; the parameter has one entry that
is exactly zero; some steps have an all-zero gradient; gradients alternate between a small scale
(no clipping) and a large one (per-tensor clipping active in the official presets, whose
``max_grad_norm`` is 1.0).
"""

from __future__ import annotations

import errno
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minisage import spec
from minisage.files import check_folder_writable, write_atomic
from minisage.golden.format import (
    SCHEMA,
    SCHEMA_VERSION,
    GoldenFormatError,
    encode_state,
    load,
    render,
    to_list,
)


@dataclass(frozen=True)
class CaseSpec:
    """How to build one golden case."""

    key: str                       # the id after "<preset>/"
    description: str
    dtype: str
    shape: tuple[int, ...]
    steps: int
    hparams: dict[str, Any]        # overrides of the preset's defaults
    schedule: tuple | None = None  # ("linear" | "cosine", warmup_steps): lr passed to step()
    zero_grad_steps: tuple[int, ...] = ()   # 0-based steps whose gradient is all zero
    grad_scales: tuple[float, ...] = (0.1, 2.0)   # cycled over the steps
    extra: dict[str, Any] = field(default_factory=dict)


_TORCH_LR = {"sgd": 0.1, "adam": 0.01, "adamw": 0.01, "adamax": 0.02, "adam-sage": 0.02}
_OFFICIAL = ("bert-adamw", "adamw-sage", "bert-adamax", "adamax-sage")


def case_specs(preset: str) -> list[CaseSpec]:
    """The cases of one preset (every preset: float64 and float32; 1, 3 and 25 steps; a zero
    gradient; a zero parameter entry; weight decay on and off; a schedule)."""
    if preset in _OFFICIAL:
        return _official_specs(preset)
    return _torch_style_specs(preset)


def _torch_style_specs(preset: str) -> list[CaseSpec]:
    lr = _TORCH_LR[preset]
    wd = {"weight_decay": 0.1}
    if preset == "sgd":
        variant = {"momentum": 0.9, "dampening": 0.1}
        options = {"momentum": 0.9, "nesterov": True, "weight_decay": 0.0, "maximize": True}
    elif preset == "adam-sage":
        variant = {"beta3": 0.8}
        options = {"betas": (0.8, 0.99), "beta3": 0.6, "eps": 1e-6, "sage_eps": 1e-9,
                   "weight_decay": 0.0}
    else:
        variant = {"betas": (0.8, 0.99)}
        options = {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0, "maximize": True}
    return [
        CaseSpec("f64-1step", "one step, weight decay on", "float64", (3,), 1,
                 {"lr": lr, **wd}),
        CaseSpec("f64-3steps-zero-grad", "three steps, the second with an all-zero gradient",
                 "float64", (2, 3), 3, {"lr": lr, **wd, **variant}, zero_grad_steps=(1,)),
        CaseSpec("f64-25steps-cosine", "25 steps, cosine schedule with 5 warmup steps passed as "
                 "lr, weight decay on, zero gradients at steps 8 and 9", "float64", (2, 3), 25,
                 {"lr": lr, **wd, **variant}, schedule=("cosine", 5), zero_grad_steps=(7, 8)),
        CaseSpec("f64-4steps-no-decay", "four steps, weight decay off, other options",
                 "float64", (4, 5), 4, {"lr": lr, **options}),
        CaseSpec("f32-3steps-zero-grad", "float32, three steps, the first with an all-zero "
                 "gradient, weight decay on", "float32", (2, 3), 3, {"lr": lr, **wd, **variant},
                 zero_grad_steps=(0,)),
        CaseSpec("f32-25steps-linear", "float32, 25 steps, linear warmup (5) then decay passed "
                 "as lr, weight decay off, a zero gradient at step 12", "float32", (3,), 25,
                 {"lr": lr, **{k: v for k, v in options.items() if k != "maximize"}},
                 schedule=("linear", 5), zero_grad_steps=(11,)),
    ]


def _official_specs(preset: str) -> list[CaseSpec]:
    lr = 0.01
    adamw = "adamw" in preset
    sage = preset.endswith("sage")
    wd_on = {"weight_decay": 0.01}
    wd_off = {"weight_decay": 0.0}
    beta3 = {"beta3": 0.8} if sage else {}
    no_correct = {"correct_bias": False} if adamw else {}
    internal = {"t_total": 25, "warmup": 0.2}   # warmup_linear: 5 warmup steps, then its jump
    return [
        CaseSpec("f64-1step", "one step, official defaults, per-tensor clipping active",
                 "float64", (3,), 1, {"lr": lr}, grad_scales=(2.0,)),
        CaseSpec("f64-3steps-zero-grad", "three steps, weight decay on, clipping on the third, "
                 "the second with an all-zero gradient", "float64", (2, 3), 3,
                 {"lr": lr, **wd_on, **beta3}, zero_grad_steps=(1,)),
        CaseSpec("f64-25steps-warmup-linear", "25 steps, the official warmup_linear schedule "
                 "inside the rule (t_total=25, warmup=0.2: it jumps after step 5), weight decay "
                 "on, clipping on every other step, zero gradients at steps 8 and 9", "float64",
                 (2, 3), 25, {"lr": lr, **wd_on, **internal},
                 zero_grad_steps=(7, 8)),
        CaseSpec("f64-4steps-no-decay", "four steps, weight decay off, no clipping"
                 + (", no bias correction" if adamw else "") + ", cosine lr passed to step",
                 "float64", (4, 5), 4,
                 {"lr": lr, **wd_off, "max_grad_norm": -1, **no_correct, **beta3},
                 schedule=("cosine", 1)),
        CaseSpec("f32-3steps-zero-grad", "float32, three steps, weight decay on, the first with "
                 "an all-zero gradient", "float32", (2, 3), 3, {"lr": lr, **wd_on},
                 zero_grad_steps=(0,)),
        CaseSpec("f32-25steps-warmup-linear", "float32, 25 steps, official warmup_linear inside "
                 "the rule, weight decay off" + (", no bias correction" if adamw else "")
                 + ", a zero gradient at step 12", "float32", (3,), 25,
                 {"lr": lr, **wd_off, **internal, **no_correct}, zero_grad_steps=(11,)),
    ]


def build_case(preset: str, cs: CaseSpec) -> dict[str, Any]:
    """Run one case through the spec and return its JSON-ready dict."""
    case_id = f"{preset}/{cs.key}"
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    dtype = np.dtype(cs.dtype)
    rule = spec.make(preset, **cs.hparams)
    param = rng.standard_normal(cs.shape).astype(dtype)
    param.reshape(-1)[param.size // 2] = 0.0          # one entry exactly zero
    schedule = None
    if cs.schedule is not None:
        name, warmup = cs.schedule
        schedule = spec.make_schedule(name, warmup_steps=warmup, total_steps=cs.steps)
    state = rule.init(param)
    p = param
    steps = []
    for t in range(cs.steps):
        scale = cs.grad_scales[t % len(cs.grad_scales)]
        grad = (rng.standard_normal(cs.shape) * scale).astype(dtype)
        if t in cs.zero_grad_steps:
            grad = np.zeros(cs.shape, dtype)
        lr = None if schedule is None else rule.hparams["lr"] * schedule(t)
        p, state, trace = rule.step(p, grad, state, lr=lr)
        steps.append({"grad": to_list(grad), "lr": lr, "scheduled_lr": float(trace["lr"]),
                      "param": to_list(p), "state": encode_state(state)})
    hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in rule.hparams.items()}
    return {"id": case_id, "description": cs.description, "dtype": cs.dtype,
            "shape": list(cs.shape), "hparams": hparams, "param": to_list(param), "steps": steps}


def build_document(preset: str) -> dict[str, Any]:
    """The whole golden document of one preset."""
    cls = spec.rule_class(preset)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "preset": preset,
        "reproduces": cls.reproduces,
        "note": "Generated by `minisage golden export` from minisage.spec; do not edit. Arrays "
                "are flat, row-major; floats are repr (exact; float32 values as the equal "
                "double). Format: minisage/golden/format.py.",
        "cases": [build_case(preset, cs) for cs in case_specs(preset)],
    }


def render_preset(preset: str) -> str:
    """The exact text of ``<preset>.json``."""
    return render(build_document(preset)) + "\n"


def export(directory: str | Path, presets: tuple[str, ...] | None = None) -> list[Path]:
    """Write ``<preset>.json`` for each preset into ``directory`` (created if needed).

    Everything is checked before anything is written: the folder takes files, no target is a
    folder, and every document is rendered in memory first. Each file is written whole or not at
    all (:func:`minisage.files.write_atomic`)."""
    out = check_folder_writable(directory)
    names = presets or spec.presets()
    targets = [out / f"{preset}.json" for preset in names]
    for path in targets:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder; cannot write the golden file",
                                    str(path))
    texts = [render_preset(preset).encode("utf-8") for preset in names]
    for path, text in zip(targets, texts):
        with write_atomic(path) as f:
            f.write(text)
    return targets


def compare(directory: str | Path, presets: tuple[str, ...] | None = None) -> list[str]:
    """Regenerate in memory and compare with the files in ``directory``: one line per file that
    differs, saying where first (the loader's message for a malformed file; else the first
    differing field with its path -- case id, step, field, entry -- and both values). An empty
    list: identical. A missing folder, or one without any golden file, raises FileNotFoundError
    (one error, not one per file)."""
    folder = Path(directory)
    if not folder.is_dir():
        reason = "not a folder" if folder.exists() else "No such file or directory"
        raise (NotADirectoryError if folder.exists() else FileNotFoundError)(
            errno.ENOTDIR if folder.exists() else errno.ENOENT, reason, str(directory))
    names = presets or spec.presets()
    if not any((folder / f"{preset}.json").exists() for preset in names):
        raise FileNotFoundError(errno.ENOENT, "no golden file here (expected "
                                f"{', '.join(f'{p}.json' for p in names)})", str(directory))
    problems = []
    for preset in names:
        path = folder / f"{preset}.json"
        if not path.is_file():
            problems.append(f"{path}: {'a folder, not a file' if path.exists() else 'missing'}")
            continue
        expected = render_preset(preset)
        got = path.read_bytes()
        if got == expected.encode("utf-8"):
            continue
        try:
            load(path)  # a malformed file: the loader says where
        except GoldenFormatError as err:
            problems.append(str(err))
            continue
        where = first_difference(build_document(preset), json.loads(got))
        if where is None:
            where = _first_line_difference(expected, got.decode("utf-8"))
        problems.append(f"{path}: differs from what the spec generates now: {where}")
    return problems


def first_difference(expected: Any, got: Any, where: str = "") -> str | None:
    """The first place where two parsed JSON documents differ, as ``path: expected X, got Y``
    (list entries that are cases are named by their id); None if they are equal."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{where or 'top level'}: expected an object, got {_kind(got)}"
        for key, value in expected.items():
            if key not in got:
                return f"{where or 'top level'}: missing key {key!r}"
            found = first_difference(value, got[key], f"{where}.{key}" if where else key)
            if found:
                return found
        extra = [key for key in got if key not in expected]
        return f"{where or 'top level'}: unexpected key {extra[0]!r}" if extra else None
    if isinstance(expected, list):
        if not isinstance(got, list):
            return f"{where}: expected a list, got {_kind(got)}"
        for i, (a, b) in enumerate(zip(expected, got)):
            label = f" ({a['id']})" if isinstance(a, dict) and "id" in a else ""
            found = first_difference(a, b, f"{where}[{i}]{label}")
            if found:
                return found
        if len(expected) != len(got):
            return f"{where}: expected {len(expected)} entries, got {len(got)}"
        return None
    if type(expected) is not type(got) or expected != got:
        detail = ""
        if isinstance(expected, float) and isinstance(got, float) and expected:
            detail = f" (relative difference {abs(got - expected) / abs(expected):.2g})"
        return f"{where}: expected {expected!r}, got {got!r}{detail}"
    return None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list"}.get(type(value), repr(value))


def _first_line_difference(expected: str, got: str) -> str:
    """Same values, other text: the first line that differs."""
    for number, (a, b) in enumerate(zip(expected.splitlines(), got.splitlines()), start=1):
        if a != b:
            return (f"the same values, written differently: line {number} is {b[:80]!r}, "
                    f"expected {a[:80]!r} (rewrite it with minisage golden export)")
    return ("the same values, written differently (line endings or the end of the file; "
            "rewrite it with minisage golden export)")
