"""``minisage bench``: run :func:`minisage.bench.bench`, print its table and the report of its
numbers against the targets.

The targets are this report's, not the benchmark's: :func:`minisage.bench.bench` returns numbers
only. ``--json PATH`` writes the numbers with the report's ``targets`` added (the path is checked
before the benchmark starts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from minisage.bench import TINY, bench, format_table
from minisage.errors import UsageError
from minisage.train import nan_to_none

#: the targets: minisage/torch time ratios of the train steps, minisage's AdamW step over torch's
#: fused AdamW, AdamW-SAGE's step over minisage's AdamW, the medium step's peak memory over
#: torch's (upper bounds); the medium step's matmul GFLOP/s as a fraction of NumPy's own matmul's
#: (a lower bound)
TARGETS = {"train_lesson": 0.8, "train_medium": 1.0, "adamw_over_fused": 2.0,
           "sage_over_adamw": 1.6, "memory_medium": 1.3, "ceiling": 0.5,
           "torch_sage_over_adamw": 2.0}
#: the torch backend's optimizers are timed on this model (minisage.backends.torch.timing)
TORCH_BACKEND_SIZE = "bert-10m"
#: the optimizer state each preset must keep: arrays per parameter (m, v; or m, v / u, Ibar)
STATE_ARRAYS = {"adamw": [2], "adamw-sage": [3], "adamax-sage": [3]}


def target(name: str, value, bound, kind: str = "<=") -> dict:
    """One target: ``met`` is whether ``value kind bound`` holds (None when there is no value,
    e.g. a ratio to torch without torch)."""
    compare = {"<=": lambda v: v <= bound, ">=": lambda v: v >= bound,
               "==": lambda v: v == bound}[kind]
    return {"target": name, "value": value, "bound": bound, "kind": kind,
            "met": None if value is None else bool(compare(value))}


def check_targets(result: dict) -> list[dict]:
    """The targets of issue 7 for a :func:`minisage.bench.bench` result."""
    train = {row["shape"]: row for row in result["train"]}
    opt = {row["preset"]: row for row in result["optimizer"]}
    out = []
    for shape, key in (("lesson", "train_lesson"), ("medium", "train_medium")):
        if shape in train:
            out.append(target(f"train step {shape}, minisage/torch", train[shape].get("ratio"),
                              TARGETS[key]))
    if "medium" in train:
        out.append(target("train step medium, peak memory minisage/torch",
                          train["medium"].get("peak_ratio"), TARGETS["memory_medium"]))
    out.append(target("adamw step / torch fused AdamW step", opt["adamw"].get("fused_ratio"),
                      TARGETS["adamw_over_fused"]))
    out.append(target("adamw-sage step / minisage adamw step", opt["adamw-sage"]["over_adamw"],
                      TARGETS["sage_over_adamw"]))
    last = result["train"][-1]
    out.append(target(f"{last['shape']} train step GFLOP/s / numpy matmul GFLOP/s",
                      last["gflops"] / result["ceiling"]["numpy_gflops"], TARGETS["ceiling"],
                      ">="))
    for preset, arrays in STATE_ARRAYS.items():
        out.append(target(f"{preset} state arrays per parameter",
                          opt[preset]["state_arrays_per_param"], arrays, "=="))
    backend = {row["optimizer"]: row for row in result.get("torch_backend", [])}
    if "AdamWSAGE" in backend:
        out.append(target("torch backend AdamWSAGE / torch AdamW (default) step",
                          backend["AdamWSAGE"]["over_adamw_default"],
                          TARGETS["torch_sage_over_adamw"]))
    return out


def format_targets(targets: list[dict]) -> str:
    """The targets as text: value, bound and verdict (met, MISSED, or - without a value)."""
    lines = ["targets:"]
    for t in targets:
        value = t["value"]
        shown = "n/a (no torch)" if value is None else (
            f"{value:.2f}" if isinstance(value, float) else str(value))
        verdict = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        if t["met"] is False and t["kind"] in ("<=", ">=") and t["bound"]:
            verdict += f" (by {abs(value / t['bound'] - 1):.1%})"
        lines.append(f"  {t['target']:<52} {shown:>14} {t['kind']} {t['bound']}  {verdict}")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for both NumPy's BLAS and torch (>= 1)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="floating-point type of the models and optimizer states")
    parser.add_argument("--no-torch", action="store_true",
                        help="minisage only (default: against torch when it is installed)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model and few repetitions: checks that it runs")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the numbers and targets here (default: none)")


def check_writable(flag: str, path: str) -> None:
    """A UsageError naming ``flag`` unless ``path`` can be written as a file (checked by opening
    it for appending; a file that was not there is removed again)."""
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write there ({err.strerror})") from None
    if not existed:
        os.remove(path)


def torch_backend_rows(size: str, reps: int, warmup: int, threads: int, say) -> list[dict]:
    """One step of each torch-backend optimizer and of ``torch.optim.AdamW`` (default, foreach,
    fused) on a model of ``size`` (:data:`minisage.backends.torch.timing.SIZES`)."""
    from minisage.backends.torch.timing import optimizer_step_times

    say(f"torch backend optimizer steps, {size} ...")
    return optimizer_step_times(size, reps=reps, warmup=warmup, threads=threads)


def run(args: argparse.Namespace) -> int:
    for flag, value, low in (("--threads", args.threads, 1), ("--reps", args.reps, 1),
                             ("--warmup", args.warmup, 0)):
        if value < low:
            raise UsageError(f"{flag} must be an integer >= {low}, got {value}")
    if args.json:
        check_writable("--json", args.json)  # now, not after the benchmark
    kwargs: dict = {"reps": args.reps, "warmup": args.warmup}
    if args.quick:
        kwargs = {"shapes": (TINY,), "optimizer_shape": TINY, "reps": 3, "warmup": 1}

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = bench(threads=args.threads, dtype=args.dtype,
                   with_torch=False if args.no_torch else None, progress=say, **kwargs)
    if "torch" in result["environment"]:
        size = "tiny" if args.quick else TORCH_BACKEND_SIZE
        result["torch_backend"] = torch_backend_rows(size, kwargs["reps"], kwargs["warmup"],
                                                     args.threads, say)
    targets = check_targets(result)
    print(format_table(result))
    if "torch_backend" in result:
        from minisage.backends.torch.timing import format_rows

        print()
        print("minisage's torch backend (float32, official split), against torch.optim.AdamW:")
        print(format_rows(result["torch_backend"]))
    print()
    print(format_targets(targets))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(nan_to_none({**result, "targets": targets}), f, indent=2, allow_nan=False)
            f.write("\n")
    return 0 if all(math.isfinite(r["minisage_ms"]) for r in result["train"]) else 1
