"""Figures of ``minisage compare`` and the lessons (matplotlib, Agg backend, PNG files).

Every band is a 95% confidence interval of the mean over seeds (Student t), and each figure's
legend or title says so; with one seed there is no band. A panel that shows a SAGE quantity (the
multiplier r) for an optimizer that does not use it draws that optimizer dashed and says
"not used by it": there it is what SAGE would compute on that run's trajectory.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minisage import spec  # noqa: E402
from minisage.stats import ci_half_width  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
BAND = "band: 95% CI over seeds"


def _save(fig, path) -> str:
    # a layout engine, not bbox_inches="tight": that draws the figure twice (measure, then save)
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def mean_band(values) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the first axis (seeds) and the half-width of its 95% Student-t interval (zeros
    for one seed, where there is no interval)."""
    values = np.asarray(values, dtype=float)
    mean = values.mean(axis=0)
    if len(values) < 2:
        return mean, np.zeros_like(mean)
    return mean, ci_half_width(values, 0.95, axis=0)


def _line(ax, x, runs, color, label, style="-", band=True):
    """The mean of ``runs`` (seeds x points) against ``x`` with its 95% CI band."""
    mean, half = mean_band(runs)
    ax.plot(x, mean, style, color=color, label=label, marker="o" if len(x) == 1 else None)
    if band and np.any(half):
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.18, linewidth=0)


def learning_curves(histories: dict[str, list[list[dict]]], path, title="",
                    val_label="val") -> str:
    """Validation loss and accuracy against step, mean over seeds with a 95% CI band; dotted:
    the training accuracy. ``histories``: optimizer -> one history (evaluation rows) per seed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for color, (name, runs) in zip(COLORS, histories.items()):
        steps = [row["step"] for row in runs[0]]
        for ax, key in zip(axes, ("val_loss", "val_accuracy")):
            _line(ax, steps, [[row[key] for row in h] for h in runs], color,
                  f"{name} ({val_label})")
        _line(axes[1], steps, [[row["train_accuracy"] for row in h] for h in runs], color,
              f"{name} (train)", style=":", band=False)
    axes[0].set(xlabel="training step", ylabel=f"{val_label} loss (nats)", title="Loss")
    axes[1].set(xlabel="training step", ylabel="accuracy", title="Accuracy")
    for ax in axes:
        ax.legend(fontsize=8, title=BAND, title_fontsize=7)
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
    height = 1.2 + 0.28 * max(max(len(g[0]) for g in grids.values()), 1)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), height), squeeze=False)
    image = None
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        layers, steps, grid = grids[name]
        if not steps:
            ax.set(title=f"{name}: nothing recorded")
            continue
        first, last = (steps[0], steps[-1]) if len(steps) > 1 else (steps[0] - 0.5, steps[0] + 0.5)
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                          extent=(first, last, len(layers) - 0.5, -0.5))
        ax.set_yticks(range(len(layers)), [_short(layer) for layer in layers] if i == 0 else [],
                      fontsize=7)
        ax.set(xlabel="training step", title=name)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label=f"log10 median {quantity} per layer")
    fig.suptitle(title)
    return _save(fig, path)


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


def pruning(curves: dict[str, list[list[dict]]], path, title="", ax=None) -> str | None:
    """Accuracy against the fraction of SAGE-matrix entries zeroed (lowest sensitivity first,
    solid; lowest magnitude, dashed), mean over seeds with a 95% CI band."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.5, 4))
    for color, (name, runs) in zip(COLORS, curves.items()):
        for criterion, style in (("sensitivity", "-"), ("magnitude", "--")):
            per_seed = [[r for r in run if r["criterion"] == criterion] for run in runs]
            fractions = [r["fraction"] for r in per_seed[0]]
            _line(ax, fractions, [[r["val_accuracy"] for r in run] for run in per_seed], color,
                  f"{name}, by {criterion}", style)
    ax.set(xlabel="fraction of attention/FFN weights zeroed", ylabel="validation accuracy",
           title=title or "Pruning the lowest-scoring entries")
    ax.legend(fontsize=8, title=BAND, title_fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path) if own else None


# ----- the figures of minisage compare -----------------------------------------------------------
def _by_optimizer(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        out.setdefault(r["optimizer"], []).append(r)
    return out


def _uses_r(name: str) -> bool:
    return spec.rule_class(name).sage


def _r_label(name: str) -> tuple[str, str]:
    """Label and line style of optimizer ``name`` in a panel of r."""
    if _uses_r(name):
        return name, "-"
    return f"{name} (r as SAGE would compute it; not used by it)", "--"


def mechanism(records: list[dict], path, title="") -> str:
    """Four panels: r per decile of Ihat; the rank correlation of Ihat and r over training; the
    effective learning rate over training; how far entries moved per decile of their starting
    sensitivity. Mean over seeds, 95% CI bands."""
    runs = _by_optimizer(records)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.6))
    (ax_dec, ax_rho), (ax_lr, ax_move) = axes
    deciles = np.arange(1, 11)
    for color, (name, rs) in zip(COLORS, runs.items()):
        label, style = _r_label(name)
        # r per decile of Ihat, averaged over the recorded steps of each run
        _line(ax_dec, deciles, [np.mean([m["r_by_decile"] for m in r["mechanism"]], axis=0)
                                for r in rs], color, label, style)
        steps = [m["step"] for m in rs[0]["mechanism"]]
        _line(ax_rho, steps, [[m["spearman"] for m in r["mechanism"]] for r in rs], color,
              label, style)
        _line(ax_lr, steps, [[m["effective_lr"] for m in r["mechanism"]] for r in rs], color,
              f"{name}: " + ("lr_t x median r" if _uses_r(name) else "lr_t (r = 1)"))
        _line(ax_move, deciles, [r["movement"] for r in rs], color, name)
    ax_dec.set(xlabel="decile of Ihat (1: least sensitive)", ylabel="mean r",
               title="Does r follow sensitivity? (r: a SAGE quantity)")
    ax_rho.axhline(0, color="gray", lw=0.8)
    ax_rho.set(xlabel="training step", ylabel="Spearman rank correlation",
               title="Rank correlation of Ihat and r (SAGE quantity)")
    ax_lr.set(xlabel="training step", ylabel="learning rate", yscale="log",
              title="Effective learning rate of the SAGE matrices")
    ax_move.set(xlabel="decile of sensitivity I at step 1 (1: least sensitive)",
                ylabel="mean |theta_end - theta_start|", yscale="log",
                title="How far entries moved, by starting sensitivity")
    for ax in axes.ravel():
        ax.legend(fontsize=7, title=BAND, title_fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def sensitivity_spread(records: list[dict], path, title="") -> str:
    """The sensitivity at the end of training (gradient over 512 training rows): the share of
    entries below a tenth of the median and the share of the total held by the top 10%, as means
    with 95% CIs; and the pruning curves with 95% CI bands."""
    runs = _by_optimizer(records)
    fig, (ax_bar, ax_prune) = plt.subplots(1, 2, figsize=(11.5, 4.2),
                                           gridspec_kw={"width_ratios": [1, 1.4]})
    keys = (("share_below_tenth_of_median", "share of entries\nbelow 0.1 x median"),
            ("top10_share_of_total", "share of total I\nheld by the top 10%"))
    width = 0.8 / max(len(runs), 1)
    for i, (color, (name, rs)) in enumerate(zip(COLORS, runs.items())):
        for j, (key, _) in enumerate(keys):
            mean, half = mean_band([[r["concentration"][key]] for r in rs])
            ax_bar.bar(j + (i - (len(runs) - 1) / 2) * width, mean[0], width, yerr=half[0],
                       color=color, capsize=4, label=name if j == 0 else None)
    ax_bar.set_xticks(range(len(keys)), [text for _, text in keys], fontsize=8)
    ax_bar.set(ylabel="fraction", title="Sensitivity at the end of training")
    ax_bar.legend(fontsize=8, title="error bars: 95% CI over seeds", title_fontsize=7)
    ax_bar.grid(alpha=0.3, axis="y")
    pruning({name: [r["pruning"] for r in rs] for name, rs in runs.items()}, None, ax=ax_prune)
    fig.suptitle(title)
    return _save(fig, path)


def compare_figure_calls(out: Path, summary: dict, records: list[dict]) -> list[tuple]:
    """Every figure of ``minisage compare``, as ``(function, args)`` pairs to call (in any
    process: each writes one file into ``out`` and returns its path)."""
    runs = _by_optimizer(records)
    n = len(next(iter(runs.values())))
    task = summary["task"]
    seed0 = {name: rs[0] for name, rs in runs.items()}

    def only(*keys):  # what a figure reads of each record (the rest would cross processes too)
        return [{k: r[k] for k in ("optimizer", "seed", *keys)} for r in records]

    calls = [
        (partial(learning_curves, title=f"{task}: mean over {n} seed(s); {BAND}"),
         ({name: [r["history"] for r in rs] for name, rs in runs.items()},
          out / "learning_curves.png")),
        (partial(mechanism, title=f"{task}: what SAGE's multiplier does ({n} seed(s); {BAND})"),
         (only("mechanism", "movement"), out / "mechanism.png")),
        (partial(sensitivity_spread,
                 title=f"{task}: redundancy at the end of training ({n} seed(s))"),
         (only("concentration", "pruning"), out / "sensitivity.png")),
        (partial(sensitivity_heatmap, quantity="sensitivity_ema",
                 title="Median Ibar of each attention/FFN matrix (seed 0)"),
         ({name: r["layers"] for name, r in seed0.items()}, out / "sensitivity_over_time.png")),
    ]
    samples = {(name if _uses_r(name) else f"{name} (not used by it)"):
               {int(s): h["lr_multiplier"] for s, h in r["histograms"].items()}
               for name, r in seed0.items()}
    if any(samples.values()):
        calls.append((partial(distributions, xlabel="multiplier r", log=False,
                              title="The SAGE multiplier r at three checkpoints (seed 0)"),
                      (samples, out / "multiplier_distribution.png")))
    return calls
