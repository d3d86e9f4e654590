"""Figures shared by ``minisage compare`` and the lessons (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _mean_band(ax, steps, runs, color, label):
    """Mean over runs with a band of +-1 standard error."""
    runs = np.asarray(runs, dtype=float)
    mean = runs.mean(axis=0)
    sem = runs.std(axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(mean)
    ax.plot(steps, mean, color=color, label=label)
    ax.fill_between(steps, mean - sem, mean + sem, color=color, alpha=0.2)


def learning_curves(histories: dict[str, list[list[dict]]], path, title="") -> str:
    """Validation loss and accuracy against step: mean over seeds, band = +-1 standard error.
    ``histories``: optimizer -> one history (list of evaluation rows) per seed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for color, (name, runs) in zip(COLORS, histories.items()):
        steps = [row["step"] for row in runs[0]]
        for ax, key in zip(axes, ("val_loss", "val_accuracy")):
            _mean_band(ax, steps, [[row[key] for row in h] for h in runs], color, f"{name} (val)")
        axes[1].plot(steps, np.mean([[row["train_accuracy"] for row in h] for h in runs], axis=0),
                     color=color, linestyle=":", label=f"{name} (train)")
    axes[0].set(xlabel="training step", ylabel="validation loss (nats)", title="Loss")
    axes[1].set(xlabel="training step", ylabel="accuracy", title="Accuracy")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def _short(layer: str) -> str:
    """``blocks.0.attention.self.query.weight`` -> ``0 attention.self.query``."""
    return layer.replace("blocks.", "").replace(".weight", "").replace(".", " ", 1)


def sensitivity_heatmap(rows_by_optimizer: dict[str, list[dict]], path,
                        quantity="sensitivity_ema", title="") -> str:
    """log10 of each layer's median ``quantity`` (rows) against training step (columns), one
    panel per optimizer, on one shared color scale."""
    names = list(rows_by_optimizer)
    grids = {}
    for name in names:
        rows = [r for r in rows_by_optimizer[name] if r["quantity"] == quantity]
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        steps = sorted({r["step"] for r in rows})
        grid = np.full((len(layers), len(steps)), np.nan)
        for r in rows:
            grid[layers.index(r["layer"]), steps.index(r["step"])] = r["q50"]
        grids[name] = (layers, steps, np.log10(np.maximum(grid, 1e-30)))
    finite = np.concatenate([g[np.isfinite(g)].ravel() for _, _, g in grids.values()])
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0, 1)
    height = 1.2 + 0.28 * max(len(g[0]) for g in grids.values())
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), height), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        layers, steps, grid = grids[name]
        first, last = (steps[0], steps[-1]) if len(steps) > 1 else (steps[0] - 0.5, steps[0] + 0.5)
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                          extent=(first, last, len(layers) - 0.5, -0.5))
        ax.set_yticks(range(len(layers)), [_short(layer) for layer in layers] if i == 0 else [],
                      fontsize=7)
        ax.set(xlabel="training step", title=name)
    fig.colorbar(image, ax=axes[0].tolist(), label=f"log10 median {quantity} per layer")
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def distributions(samples: dict[str, dict[int, np.ndarray]], path, xlabel, title="",
                  log=True, value_range=None) -> str:
    """Histograms of a quantity at a few steps, one panel per optimizer. ``samples``:
    optimizer -> step -> values. With ``log``, values are shown as log10 (zeros dropped)."""
    names = list(samples)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        for color, (step, values) in zip(COLORS, sorted(samples[name].items())):
            values = np.asarray(values, dtype=float)
            if log:
                values = np.log10(values[values > 0])
            ax.hist(values, bins=60, range=value_range, histtype="step", color=color,
                    density=True, label=f"step {step}")
        ax.set(xlabel=f"log10 {xlabel}" if log else xlabel, ylabel="density", title=name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def pruning(curves: dict[str, list[list[dict]]], path, title="") -> str:
    """Validation accuracy against the fraction of SAGE-matrix entries zeroed (lowest sensitivity
    first, solid; lowest magnitude, dashed): mean over seeds, band = +-1 standard error."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for color, (name, runs) in zip(COLORS, curves.items()):
        for criterion, style in (("sensitivity", "-"), ("magnitude", "--")):
            per_seed = [[r for r in run if r["criterion"] == criterion] for run in runs]
            fractions = [r["fraction"] for r in per_seed[0]]
            accuracy = np.array([[r["val_accuracy"] for r in run] for run in per_seed])
            mean = accuracy.mean(axis=0)
            sem = (accuracy.std(axis=0, ddof=1) / np.sqrt(len(accuracy))
                   if len(accuracy) > 1 else 0 * mean)
            ax.plot(fractions, mean, style, color=color, label=f"{name}, by {criterion}")
            ax.fill_between(fractions, mean - sem, mean + sem, color=color, alpha=0.15)
    ax.set(xlabel="fraction of attention/FFN weights zeroed", ylabel="validation accuracy",
           title=title or "Pruning the lowest-scoring entries")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
