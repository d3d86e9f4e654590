"""``minisage compare``: the main job. Train a task with several optimizers over several seeds and
compare them honestly: mean +- 95% confidence interval, Welch's t-test, figures of what SAGE does
to the sensitivities, and a pruning curve.

Defaults: the ``finetune`` task (masked-LM pretraining once, then fine-tuning every optimizer and
seed from the same pretrained weights), ``bert-adamw`` (the official AdamW, the paper's baseline)
against ``adamw-sage`` (the same code with the SAGE multiplier), both at the same learning rate.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, replace

import numpy as np

from minisage import plots
from minisage.tasks import make_task
from minisage.train import (
    TrainConfig,
    mean_ci,
    nan_to_none,
    pretrained_state,
    pruning_curve,
    train,
    welch_p,
)

PRUNE_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)
DEFAULT_OPTIMIZERS = ("bert-adamw", "adamw-sage")


def compare(task_name: str = "finetune", optimizers=DEFAULT_OPTIMIZERS, seeds: int = 5,
            steps: int | None = None, lrs: dict | None = None, out: str | None = None,
            progress: bool = False, log=print) -> dict:
    """Run every (optimizer, seed), write metrics and figures into ``out``; returns the summary."""
    base = TrainConfig(task=task_name)
    if steps is not None:
        base = replace(base, steps=steps)
    # five evaluations per run: the curves need no more, and evaluation costs as much as training
    base = replace(base, eval_every=max(1, base.steps // 5))
    out = out or os.path.join("runs", f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out, exist_ok=True)
    task = make_task(task_name)
    started = time.perf_counter()
    init_state = None
    if task.pretrain is not None:
        tick = time.perf_counter()
        init_state = pretrained_state(base, task, progress=progress)
        log(f"pretrained on {task.pretrain.description} in {time.perf_counter() - tick:.1f} s")

    runs = {name: [] for name in optimizers}
    for name in optimizers:
        for seed in range(seeds):
            config = replace(base, optimizer=name, seed=seed, lr=(lrs or {}).get(name, base.lr))
            result = train(config, task, init_state=init_state, progress=progress,
                           label=f"{name} s{seed}")
            curve = []
            for criterion in ("sensitivity", "magnitude"):
                curve += pruning_curve(result.model, task, PRUNE_FRACTIONS, criterion)
            runs[name].append({"result": result, "pruning": curve})

    summary = summarize(task, base, runs)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(out, task, runs, summary)
    log(format_table(summary))
    log(f"\nwrote metrics and figures to {out}")
    return summary


def summarize(task, base: TrainConfig, runs: dict) -> dict:
    baseline = next(iter(runs))
    rows = {}
    for name, results in runs.items():
        finals = [r["result"].final for r in results]
        row = {"lr": results[0]["result"].config.lr, "seeds": len(results)}
        for key in ("val_accuracy", "val_loss", "gap"):
            values = [f[key] for f in finals]
            row[key], row[f"{key}_ci95"] = mean_ci(values)
            row[f"{key}_per_seed"] = values
        row["steps_per_second"] = float(np.mean([r["result"].steps_per_second for r in results]))
        rows[name] = row
    for name, row in rows.items():
        for key in ("val_accuracy", "val_loss"):
            row[f"{key}_p_vs_{baseline}"] = (
                welch_p(rows[baseline][f"{key}_per_seed"], row[f"{key}_per_seed"])
                if name != baseline else float("nan"))
    return {"task": task.name, "description": task.description, "baseline": baseline,
            "config": asdict(base), "optimizers": rows}


def format_table(summary: dict) -> str:
    baseline = summary["baseline"]
    header = (f"{'optimizer':<14} {'lr':>8} {'val accuracy':>18} {'val loss':>18} "
              f"{'p (acc)':>8} {'p (loss)':>8} {'steps/s':>8}")
    lines = [f"task {summary['task']}: {summary['description']}",
             f"mean +- 95% CI over {next(iter(summary['optimizers'].values()))['seeds']} seeds; "
             f"p: Welch's t-test against {baseline}", header, "-" * len(header)]
    def cell(row, key):
        return f"{row[key]:.4f} +- {row[key + '_ci95']:.4f}"

    for name, row in summary["optimizers"].items():
        p_acc, p_loss = row[f"val_accuracy_p_vs_{baseline}"], row[f"val_loss_p_vs_{baseline}"]
        lines.append(f"{name:<14} {row['lr']:>8.1e} {cell(row, 'val_accuracy'):>18} "
                     f"{cell(row, 'val_loss'):>18} {_p(p_acc):>8} {_p(p_loss):>8} "
                     f"{row['steps_per_second']:>8.1f}")
    return "\n".join(lines)


def _p(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def write_outputs(out: str, task, runs: dict, summary: dict) -> list[str]:
    with open(os.path.join(out, "summary.json"), "w") as f:  # strict JSON: nan -> null
        json.dump(nan_to_none(summary), f, indent=2, allow_nan=False)
    _write_rows(os.path.join(out, "metrics.csv"), [
        {"optimizer": name, "seed": seed, **row}
        for name, results in runs.items() for seed, r in enumerate(results)
        for row in r["result"].history
    ])
    _write_rows(os.path.join(out, "pruning.csv"), [
        {"optimizer": name, "seed": seed, **row}
        for name, results in runs.items() for seed, r in enumerate(results) for row in r["pruning"]
    ])
    _write_rows(os.path.join(out, "sensitivity.csv"), [
        {"optimizer": name, "seed": seed, **row}
        for name, results in runs.items() for seed, r in enumerate(results)
        if r["result"].recorder is not None for row in r["result"].recorder.rows
    ])
    first_seed = {name: results[0]["result"] for name, results in runs.items()}
    recorded = {n: r.recorder for n, r in first_seed.items() if r.recorder is not None}
    figures = [
        plots.learning_curves({n: [r["result"].history for r in rs] for n, rs in runs.items()},
                              os.path.join(out, "learning_curves.png"),
                              title=f"{task.name}: mean over seeds, band = +-1 s.e."),
        plots.pruning({n: [r["pruning"] for r in rs] for n, rs in runs.items()},
                      os.path.join(out, "pruning.png")),
    ]
    if recorded:
        figures += [
            plots.sensitivity_heatmap(
                {n: rec.rows for n, rec in recorded.items()},
                os.path.join(out, "sensitivity_over_time.png"),
                title="Smoothed sensitivity Ibar of each attention/FFN matrix (seed 0)"),
            plots.distributions(
                {n: {s: h["sensitivity_ema"] for s, h in rec.histograms.items()}
                 for n, rec in recorded.items()},
                os.path.join(out, "sensitivity_distribution.png"), xlabel="Ibar",
                title="Distribution of Ibar over attention/FFN entries (seed 0)"),
            plots.distributions(
                {n: {s: h["lr_multiplier"] for s, h in rec.histograms.items()}
                 for n, rec in recorded.items()},
                os.path.join(out, "multiplier_distribution.png"), xlabel="r = U / (Ibar + eps)",
                log=False, value_range=(0, 3),
                title="The SAGE multiplier r = U / Ibar, paper form: in [0, b3/(1-b3)] (seed 0)"),
        ]
    return figures


def _write_rows(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
