"""``minisage bench``: the engine and the optimizers timed side by side with PyTorch (CPU, eager).

Everything is measured in one process, after warm-up, as the median of ``reps`` repetitions; the
minisage and torch versions of a case run interleaved (one of each per repetition, alternating
which goes first), and the ratio minisage/torch is the median of the per-repetition ratios, so that
load from other processes hits both sides alike. torch runs at its best on the CPU: attention
through ``scaled_dot_product_attention``, AdamW also ``fused``. Cases:

- the train step (forward, backward, optimizer step; AdamW on both sides) of the Transformer at a
  lesson size and a medium size, minisage and its torch twin (:func:`minisage.backends.torch.
  to_torch`: the same weights, SDPA attention), float32 by default;
- the optimizer step alone (AdamW, AdamW-SAGE, Adamax-SAGE) over the medium model's parameters,
  against torch's AdamW (default and ``fused=True``) and the torch SAGE optimizers of this project;
- the peak memory of a train step (minisage: ``tracemalloc``, which sees every NumPy allocation;
  torch: the allocation events of ``torch.profiler``) and the optimizer state per parameter;
- the medium train step's matmul GFLOP/s against NumPy's own matmul GFLOP/s on this machine.

Threads: both sides use the same number, ``threads`` (default 1, as the command line sets): NumPy's
BLAS through :func:`minisage.runtime.tuned` (threadpoolctl) and torch through
``torch.set_num_threads``, for the duration of :func:`bench` (both are restored afterwards).

This is a benchmark, never a test: :func:`bench` returns the numbers, and nothing asserts on them.
What they are compared with (the targets) is the report's business (``minisage bench``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy
from threadpoolctl import threadpool_info

import minisage
import minisage.functional as F
from minisage import optim, runtime
from minisage.nn import Transformer, TransformerConfig

#: the optimizer presets timed alone (see _minisage_optimizer and _torch_optimizer)
OPTIMIZERS = ("adamw", "adamw-sage", "adamax-sage")


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

def blas_threads() -> int:
    """The number of threads NumPy's BLAS uses now (threadpoolctl; 1 if it finds no BLAS)."""
    counts = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    return max(counts) if counts else 1


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
        row["peak_ratio"] = row["peak_mb"] / row["torch_peak_mb"]
    row["matmul_gflop"] = shape.matmul_flops() / 1e9
    row["gflops"] = row["matmul_gflop"] / (row["minisage_ms"] / 1e3)
    if with_torch:
        row["torch_gflops"] = row["matmul_gflop"] / (row["torch_ms"] / 1e3)
    return row


def _minisage_optimizer(preset: str, params):
    return optim.make(preset, params, lr=1e-3)


def _torch_optimizer(preset: str, params, fused: bool = False):
    """torch's AdamW (``fused``: its one-kernel CPU path), or this project's torch SAGE."""
    import torch

    from minisage.backends import torch as tb

    if preset == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, fused=fused or None)
    return {"adamw-sage": tb.AdamWSAGE, "adamax-sage": tb.AdamaxSAGE}[preset](params, lr=1e-3)


def optimizer_cases(shape: Shape, dtype: str, reps: int, warmup: int, with_torch: bool,
                    seed: int = 0) -> list[dict]:
    """One optimizer step over the model's parameters, with fixed random gradients; all presets
    and both sides interleaved in one loop, so that every ratio compares the same moments. AdamW
    is also timed against torch's fused AdamW (``torch_fused_ms``, ``fused_ratio``)."""
    model = Transformer(shape.config(dtype), seed=seed)
    rng = np.random.default_rng(seed + 1)
    params = model.parameters()
    for p in params:
        p.grad = (1e-2 * rng.standard_normal(p.shape)).astype(p.dtype)
    count = sum(p.size for p in params)
    opts, fns = {}, {}
    torch_cases = [(preset, False) for preset in OPTIMIZERS] + [("adamw", True)]
    for preset in OPTIMIZERS:
        opts[preset] = _minisage_optimizer(preset, list(params))  # a state of its own
        fns[f"minisage {preset}"] = opts[preset].step
    if with_torch:
        import torch

        for preset, fused in torch_cases:
            twin = [torch.nn.Parameter(torch.tensor(p.data)) for p in params]
            for tp, p in zip(twin, params):
                tp.grad = torch.tensor(p.grad)
            name = f"torch {preset}" + (" fused" if fused else "")
            fns[name] = _torch_optimizer(preset, twin, fused).step
    times = interleaved(fns, reps, warmup)
    rows = []
    for preset, opt in opts.items():
        row = {"case": f"optimizer step, {preset} ({count / 1e6:.2f}M parameters)",
               "preset": preset, "parameters": count}
        mine = {"minisage": times[f"minisage {preset}"], "torch": times.get(f"torch {preset}")}
        row.update(_summary(mine, "minisage", "torch" if with_torch else None))
        if with_torch and f"torch {preset} fused" in times:
            fused = _summary({"minisage": mine["minisage"],
                              "torch": times[f"torch {preset} fused"]}, "minisage", "torch")
            row["torch_fused_ms"], row["fused_ratio"] = fused["torch_ms"], fused["ratio"]
        # this preset's step / minisage's AdamW step, per repetition
        row["over_adamw"] = statistics.median(
            a / b for a, b in zip(times[f"minisage {preset}"], times["minisage adamw"]))
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
          reps: int = 20, warmup: int = 3, threads: int = 1, dtype: str = "float32",
          with_torch: bool | None = None, seed: int = 0,
          progress: Callable[[str], None] | None = None) -> dict:
    """Run every case and return the numbers as a JSON-ready dict: ``environment``, ``train``
    (one row per shape), ``optimizer`` (one row per preset), ``ceiling``. ``threads``: for both
    NumPy's BLAS and torch, during the run. ``with_torch``: None = when torch is installed. The
    ceiling is the last shape's."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"bench: reps must be >= 1 and warmup >= 0, got {reps}, {warmup}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"bench: dtype must be float32 or float64, got {dtype!r}")
    with_torch = _torch_available() if with_torch is None else with_torch
    with runtime.tuned(threads=threads, keep_memory=False), _torch_threads(threads, with_torch):
        env = {
            "machine": f"{_cpu_name()} ({os.cpu_count()} logical cores), {platform.system()}",
            "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "minisage": minisage.__version__, "dtype": dtype,
            "threads": blas_threads(), "reps": reps, "warmup": warmup,
        }
        if with_torch:
            import torch

            env["torch"] = torch.__version__
            env["torch_threads"] = torch.get_num_threads()
        say = progress or (lambda message: None)
        result: dict = {"environment": env, "train": [], "optimizer": []}
        for shape in shapes:
            say(f"train step, {shape.name} ...")
            result["train"].append(train_case(shape, dtype, reps, warmup, with_torch, seed))
        say(f"optimizer steps, {optimizer_shape.name} ...")
        result["optimizer"] = optimizer_cases(optimizer_shape, dtype, reps, warmup, with_torch,
                                              seed)
        say("matmul ceiling ...")
        result["ceiling"] = matmul_ceiling(shapes[-1], dtype, max(reps, 5), with_torch)
    return result


@contextlib.contextmanager
def _torch_threads(n: int, with_torch: bool) -> Iterator[None]:
    """torch uses ``n`` threads within the block (nothing to do without torch)."""
    if not with_torch:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
        f"threads: numpy BLAS {env['threads']}{torch_threads}; "
        f"{env['dtype']}; median of {env['reps']} interleaved repetitions after "
        f"{env['warmup']} warm-up",
        "",
        f"{'case':<58} {'minisage ms':>11} {'torch ms':>9} {'ratio':>6}",
    ]
    for row in result["train"] + result["optimizer"]:
        torch_ms = f"{row['torch_ms']:9.2f}" if "torch_ms" in row else f"{'-':>9}"
        ratio = f"{row['ratio']:6.2f}" if "ratio" in row else f"{'-':>6}"
        lines.append(f"{row['case']:<58} {row['minisage_ms']:11.2f} {torch_ms} {ratio}")
        if "torch_fused_ms" in row:
            lines.append(f"{'  against torch fused=True':<58} {'':11} "
                         f"{row['torch_fused_ms']:9.2f} {row['fused_ratio']:6.2f}")
    lines.append("")
    for row in result["train"]:
        torch_peak = (f", torch {row['torch_peak_mb']:.1f} MiB (ratio {row['peak_ratio']:.2f})"
                      if "torch_peak_mb" in row else "")
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
        lines.append(f"{row['preset']} step / minisage adamw step {row['over_adamw']:.2f}; state: "
                     f"{row['state_arrays_per_param']} array(s) per parameter, "
                     f"{row['state_bytes_per_param']:g} bytes per parameter entry")
    return "\n".join(lines)
