"""``minisage bench``: the engine and the optimizers timed side by side with PyTorch (CPU, eager).

Everything is measured in one process, after warm-up, as the median of ``reps`` repetitions; the
minisage and torch versions of a case run interleaved (one of each per repetition, alternating
which goes first), and the ratio minisage/torch is the median of the per-repetition ratios, so that
load from other processes hits both sides alike. Cases:

- the train step (forward, backward, optimizer step; AdamW on both sides) of the Transformer at a
  lesson size and a medium size, minisage and its torch twin (:func:`minisage.backends.torch.
  to_torch`: the same weights), float32 by default;
- the optimizer step alone (Adam, AdamW-SAGE, Adamax-SAGE) over the medium model's parameters;
- the peak memory of a train step (minisage: ``tracemalloc``, which sees every NumPy allocation;
  torch: the allocation events of ``torch.profiler``) and the optimizer state per parameter;
- the medium train step's matmul GFLOP/s against NumPy's own matmul GFLOP/s on this machine.

Threads: both sides use the same number. Torch takes it from ``torch.set_num_threads``; NumPy's
BLAS from ``threadpoolctl`` when it is installed (optional), otherwise from the environment
variable ``OPENBLAS_NUM_THREADS`` (or ``OMP_NUM_THREADS``) read when NumPy is imported -- minisage
asks for 1 (see ``minisage/__init__.py``). ``minisage bench --threads N`` without threadpoolctl
starts a fresh process with ``OPENBLAS_NUM_THREADS=N``.

This is a benchmark, never a test: :func:`bench` returns the numbers and the targets they are
compared with, and nothing asserts on them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import minisage
import minisage.functional as F
from minisage import optim
from minisage.nn import Transformer, TransformerConfig

#: ratio targets of issue 7 (upper bounds; the last is a lower bound on the fraction of the ceiling)
TARGETS = {"train_lesson": 0.8, "train_medium": 1.3, "sage_over_adam": 1.3, "ceiling": 0.5}
#: the optimizer presets timed alone: minisage class, torch class (or None: torch.optim.Adam)
OPTIMIZERS = ("adam", "adamw-sage", "adamax-sage")


@dataclass(frozen=True)
class Shape:
    """A Transformer size and the batch it is trained on."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    seq: int
    batch: int
    vocab: int

    def config(self, dtype: str) -> TransformerConfig:
        return TransformerConfig(vocab_size=self.vocab, max_len=self.seq, d_model=self.d_model,
                                 n_layers=self.n_layers, n_heads=self.n_heads, dtype=dtype)

    def label(self) -> str:
        return (f"{self.name} (d{self.d_model} L{self.n_layers} H{self.n_heads} T{self.seq} "
                f"B{self.batch} V{self.vocab})")

    def matmul_flops(self) -> int:
        """Multiply-adds x 2 of every matrix product in one train step (backward = 2 x forward)."""
        n, d, t = self.batch * self.seq, self.d_model, self.seq
        linear = self.n_layers * 12 * d * d + d * self.vocab  # weights of all Linear layers
        attention = self.n_layers * 2 * self.batch * t * t * d  # q k^T and weights @ v
        return 3 * 2 * (n * linear + attention)


LESSON = Shape("lesson", d_model=64, n_layers=2, n_heads=4, seq=32, batch=32, vocab=32)
MEDIUM = Shape("medium", d_model=256, n_layers=4, n_heads=8, seq=128, batch=16, vocab=256)
TINY = Shape("tiny", d_model=16, n_layers=1, n_heads=2, seq=8, batch=2, vocab=11)


# ----------------------------------------------------------------------------------------------
# threads and timing
# ----------------------------------------------------------------------------------------------

def numpy_threads(n: int | None = None) -> tuple[int, str]:
    """NumPy's BLAS thread count and where it comes from; with ``n``, set it first if possible.

    Raises ValueError if ``n`` differs from the count fixed at NumPy's import and threadpoolctl
    (which can change it) is not installed.
    """
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is None:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            if os.environ.get(var):
                current, source = int(os.environ[var]), var
                break
        else:
            current, source = os.cpu_count() or 1, "default (one per core)"
        if n is not None and n != current:
            raise ValueError(f"bench: NumPy's BLAS uses {current} thread(s) ({source}), fixed "
                             f"at import; start with OPENBLAS_NUM_THREADS={n} or install "
                             "threadpoolctl")
        return current, source
    if n is not None:
        threadpool_limits(n, user_api="blas")
    counts = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    return (max(counts) if counts else 1), "threadpoolctl"


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int
                ) -> dict[str, list[float]]:
    """Seconds of each function over ``reps`` rounds (after ``warmup``), one call of each per
    round, the order reversed every other round."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _summary(times: dict[str, list[float]], ours: str, theirs: str | None) -> dict:
    row = {"minisage_ms": 1e3 * statistics.median(times[ours])}
    if theirs is not None:
        row["torch_ms"] = 1e3 * statistics.median(times[theirs])
        row["ratio"] = statistics.median(a / b for a, b in zip(times[ours], times[theirs]))
    return row


# ----------------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------------

def _batch(shape: Shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, shape.vocab, (shape.batch, shape.seq))
    return ids, np.roll(ids, -1, axis=1)  # (B, T) each


def _minisage_train_step(model: Transformer, ids, targets):
    opt = optim.AdamW(model.named_parameters(), lr=1e-3)

    def step():
        loss = F.cross_entropy(model.lm_logits(ids), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step


def _torch_train_step(model: Transformer, ids, targets):
    import torch

    from minisage.backends.torch import to_torch

    twin = to_torch(model)
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    ids_t, targets_t = torch.as_tensor(ids), torch.as_tensor(targets).reshape(-1)
    vocab = model.config.vocab_size

    def step():
        loss = torch.nn.functional.cross_entropy(twin.lm_logits(ids_t).reshape(-1, vocab),
                                                 targets_t)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step


def _peak_minisage(step: Callable[[], object]) -> int:
    """Bytes allocated at the peak of one call, above what was held before it."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _peak_torch(step: Callable[[], object]) -> int:
    """The peak of the running sum of torch's CPU allocations and frees during one call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def train_case(shape: Shape, dtype: str, reps: int, warmup: int, with_torch: bool,
               seed: int = 0) -> dict:
    model = Transformer(shape.config(dtype), seed=seed)
    ids, targets = _batch(shape, seed)
    fns = {"minisage": _minisage_train_step(model, ids, targets)}
    row: dict = {"case": f"train step, {shape.label()}", "shape": shape.name}
    if with_torch:
        fns["torch"] = _torch_train_step(model, ids, targets)  # copies the weights now
        # the same weights: the first losses agree to rounding
        row["first_loss_diff"] = abs(float(fns["minisage"]().item())
                                     - float(fns["torch"]().item()))
    times = interleaved(fns, reps, warmup)
    row.update(_summary(times, "minisage", "torch" if with_torch else None))
    row["peak_mb"] = _peak_minisage(fns["minisage"]) / 2**20
    if with_torch:
        row["torch_peak_mb"] = _peak_torch(fns["torch"]) / 2**20
    row["matmul_gflop"] = shape.matmul_flops() / 1e9
    row["gflops"] = row["matmul_gflop"] / (row["minisage_ms"] / 1e3)
    if with_torch:
        row["torch_gflops"] = row["matmul_gflop"] / (row["torch_ms"] / 1e3)
    return row


def _minisage_optimizer(preset: str, params):
    if preset == "adam":
        return optim.Adam(params, lr=1e-3)
    if preset == "adamw-sage":
        return optim.AdamWSAGE(params, lr=1e-3)
    return optim.AdamaxSAGE(params, lr=1e-3)


def _torch_optimizer(preset: str, params):
    import torch

    from minisage.backends import torch as tb

    if preset == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if preset == "adamw-sage":
        return tb.AdamWSAGE(params, lr=1e-3)
    return tb.AdamaxSAGE(params, lr=1e-3)


def optimizer_cases(shape: Shape, dtype: str, reps: int, warmup: int, with_torch: bool,
                    seed: int = 0) -> list[dict]:
    """One optimizer step over the model's parameters, with fixed random gradients; all presets
    and both sides interleaved in one loop, so that every ratio compares the same moments."""
    model = Transformer(shape.config(dtype), seed=seed)
    rng = np.random.default_rng(seed + 1)
    params = model.parameters()
    for p in params:
        p.grad = (1e-2 * rng.standard_normal(p.shape)).astype(p.dtype)
    count = sum(p.size for p in params)
    opts, fns = {}, {}
    for preset in OPTIMIZERS:
        opts[preset] = _minisage_optimizer(preset, list(params))  # a state of its own
        fns[f"minisage {preset}"] = opts[preset].step
        if with_torch:
            import torch

            twin = [torch.nn.Parameter(torch.tensor(p.data)) for p in params]
            for tp, p in zip(twin, params):
                tp.grad = torch.tensor(p.grad)
            fns[f"torch {preset}"] = _torch_optimizer(preset, twin).step
    times = interleaved(fns, reps, warmup)
    rows = []
    for preset, opt in opts.items():
        row = {"case": f"optimizer step, {preset} ({count / 1e6:.2f}M parameters)",
               "preset": preset, "parameters": count}
        mine = {"minisage": times[f"minisage {preset}"], "torch": times.get(f"torch {preset}")}
        row.update(_summary(mine, "minisage", "torch" if with_torch else None))
        # this preset's step / minisage's Adam step, per repetition
        row["over_adam"] = statistics.median(
            a / b for a, b in zip(times[f"minisage {preset}"], times["minisage adam"]))
        arrays = {len([v for v in opt.state_of(p).values() if isinstance(v, np.ndarray)])
                  for p in params}
        row["state_arrays_per_param"] = sorted(arrays)
        row["state_bytes_per_param"] = sum(
            v.nbytes for p in params for v in opt.state_of(p).values()
            if isinstance(v, np.ndarray)) / count
        rows.append(row)
    return rows


def matmul_ceiling(shape: Shape, dtype: str, reps: int, with_torch: bool) -> dict:
    """GFLOP/s of NumPy's (and torch's) matmul at the largest product of ``shape``'s train step:
    (B*T, D) @ (D, 4D), the feed-forward layer, and its transposes in backward."""
    rng = np.random.default_rng(0)
    n, d = shape.batch * shape.seq, shape.d_model
    a = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, 4 * d)).astype(dtype)
    fns = {"numpy": lambda: a @ w}
    if with_torch:
        import torch

        at, wt = torch.tensor(a), torch.tensor(w)
        fns["torch"] = lambda: at @ wt
    times = interleaved(fns, reps, warmup=2)
    flop = 2 * n * d * 4 * d
    out = {"shape": f"({n}, {d}) @ ({d}, {4 * d})",
           "numpy_gflops": flop / statistics.median(times["numpy"]) / 1e9}
    if with_torch:
        out["torch_gflops"] = flop / statistics.median(times["torch"]) / 1e9
    return out


# ----------------------------------------------------------------------------------------------
# the whole benchmark
# ----------------------------------------------------------------------------------------------

def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def bench(*, shapes: tuple[Shape, ...] = (LESSON, MEDIUM), optimizer_shape: Shape = MEDIUM,
          reps: int = 20, warmup: int = 3, threads: int | None = None, dtype: str = "float32",
          with_torch: bool | None = None, seed: int = 0,
          progress: Callable[[str], None] | None = None) -> dict:
    """Run every case and return a JSON-ready dict: ``environment``, ``train`` (one row per
    shape), ``optimizer`` (one row per preset), ``ceiling``, ``targets`` (each with its value and
    whether it is met). ``threads``: for both NumPy's BLAS and torch (default: NumPy's current).
    ``with_torch``: None = when torch is installed. The ceiling is the last shape's."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"bench: reps must be >= 1 and warmup >= 0, got {reps}, {warmup}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"bench: dtype must be float32 or float64, got {dtype!r}")
    with_torch = _torch_available() if with_torch is None else with_torch
    n_threads, source = numpy_threads(threads)
    env = {
        "machine": f"{_cpu_name()} ({os.cpu_count()} logical cores), {platform.system()}",
        "python": platform.python_version(), "numpy": np.__version__,
        "minisage": minisage.__version__, "dtype": dtype, "threads": n_threads,
        "numpy_threads_source": source, "reps": reps, "warmup": warmup,
    }
    import scipy

    env["scipy"] = scipy.__version__
    if with_torch:
        import torch

        torch.set_num_threads(n_threads)
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    say = progress or (lambda message: None)
    result: dict = {"environment": env, "train": [], "optimizer": []}
    for shape in shapes:
        say(f"train step, {shape.name} ...")
        result["train"].append(train_case(shape, dtype, reps, warmup, with_torch, seed))
    say(f"optimizer steps, {optimizer_shape.name} ...")
    result["optimizer"] = optimizer_cases(optimizer_shape, dtype, reps, warmup, with_torch, seed)
    say("matmul ceiling ...")
    result["ceiling"] = matmul_ceiling(shapes[-1], dtype, max(reps, 5), with_torch)
    result["targets"] = _targets(result, with_torch)
    return result


def _targets(result: dict, with_torch: bool) -> list[dict]:
    def target(name, value, bound, upper=True):
        met = None if value is None else (value <= bound if upper else value >= bound)
        return {"target": name, "value": value, "bound": bound,
                "kind": "<=" if upper else ">=", "met": met}

    train = {row["shape"]: row for row in result["train"]}
    opt = {row["preset"]: row for row in result["optimizer"]}
    out = []
    for shape, key in (("lesson", "train_lesson"), ("medium", "train_medium")):
        if shape in train:
            out.append(target(f"train step {shape}, minisage/torch",
                              train[shape].get("ratio") if with_torch else None, TARGETS[key]))
    for preset in ("adamw-sage", "adamax-sage"):
        out.append(target(f"{preset} step / minisage adam step", opt[preset]["over_adam"],
                          TARGETS["sage_over_adam"]))
    last = result["train"][-1]
    out.append(target(f"{last['shape']} train step GFLOP/s / numpy matmul GFLOP/s",
                      last["gflops"] / result["ceiling"]["numpy_gflops"], TARGETS["ceiling"],
                      upper=False))
    for preset, arrays in (("adam", [2]), ("adamw-sage", [3]), ("adamax-sage", [3])):
        got = opt[preset]["state_arrays_per_param"]
        out.append({"target": f"{preset} state arrays per parameter", "value": got,
                    "bound": arrays, "kind": "==", "met": got == arrays})
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(result: dict) -> str:
    """The human-readable table of :func:`bench`'s result."""
    env = result["environment"]
    versions = ", ".join(f"{k} {env[k]}" for k in ("python", "numpy", "scipy", "torch", "minisage")
                         if k in env)
    torch_threads = f", torch {env['torch_threads']}" if "torch_threads" in env else ""
    lines = [
        f"machine: {env['machine']}; {versions}",
        f"threads: numpy BLAS {env['threads']} ({env['numpy_threads_source']}){torch_threads}; "
        f"{env['dtype']}; median of {env['reps']} interleaved repetitions after "
        f"{env['warmup']} warm-up",
        "",
        f"{'case':<58} {'minisage ms':>11} {'torch ms':>9} {'ratio':>6}",
    ]
    for row in result["train"] + result["optimizer"]:
        torch_ms = f"{row['torch_ms']:9.2f}" if "torch_ms" in row else f"{'-':>9}"
        ratio = f"{row['ratio']:6.2f}" if "ratio" in row else f"{'-':>6}"
        lines.append(f"{row['case']:<58} {row['minisage_ms']:11.2f} {torch_ms} {ratio}")
    lines.append("")
    for row in result["train"]:
        torch_peak = f", torch {row['torch_peak_mb']:.1f} MiB" if "torch_peak_mb" in row else ""
        torch_rate = f", torch {row['torch_gflops']:.1f}" if "torch_gflops" in row else ""
        lines.append(f"{row['shape']} train step: peak memory {row['peak_mb']:.1f} MiB"
                     f"{torch_peak}; {row['matmul_gflop']:.2f} GFLOP of matmul, "
                     f"{row['gflops']:.1f} GFLOP/s{torch_rate}")
    ceiling = result["ceiling"]
    torch_ceiling = (f", torch {ceiling['torch_gflops']:.1f}" if "torch_gflops" in ceiling
                     else "")
    lines.append(f"matmul ceiling {ceiling['shape']}: numpy {ceiling['numpy_gflops']:.1f} "
                 f"GFLOP/s{torch_ceiling}")
    for row in result["optimizer"]:
        lines.append(f"{row['preset']} state: {row['state_arrays_per_param']} array(s) per "
                     f"parameter, {row['state_bytes_per_param']:g} bytes per parameter entry")
    lines += ["", "targets:"]
    for t in result["targets"]:
        value = t["value"]
        shown = "n/a (no torch)" if value is None else (
            f"{value:.2f}" if isinstance(value, float) else str(value))
        verdict = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        lines.append(f"  {t['target']:<52} {shown:>14} {t['kind']} {t['bound']}  {verdict}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median; 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for NumPy's BLAS and torch (default: NumPy's, 1 unless "
                        "OPENBLAS_NUM_THREADS says otherwise)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--no-torch", action="store_true", help="minisage only")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model and few repetitions: checks that it runs")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the result here")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        try:
            numpy_threads(args.threads)
        except ValueError:  # fixed at import: start over with the variable set
            env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads),
                   "OMP_NUM_THREADS": str(args.threads)}
            argv = ["bench", "--reps", str(args.reps), "--warmup", str(args.warmup), "--threads",
                    str(args.threads), "--dtype", args.dtype]
            argv += ["--no-torch"] * args.no_torch + ["--quick"] * args.quick
            argv += ["--json", args.json] if args.json else []
            return subprocess.call([sys.executable, "-m", "minisage", *argv], env=env)
    kwargs: dict = {"reps": args.reps, "warmup": args.warmup}
    if args.quick:
        kwargs = {"shapes": (TINY,), "optimizer_shape": TINY, "reps": 3, "warmup": 1}
    result = bench(threads=args.threads, dtype=args.dtype,
                   with_torch=False if args.no_torch else None,
                   progress=lambda m: print(m, file=sys.stderr, flush=True), **kwargs)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0 if all(math.isfinite(r["minisage_ms"]) for r in result["train"]) else 1
