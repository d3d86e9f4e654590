"""How long one optimizer step takes: this package's optimizers against ``torch.optim.AdamW``.

:func:`optimizer_step_times` builds a BERT-shaped torch model (the twin of minisage's
Transformer), gives every parameter a fixed random gradient, and times one ``step()`` of
``AdamWSAGE``, ``AdamaxSAGE`` and ``AdamSAGE`` (each with the official split: SAGE on the
attention and feed-forward layers) and of ``torch.optim.AdamW`` in its three implementations
(default, ``foreach=True``, ``fused=True``). Repetitions are interleaved (each round steps
every optimizer once, in a rotating order) so that every ratio compares the same moments of a
shared machine; the numbers are medians. Targets live with ``minisage bench``, not here.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from minisage.backends.torch.optimizers import (
    AdamaxSAGE,
    AdamSAGE,
    AdamWSAGE,
    sage_param_groups,
)
from minisage.backends.torch.twin import TorchTransformer
from minisage.nn.transformer import TransformerConfig

#: model sizes: "bert-10m" is BERT-shaped with about 10.5M parameters (134 tensors, 60% of
#: them in the attention and feed-forward layers); "tiny" is for tests
SIZES: dict[str, TransformerConfig] = {
    "bert-10m": TransformerConfig(vocab_size=8000, max_len=128, d_model=256, n_layers=8,
                                  n_heads=4, num_classes=0, dtype="float32"),
    "tiny": TransformerConfig(vocab_size=11, max_len=4, d_model=8, n_layers=1, n_heads=2,
                              num_classes=0, dtype="float32"),
}
#: the baseline of the ratios
BASELINE = "torch.optim.AdamW (default)"


def _optimizers(model: torch.nn.Module) -> dict[str, torch.optim.Optimizer]:
    """Each optimizer over its own copy of the parameters (same values, same gradients)."""
    out: dict[str, torch.optim.Optimizer] = {}

    def copy() -> list[tuple[str, torch.nn.Parameter]]:
        named = []
        for name, p in model.named_parameters():
            q = torch.nn.Parameter(p.detach().clone())
            q.grad = p.grad.detach().clone()
            named.append((name, q))
        return named

    lr = 1e-4
    out["AdamWSAGE"] = AdamWSAGE(sage_param_groups(copy(), on_no_sage="raise"), lr=lr)
    out["AdamaxSAGE"] = AdamaxSAGE(sage_param_groups(copy(), on_no_sage="raise"), lr=lr)
    out["AdamSAGE"] = AdamSAGE(sage_param_groups(copy(), on_no_sage="raise"), lr=lr)
    out[BASELINE] = torch.optim.AdamW([p for _, p in copy()], lr=lr)
    out["torch.optim.AdamW (foreach)"] = torch.optim.AdamW([p for _, p in copy()], lr=lr,
                                                           foreach=True)
    out["torch.optim.AdamW (fused)"] = torch.optim.AdamW([p for _, p in copy()], lr=lr,
                                                         fused=True)
    return out


def _interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int
                 ) -> dict[str, list[float]]:
    """Seconds per call of each function, ``reps`` rounds after ``warmup`` untimed ones; each
    round calls every function once, the order rotating from round to round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            fns[name]()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
    return times


def optimizer_step_times(size: str = "bert-10m", *, reps: int = 15, warmup: int = 3,
                         threads: int | None = 1, seed: int = 0) -> list[dict]:
    """One row per optimizer: the median seconds of one ``step()`` and the median ratio to
    ``torch.optim.AdamW``'s default step (per round, so both come from the same moments).

    ``size``: a key of :data:`SIZES`. ``threads``: torch's intra-op threads during the run
    (restored after; None leaves them alone). Each row also says the model's parameter count,
    the threads and the 1-minute load average at the start (a shared machine's numbers are only
    as good as its quiet).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = TorchTransformer(SIZES[size])
        with torch.no_grad():
            for p in model.parameters():
                p.grad = 1e-2 * torch.randn_like(p)
        opts = _optimizers(model)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        times = _interleaved({name: opt.step for name, opt in opts.items()}, reps, warmup)
    finally:
        torch.set_num_threads(before)
    count = sum(p.numel() for p in model.parameters())
    rows = []
    for name, ts in times.items():
        rows.append({
            "optimizer": name, "median_s": statistics.median(ts),
            "over_adamw_default": statistics.median(a / b for a, b in zip(ts, times[BASELINE])),
            "parameters": count, "threads": torch.get_num_threads() if threads is None
            else threads, "load_1min": load, "reps": reps,
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows as a small text table."""
    head = (f"one optimizer step, {rows[0]['parameters'] / 1e6:.2f}M parameters, "
            f"{rows[0]['threads']} thread(s), load {rows[0]['load_1min']:.2f}, "
            f"median of {rows[0]['reps']}")
    width = max(len(r["optimizer"]) for r in rows)
    lines = [head, f"{'optimizer':<{width}}  {'ms':>8}  {'/ AdamW default':>15}"]
    for r in rows:
        lines.append(f"{r['optimizer']:<{width}}  {1e3 * r['median_s']:8.2f}  "
                     f"{r['over_adamw_default']:15.2f}")
    return "\n".join(lines)
