# %% [markdown]
# # Lesson 5: Sensitivity dynamics in a tiny Transformer
#
# Lessons 3 and 4 looked at single entries and single steps. Here we train the whole tiny
# Transformer with the official AdamW (`bert-adamw`) and with the official AdamW-SAGE
# (`adamw-sage`, SAGE on the attention and feed-forward weights), over several seeds, and watch
# what SAGE does to the sensitivities:
#
# - learning curves (does it train as well?);
# - a per-layer heatmap of the smoothed sensitivity $\bar I$ over training;
# - the distribution of $\bar I$ over all attention/feed-forward entries at three checkpoints;
# - the distribution of the multiplier $r = U/\bar I$ over time.
#
# Everything comes from `minisage.train.train`, whose `SensitivityRecorder` measures $I$, $\bar I$,
# $U$ and $r$ with the official AdamW-SAGE rule in both runs (its bias-corrected average
# $\hat I$, $\epsilon^2$ in the ratio, $\beta_3 = 0.75$), so the AdamW run shows what SAGE
# *would* do there, and the SAGE run exactly what it did.
#
# **Settings, fixed before running** (not tuned to any outcome): the `sort` task, 2 blocks of
# width 32, batch 32, the same base learning rate `1e-3` for both optimizers with 10% warmup and
# linear decay, weight decay 0.01, global gradient clipping at 1.0, seeds 0, 1, 2 (fast mode:
# fewer steps and seeds 0, 1). The paper recommends a 2–5 times larger lr for SAGE; we keep them
# equal so that the comparison changes one thing only, and say so in the result.

# %%
import importlib.util
import sys
from pathlib import Path

if "__file__" not in dir():  # a notebook: its own folder, else lessons/ beside the minisage in use
    package = importlib.util.find_spec("minisage")
    sys.path += [str(Path(package.origin).parents[1] / "lessons")] if package else []
from _lesson import FAST, FIGURES, show  # first: sets up minisage before NumPy

# isort: split
import time
from dataclasses import replace

import numpy as np

from minisage import plots
from minisage.tasks import make_task
from minisage.train import TrainConfig, mean_ci, train, welch_p

started = time.perf_counter()


# %%
STEPS = 20 if FAST else 300
SEEDS = (0, 1) if FAST else (0, 1, 2)
OPTIMIZERS = {"AdamW (bert-adamw)": "bert-adamw", "AdamW-SAGE (adamw-sage)": "adamw-sage"}
base = TrainConfig(task="sort", lr=1e-3, steps=STEPS, batch_size=32, weight_decay=0.01,
                   clip_norm=1.0, schedule="linear", warmup=0.1, eval_every=10 if FAST else 30,
                   eval_rows=256 if FAST else 1024,
                   record_every=5 if FAST else 10, beta3=0.75, d_model=32, n_layers=2, n_heads=4)
task = make_task(base.task)
print(f"task: {task.description}")
results = {label: [] for label in OPTIMIZERS}
for label, preset in OPTIMIZERS.items():
    for seed in SEEDS:
        result = train(replace(base, optimizer=preset, seed=seed), task)
        results[label].append(result)
        print(f"{label:<24} seed {seed}: val accuracy {result.final['val_accuracy']:.3f}, "
              f"val loss {result.final['val_loss']:.3f}, {result.steps_per_second:.0f} steps/s")

# %% [markdown]
# ## 1. Learning curves
#
# Mean over seeds, with a band of the 95% confidence interval; dotted lines are the accuracy
# on a fixed part of the training split. The final numbers come with 95% confidence intervals
# (Student t over seeds, `minisage.train.mean_ci`) and Welch's t-test (`welch_p`).

# %%
path = plots.learning_curves(
    {label: [r.history for r in runs] for label, runs in results.items()},
    FIGURES / "05_learning_curves.png",
    title=f"sort task, same lr for both, mean over {len(SEEDS)} seeds (band: 95% CI)")
show(path)
finals = {label: {key: [r.final[key] for r in runs] for key in ("val_accuracy", "val_loss")}
          for label, runs in results.items()}
(adamw, sage) = OPTIMIZERS
for key in ("val_accuracy", "val_loss"):
    for label in OPTIMIZERS:
        mean, half = mean_ci(finals[label][key])
        print(f"final {key:<12} {label:<24} {mean:.4f} ± {half:.4f} (95% CI, {len(SEEDS)} seeds)")
    print(f"  Welch's t-test, {sage} vs {adamw}: p = "
          f"{welch_p(finals[adamw][key], finals[sage][key]):.3f}")
gap = np.mean(finals[sage]["val_accuracy"]) - np.mean(finals[adamw]["val_accuracy"])
print(f"Result at this lr and step budget: SAGE's final validation accuracy is {gap:+.4f} "
      f"against AdamW's ({'higher' if gap > 0 else 'lower'}), averaged over {len(SEEDS)} seeds.")

# %% [markdown]
# **What to see:** whether the two bands separate, and where. At the same base learning rate
# SAGE's multiplier (lesson 4) is mostly below 1, so it effectively trains with a smaller step;
# the printed intervals say whether the final difference is distinguishable from seed noise with
# this many seeds.
#
# ## 2. Per-layer sensitivity over training
#
# One row per attention or feed-forward matrix, one column per recorded step, colour = the
# layer's median $\bar I$ on a log scale (seed 0). Both panels share one colour scale.

# %%
first = {label: runs[0] for label, runs in results.items()}
path = plots.sensitivity_heatmap(
    {label: r.recorder.rows for label, r in first.items()}, FIGURES / "05_sensitivity_heatmap.png",
    quantity="sensitivity_ema",
    title="Median smoothed sensitivity Ibar of each attention/FFN matrix (seed 0)")
show(path)


def median_of(rows, quantity, step):
    values = [r["q50"] for r in rows if r["quantity"] == quantity and r["step"] == step]
    return float(np.median(values))


for label, r in first.items():
    steps = sorted({row["step"] for row in r.recorder.rows})
    early, late = median_of(r.recorder.rows, "sensitivity_ema", steps[0]), median_of(
        r.recorder.rows, "sensitivity_ema", steps[-1])
    print(f"{label:<24} median over layers of the median Ibar: {early:.2e} at step {steps[0]}, "
          f"{late:.2e} at step {steps[-1]}")

# %% [markdown]
# **What to see:** sensitivity is not spread evenly: some matrices (rows) are brighter than
# others all through training, and the pattern shifts as the model learns: rows brighten when
# their gradients grow and darken again when the loss flattens and the learning rate decays.
# Comparing the panels shows how SAGE changes that pattern at the level of whole layers; the
# printed medians summarise each panel's first and last column.
#
# ## 3. The distribution of $\hat I$ at three checkpoints
#
# All entries of the attention and feed-forward matrices (a random sample of up to 20000),
# at 10%, 40% and 100% of training, as a histogram of $\log_{10} \hat I$ (the bias-corrected
# average, the one in the ratio; after the first few dozen steps it equals $\bar I$).

# %%
path = plots.distributions(
    {label: {s: h["sensitivity_ema_hat"] for s, h in r.recorder.histograms.items()}
     for label, r in first.items()},
    FIGURES / "05_ibar_distribution.png", xlabel="Ihat (nats)",
    title="Distribution of Ihat over attention/FFN entries (seed 0; log10 axis)")
show(path)
for label, r in first.items():
    for step, h in sorted(r.recorder.histograms.items()):
        q10, q50, q90 = np.quantile(h["sensitivity_ema_hat"], [0.1, 0.5, 0.9])
        print(f"{label:<24} step {step:>3}: Ihat median {q50:.2e}, 10-90% range spans "
              f"{np.log10(q90 / q10):.1f} decades")

# %% [markdown]
# **What to see:** $\hat I$ spans several decades, which is why the axis is logarithmic: a few
# entries matter a lot and most matter little. The paper's claim is that SAGE, by giving
# low-sensitivity entries relatively larger steps, makes the sensitivities more uniform — that
# would show as a narrower SAGE histogram. The printed decade spans measure the width.
#
# ## 4. The multiplier's distribution over time
#
# The same checkpoints for $r = U / (\hat I + \epsilon^2)$, on a linear axis (it lies in
# $[0, \max(1, (\beta_3 - \beta_3^t)/(1-\beta_3))] \subset [0, 3]$; docs/spec.md section 5).

# %%
path = plots.distributions(
    {label: {s: h["lr_multiplier"] for s, h in r.recorder.histograms.items()}
     for label, r in first.items()},
    FIGURES / "05_multiplier_distribution.png", xlabel="multiplier r = U / (Ihat + eps^2)",
    log=False, value_range=(0, 3),
    title="The SAGE multiplier at three checkpoints (seed 0; measured in both runs)")
show(path)
for label, r in first.items():
    for step, h in sorted(r.recorder.histograms.items()):
        lr_multiplier = h["lr_multiplier"]
        print(f"{label:<24} step {step:>3}: r median {np.median(lr_multiplier):.3f}, "
              f"fraction above 1: {np.mean(lr_multiplier > 1):.1%}")
print(f"lesson 5 ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# **What to see:** most of the mass is below 1, with a thin tail above it (the bound is 3): at
# the same base learning rate, SAGE slows most entries down and speeds up few. The density drops
# sharply at exactly 1, and that is arithmetic, not training: once the bias correction has faded
# ($\hat I \approx \bar I$), when this step's $I$ is below the previous average,
# $U = \beta_3(\bar I_{\text{prev}} - I) \le \beta_3 \bar I_{\text{prev}} \le \bar I$, so
# $r \le 1$; only an entry whose sensitivity jumps *up* gets $r > 1$.
#
# In the AdamW run the histogram is what SAGE's multiplier *would* have been; in the SAGE run it
# is what was applied (the recorder runs the optimizer's own rule, so it is the same number).
# Lesson 8 asks what sets $r$.
