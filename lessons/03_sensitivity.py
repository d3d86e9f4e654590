# %% [markdown]
# # Lesson 3: Sensitivity
#
# SAGE's one new quantity is the **sensitivity** of a parameter entry,
#
# $$I_j = |\theta_j \, g_j|, \qquad g_j = \frac{\partial L}{\partial \theta_j}.$$
#
# Where does it come from? Set entry $j$ to zero, i.e. move it by $-\theta_j$. To first order
# (Taylor), the loss changes by
#
# $$L(\theta - \theta_j e_j) - L(\theta) \approx -\theta_j\, g_j, \qquad\text{so}\qquad
#   |\Delta L_j| \approx I_j .$$
#
# $I_j$ estimates how much the model would lose without that entry: a large $I_j$ marks an
# important entry, a small one a redundant one. This lesson tests that estimate on a small
# trained Transformer, measures how noisy it is when the gradient comes from a mini-batch, and
# watches $I$, its moving average $\bar I$ and the uncertainty $U = |I - \bar I|$ during training.
# The pieces are `spec.sensitivity`, `spec.sensitivity_ema` and `spec.uncertainty`.

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

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from minisage import no_grad, spec
from minisage.tasks import make_task
from minisage.train import (
    TrainConfig,
    batch_for_step,
    batch_sensitivity,
    loss_and_logits,
    sage_matrices,
    train,
)

started = time.perf_counter()


# %% [markdown]
# ## A small model, trained while we watch
#
# The task is `sort`: a causal language model reads five digits and a separator and writes them
# sorted. The model is minisage's Transformer (2 blocks, width 32), trained with the official
# AdamW (`bert-adamw`) by `minisage.train.train`: batch, loss, backward, global gradient
# clipping, optimizer step. To look inside we hand it a *callback*, an object whose
# `on_gradients(step, model, optimizer)` runs after the gradients are clipped and before the
# update, and whose `on_step_end(step, model, optimizer, loss)` runs after the update. With it we
# follow the sensitivity of every entry of one feed-forward matrix through training with the
# spec's SAGE pieces ($\beta_3 = 0.75$, the paper's default), and stop once early on to test the
# Taylor estimate on a barely trained model.

# %%
STEPS = 40 if FAST else 400
EARLY = 20  # the step at which we test the estimate on a barely trained model
config = TrainConfig(task="sort", optimizer="bert-adamw", lr=1e-3, steps=STEPS, batch_size=32,
                     weight_decay=0.01, clip_norm=1.0, schedule="linear", warmup=0.1, seed=0,
                     eval_every=STEPS, record_every=0)  # evaluate once, at the end
task = make_task(config.task)
WATCHED = "blocks.0.intermediate.dense.weight"
beta3 = 0.75

# A fixed probe batch of training rows: the loss and the gradient of the Taylor test.
probe_ids, probe_targets = task.train.ids[:128], task.train.targets[:128]
N_ENTRIES = 30 if FAST else 240  # entries tested (each costs one forward pass)


def taylor_test(model, seed=0):
    """Zero sampled entries of the attention/FFN matrices one at a time; return the predicted
    first-order change -theta*g and the measured change of the probe-batch loss."""
    model.zero_grad()
    loss, _ = loss_and_logits(model, task, probe_ids, probe_targets)
    loss.backward()
    base = loss.item()
    matrices = sage_matrices(model)
    rng = np.random.default_rng(seed)
    predicted, measured = [], []
    for _ in range(N_ENTRIES):
        _, p = matrices[rng.integers(len(matrices))]
        idx = tuple(int(rng.integers(n)) for n in p.shape)
        theta, g = p.data[idx], p.grad[idx]
        predicted.append(-theta * g)
        p.data[idx] = 0.0
        with no_grad():
            measured.append(loss_and_logits(model, task, probe_ids, probe_targets)[0].item()
                            - base)
        p.data[idx] = theta  # restore the entry
    model.zero_grad()
    return np.array(predicted), np.array(measured)


class Watch:
    """The training callback: I, Ibar and U of every entry of the WATCHED matrix at every step,
    and the Taylor test after step EARLY."""

    def __init__(self):
        self.history = {"I": [], "Ibar": [], "U": []}
        self.ema = None  # Ibar, zero before the first step
        self.early = None

    def on_gradients(self, step, model, optimizer):
        watched = dict(model.named_parameters())[WATCHED]
        # before the update: I = |theta * g|, Ibar = beta3 Ibar + (1 - beta3) I, U = |I - Ibar|
        I = spec.sensitivity(watched.data, watched.grad)
        previous = np.zeros_like(I) if self.ema is None else self.ema
        self.ema = spec.sensitivity_ema(previous, I, beta3)
        self.history["I"].append(I)
        self.history["Ibar"].append(self.ema)
        self.history["U"].append(spec.uncertainty(I, self.ema))

    def on_step_end(self, step, model, optimizer, loss):
        if step == EARLY:
            self.early = taylor_test(model)


watch = Watch()
result = train(config, task, callbacks=[watch])
model, early = result.model, watch.early
watched = dict(model.named_parameters())[WATCHED]
history = {k: np.array(v) for k, v in watch.history.items()}  # (steps, 128, 32) each
trained = taylor_test(model)
print(f"trained {STEPS} steps: validation accuracy {result.final['val_accuracy']:.3f} "
      f"(loss {result.final['val_loss']:.3f}) on {task.description}")

# %% [markdown]
# ## 1. Predicted against measured loss change
#
# For sampled entries of the attention and feed-forward matrices we zero the entry, measure the
# loss on the probe batch, and put the entry back. The first-order prediction is $-\theta_j g_j$
# with the gradient on the same batch.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.4), sharex=True, sharey=True)
for ax, (label, (pred, meas)) in zip(axes, ((f"early (step {EARLY})", early),
                                          (f"trained (step {STEPS})", trained))):
    same_sign = np.sign(pred) == np.sign(meas)
    rho = stats.spearmanr(np.abs(pred), np.abs(meas))[0]
    within2 = np.mean((np.abs(meas) <= 2 * np.abs(pred)) & (np.abs(meas) >= np.abs(pred) / 2))
    print(f"{label}: Spearman rank correlation of I = |theta g| with |measured change| = "
          f"{rho:.3f}; sign of -theta*g right for {same_sign.mean():.0%}; measured within a "
          f"factor 2 of the prediction for {within2:.0%} of {len(pred)} entries")
    ax.loglog(np.abs(pred[same_sign]), np.abs(meas[same_sign]), "o", ms=3.5, alpha=0.6,
              label="sign predicted correctly")
    ax.loglog(np.abs(pred[~same_sign]), np.abs(meas[~same_sign]), "x", ms=4, color="C3",
              label="sign wrong")
    lo = max(min(np.abs(pred).min(), np.abs(meas).min()), 1e-14)
    hi = max(np.abs(pred).max(), np.abs(meas).max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
    ax.set(xlabel="predicted |ΔL| = I = |θ·g|  (nats)", title=f"{label}, Spearman ρ = {rho:.2f}")
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=8)
axes[0].set_ylabel("measured |ΔL| when the entry is zeroed  (nats)")
save(fig, "03_taylor_check.png")

# %% [markdown]
# **What to see:** early in training the points lie on the diagonal across several decades: the
# gradient is large and the first-order term dominates. In the trained model the gradient has
# shrunk, the second-order term $\tfrac12 H_{jj} \theta_j^2$ (always a loss *increase* near a
# minimum) matters: the cloud spreads around the diagonal and some signs flip. The printed
# rank correlation says how much of the *ordering* survives, and the ordering is what pruning
# by sensitivity (lesson 6) uses.
#
# ## 2. The mini-batch noise in $I$
#
# In training, $g$ comes from a mini-batch of 32 rows, not from the whole data. The same trained
# model, many different mini-batches: how much does each entry's $I$ move? We compare with $I$
# from the gradient over 512 rows (`minisage.train.batch_sensitivity`).

# %%
N_BATCHES = 20 if FAST else 60
full = batch_sensitivity(model, task, n=512)[WATCHED]  # (128, 32)
per_batch = []
for k in range(N_BATCHES):
    ids, targets = batch_for_step(task, seed=1, step=k + 1, batch_size=32)
    model.zero_grad()
    loss_and_logits(model, task, ids, targets)[0].backward()
    per_batch.append(spec.sensitivity(watched.data, watched.grad))
model.zero_grad()
per_batch = np.array(per_batch)  # (batches, 128, 32)
cv = per_batch.std(axis=0) / per_batch.mean(axis=0)
inflation = per_batch.mean(axis=0) / full
print(f"{WATCHED}: across {N_BATCHES} mini-batches of 32, the median coefficient of variation "
      f"(std / mean) of an entry's I is {np.median(cv):.2f}")
print(f"the mean mini-batch I is a median {np.median(inflation):.1f} times the I of the 512-row "
      "gradient: |theta * g| of a noisy g is biased upward, since |mean| <= mean of |.|")

order = np.argsort(full.ravel())
picks = order[np.linspace(0, len(order) - 1, 8).astype(int)]  # from lowest to highest full I
fig, ax = plt.subplots(figsize=(8, 4.2))
for k, flat in enumerate(picks):
    values = per_batch.reshape(N_BATCHES, -1)[:, flat]
    jitter = np.random.default_rng(k).uniform(-0.15, 0.15, N_BATCHES)
    ax.semilogy(np.full(N_BATCHES, k) + jitter, values, "o", ms=3, alpha=0.5, color="C0",
                label="I on one mini-batch of 32" if k == 0 else None)
    ax.semilogy([k - 0.3, k + 0.3], [full.ravel()[flat]] * 2, "-", color="C3", lw=2.5,
                label="I from the 512-row gradient" if k == 0 else None)
ax.set_xticks(range(len(picks)))
ax.set_xticklabels(["({}, {})".format(*np.unravel_index(f, full.shape)) for f in picks],
                   fontsize=8)
ax.set(xlabel=f"entry (row, column) of {WATCHED}, ordered by 512-row I",
       ylabel="sensitivity I = |θ·g|  (nats)", title="Mini-batch noise in the sensitivity")
ax.grid(alpha=0.3, axis="y")
ax.legend(fontsize=8)
save(fig, "03_minibatch_noise.png")

# %% [markdown]
# **What to see:** each column of blue dots is one entry's $I$ on different mini-batches; it
# spreads over a decade or more. For the low-sensitivity entries (left) the red bar, the $I$ of a
# less noisy gradient, sits far *below* the dots: their mini-batch sensitivity is mostly noise.
# A single step's $I$ is an unreliable measure of importance. SAGE therefore smooths it,
# $\bar I = \beta_3 \bar I + (1-\beta_3) I$, and uses the fluctuation $U = |I - \bar I|$ as a
# measure of how uncertain that importance is.
#
# ## 3. $I$, $\bar I$ and $U$ over training, for a few entries
#
# The four entries of the watched matrix with the highest, two middle and the lowest final
# $\bar I$ (recorded during the training run above, every step).

# %%
final_ema = history["Ibar"][-1].ravel()
order = np.argsort(final_ema)
chosen = [order[-1], order[len(order) * 2 // 3], order[len(order) // 3], order[0]]
steps = np.arange(1, STEPS + 1)
fig, axes = plt.subplots(2, 2, figsize=(11, 6.4), sharex=True)
for ax, flat in zip(axes.ravel(), chosen):
    idx = np.unravel_index(flat, watched.shape)
    series = {k: v[(slice(None), *idx)] for k, v in history.items()}
    ax.semilogy(steps, series["I"], ".", ms=2.5, color="0.55", label="I (each step)")
    ax.semilogy(steps, series["Ibar"], color="C0", label="Ibar (EMA, β3 = 0.75)")
    ax.semilogy(steps, series["U"], color="C1", lw=0.8, alpha=0.8, label="U = |I − Ibar|")
    ratio = np.median(series["U"][STEPS // 2:] / series["Ibar"][STEPS // 2:])
    ax.set(title=f"entry {tuple(int(i) for i in idx)}: median U/Ibar (2nd half) {ratio:.2f}",
           ylabel="nats")
    ax.grid(alpha=0.3)
for ax in axes[1]:
    ax.set_xlabel("training step")
axes[0, 0].legend(fontsize=8)
fig.suptitle(f"Sensitivity of four entries of {WATCHED} during AdamW training")
save(fig, "03_sensitivity_over_steps.png")
ratios = history["U"][STEPS // 2:] / history["Ibar"][STEPS // 2:]
print(f"over the second half of training, U / Ibar (the multiplier SAGE would use) has median "
      f"{np.median(ratios):.2f} over all {final_ema.size} entries of {WATCHED}")
print(f"lesson 3 ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# **What to see:** the gray dots ($I$ at each step) jump around by a decade from step to step;
# $\bar I$ (blue) is a smooth trace through them, and $U$ (orange) is of the same order as
# $\bar I$ for every entry, large or small. That ratio $U / \bar I$ is exactly SAGE's
# learning-rate multiplier (lesson 4): it is large where the sensitivity is small compared with its
# own noise, and small where it is large and steady.
