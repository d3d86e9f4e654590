# %% [markdown]
# # Lesson 6: Redundancy — the paper's analysis at toy scale
#
# The paper's title, "No Parameters Left Behind", is a claim about **redundancy**: plain
# training leaves many parameters with tiny sensitivity (they could be removed at little cost),
# and SAGE, by giving those entries relatively larger steps, trains them into use. Two
# predictions follow, as we read the argument:
#
# 1. **Pruning.** Zero the fraction $f$ of attention/feed-forward entries with the lowest
#    sensitivity $I = |\theta g|$. If a SAGE-trained model has fewer redundant entries, the same
#    $f$ should cost it *more* accuracy than an AdamW-trained one.
# 2. **Generalization.** The paper reports better fine-tuning results with SAGE; a smaller gap
#    between training and validation accuracy would be one sign of it.
#
# We test both on minisage's fine-tuning task, the setting of the paper's experiments in
# miniature: a small Transformer is pretrained once as a masked language model on random walks,
# then fine-tuned to classify which of two step distributions produced a walk, from 256 labeled
# walks — a task where a model can fit the training set long before it generalizes.
#
# **Settings, fixed before running, not tuned to any outcome:** pretraining 400 steps (AdamW,
# lr 3e-3), then fine-tuning 200 steps from the same pretrained weights with `bert-adamw` and with
# `adamw-sage` at the **same** base learning rate 1e-3, 10% warmup and linear decay, weight decay
# 0.01, gradient clipping 1.0, float32, seeds 0–3; pruning fractions from
# `minisage.compare.PRUNE_FRACTIONS`, sensitivity measured on the training set.
# Fast mode runs the same code with fewer steps, two seeds and three fractions; its numbers
# mean little.
#
# Whatever comes out is the result. Four seeds at toy scale give wide confidence intervals, and
# a difference that the intervals do not separate is reported as no difference.

# %%
import importlib.util
import sys
from pathlib import Path

if "__file__" not in dir():  # a notebook: its own folder, else lessons/ beside the minisage in use
    package = importlib.util.find_spec("minisage")
    sys.path += [str(Path(package.origin).parents[1] / "lessons")] if package else []
from _lesson import FAST, save  # first: sets up minisage before NumPy

# isort: split
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np

from minisage.compare import PRUNE_FRACTIONS
from minisage.tasks import make_task
from minisage.train import (
    TrainConfig,
    mean_ci,
    pretrained_state,
    pruning_curve,
    train,
    welch_p,
)

started = time.perf_counter()


# %%
SEEDS = (0, 1) if FAST else (0, 1, 2, 3)
FRACTIONS = (0.0, 0.5, 0.9) if FAST else PRUNE_FRACTIONS
OPTIMIZERS = {"AdamW (bert-adamw)": "bert-adamw", "AdamW-SAGE (adamw-sage)": "adamw-sage"}
base = TrainConfig(task="finetune", labels=256, lr=1e-3, steps=30 if FAST else 200, batch_size=32,
                   weight_decay=0.01, clip_norm=1.0, schedule="linear", warmup=0.1,
                   eval_every=30 if FAST else 200, eval_rows=256 if FAST else 1024,
                   record_every=0, d_model=32, n_layers=2, dtype="float32",
                   n_heads=4, pretrain_steps=60 if FAST else 400, pretrain_lr=3e-3)
task = make_task(base.task, n_train=base.labels)
print(f"task: {task.description}")
tick = time.perf_counter()
pretrained = pretrained_state(base, task)
print(f"pretrained ({base.pretrain_steps} masked-LM steps) in {time.perf_counter() - tick:.1f} s")

runs = {label: [] for label in OPTIMIZERS}
for label, preset in OPTIMIZERS.items():
    for seed in SEEDS:
        result = train(replace(base, optimizer=preset, seed=seed), task, init_state=pretrained)
        curve = pruning_curve(result.model, task, FRACTIONS, criterion="sensitivity",
                              split=task.val.head(256) if FAST else task.val)
        runs[label].append({"final": result.final, "curve": curve})
        print(f"{label:<24} seed {seed}: train accuracy {result.final['train_accuracy']:.3f}, "
              f"val accuracy {result.final['val_accuracy']:.3f}")

# %% [markdown]
# ## 1. The pruning curve
#
# `minisage.train.pruning_curve` ranks all entries of the attention and feed-forward matrices
# together by $I = |\theta g|$ (the gradient over the training set), zeroes the lowest fraction
# $f$, measures validation accuracy, and restores the model. Because the two optimizers reach
# different accuracies before any pruning, the fair comparison is the **drop** from each model's
# own unpruned accuracy. Bands and error bars are 95% confidence intervals over seeds
# (`minisage.train.mean_ci`); p-values are Welch's t-test (`welch_p`).

# %%
fractions = np.array(FRACTIONS)
accuracy = {label: np.array([[row["val_accuracy"] for row in r["curve"]] for r in rs])
            for label, rs in runs.items()}  # (seeds, fractions)
drop = {label: acc[:, :1] - acc for label, acc in accuracy.items()}
(adamw, sage) = OPTIMIZERS

print(f"{'fraction zeroed':>15} | " + " | ".join(f"{label + ' drop':>34}" for label in OPTIMIZERS)
      + " | Welch p")
for j, f in enumerate(fractions):
    cells = []
    for label in OPTIMIZERS:
        mean, half = mean_ci(drop[label][:, j])
        cells.append(f"{mean:+.3f} ± {half:.3f} (acc {accuracy[label][:, j].mean():.3f})")
    p = welch_p(drop[adamw][:, j], drop[sage][:, j])
    print(f"{f:>15.2f} | " + " | ".join(f"{c:>34}" for c in cells) + f" | {p:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
for color, label in zip(("C0", "C1"), OPTIMIZERS):
    for ax, values in zip(axes, (accuracy[label], drop[label])):
        stats = np.array([mean_ci(values[:, j]) for j in range(len(fractions))])
        ax.plot(fractions, stats[:, 0], "o-", color=color, ms=4, label=label)
        ax.fill_between(fractions, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1],
                        color=color, alpha=0.18)
axes[0].axhline(0.5, color="k", ls=":", lw=1, label="chance (2 balanced classes)")
axes[0].set(xlabel="fraction of attention/FFN entries zeroed (lowest sensitivity first)",
            ylabel="validation accuracy", title="Accuracy after pruning")
axes[1].axhline(0, color="k", lw=0.8)
axes[1].set(xlabel="fraction of attention/FFN entries zeroed (lowest sensitivity first)",
            ylabel="accuracy lost (unpruned − pruned)", title="Drop from each model's own accuracy")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle(f"Pruning by sensitivity: mean over {len(SEEDS)} seeds, band = 95% CI")
save(fig, "06_pruning.png")

# %% [markdown]
# **What to see:** where the curves start (the unpruned accuracy), how far each falls as more
# entries are zeroed, and whether the bands of the right panel separate. The prediction was a
# steeper SAGE curve on the right; the table above gives each fraction's drop with its interval
# and p-value. The one summary we fixed in advance is each seed's drop averaged over all pruned
# fractions; the verdict below is computed from it.

# %%
# The summary fixed in advance: each seed's drop averaged over all pruned fractions (f > 0).
summary = {label: d[:, 1:].mean(axis=1) for label, d in drop.items()}
m_a, h_a = mean_ci(summary[adamw])
m_s, h_s = mean_ci(summary[sage])
p_sum = welch_p(summary[adamw], summary[sage])
if abs(m_s - m_a) > h_a + h_s:
    verdict = ("the intervals do not overlap: SAGE loses more, as predicted." if m_s > m_a else
               "the intervals do not overlap: SAGE loses less, against the prediction.")
else:
    verdict = "the intervals overlap: no difference is shown at this scale."
print(f"Mean accuracy drop over the pruned fractions: AdamW {m_a:.3f} ± {h_a:.3f}, SAGE "
      f"{m_s:.3f} ± {h_s:.3f} (95% CI; Welch p = {p_sum:.3f}); {verdict}")

# %% [markdown]
# ## 2. The generalization gap
#
# Training accuracy (on the 256 labeled walks) minus validation accuracy, at the end of
# fine-tuning. A smaller gap is only good news together with a validation accuracy that is not
# lower: a model that has not yet fit its training set also has a small gap.

# %%
metrics = {label: {key: np.array([r["final"][key] for r in rs])
                   for key in ("train_accuracy", "val_accuracy", "gap")}
           for label, rs in runs.items()}
for key in ("train_accuracy", "val_accuracy", "gap"):
    for label in OPTIMIZERS:
        mean, half = mean_ci(metrics[label][key])
        print(f"{key:<15} {label:<24} {mean:.3f} ± {half:.3f} (95% CI, {len(SEEDS)} seeds)")
    print(f"  Welch's t-test, {sage} vs {adamw}: p = "
          f"{welch_p(metrics[adamw][key], metrics[sage][key]):.3f}")

fig, ax = plt.subplots(figsize=(8, 4))
keys = ("train_accuracy", "val_accuracy", "gap")
for k, (color, label) in enumerate(zip(("C0", "C1"), OPTIMIZERS)):
    for i, key in enumerate(keys):
        values = metrics[label][key]
        x = i + (k - 0.5) * 0.3
        mean, half = mean_ci(values)
        ax.errorbar(x, mean, yerr=half, fmt="s", color=color, capsize=5, ms=7,
                    label=f"{label}: mean ± 95% CI" if i == 0 else None)
        ax.plot(np.full(len(values), x + 0.08), values, ".", color=color, alpha=0.6,
                label=f"{label}: one seed" if i == 0 else None)
ax.set_xticks(range(len(keys)))
ax.set_xticklabels(["training accuracy", "validation accuracy", "gap (train − val)"])
ax.set(ylabel="accuracy (fraction)", title="End of fine-tuning, same lr for both")
ax.grid(alpha=0.3, axis="y")
ax.legend(fontsize=7, loc="center right")
save(fig, "06_generalization_gap.png")

ALPHA = 0.05  # significance level, fixed in advance
diff = {key: metrics[sage][key].mean() - metrics[adamw][key].mean() for key in keys}
p_val = {key: welch_p(metrics[adamw][key], metrics[sage][key]) for key in keys}
print("SAGE minus AdamW: " + ", ".join(f"{key} {diff[key]:+.3f} (p = {p_val[key]:.3f})"
                                         for key in keys))
val_better = diff["val_accuracy"] > 0 and p_val["val_accuracy"] < ALPHA
val_worse = diff["val_accuracy"] < 0 and p_val["val_accuracy"] < ALPHA
smaller_gap = diff["gap"] < 0 and p_val["gap"] < ALPHA
fits_less = diff["train_accuracy"] < 0 and p_val["train_accuracy"] < ALPHA
if val_better:
    verdict = "SAGE reaches a higher validation accuracy: better generalization at this scale."
elif smaller_gap and fits_less and not val_worse:
    verdict = ("SAGE's gap is smaller, but because it fits the training set less, with no "
               "higher validation accuracy: that is slower fitting, not better generalization.")
elif val_worse:
    verdict = "SAGE reaches a lower validation accuracy at this lr and step budget."
else:
    verdict = "no difference in validation accuracy or gap is shown at this scale."
print(f"Verdict (alpha = {ALPHA}): {verdict}")
print(f"lesson 6 ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# **What to see:** the squares are the means with their 95% intervals, the dots single seeds.
# Read the gap together with the two accuracies next to it: a gap that shrinks because training
# accuracy fell is underfitting, not better generalization. The printed p-values say which
# differences four seeds can resolve.
#
# **Honest summary.** This is the paper's analysis at a scale where everything runs in seconds
# on a laptop: a Transformer with tens of thousands of parameters, one synthetic task, a few
# hundred steps, four seeds, and one learning rate shared by both optimizers where the paper
# tunes each. A null or reversed result here does not refute the paper, and a positive one would
# not confirm it; what the lesson shows is how to ask the question — predictions stated first,
# settings fixed first, intervals on every number — and what the answer is at this scale.
