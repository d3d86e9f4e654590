# %% [markdown]
# # Lesson 8: What the multiplier does
#
# SAGE multiplies each entry's learning rate by
#
# $$r = \frac{U}{\hat I + \epsilon}, \qquad U = |I - \hat I|,$$
#
# where $I = |\theta g|$ is the entry's sensitivity and $\hat I$ its (bias-corrected) moving
# average. The paper's reading: an entry whose sensitivity is small (a redundant entry) gets a
# larger $r$, so it trains more and fewer entries are "left behind". This lesson asks what $r$
# actually responds to, in models a laptop can train, and answers with measurements:
#
# 1. $r$ does not see the size of the sensitivity at all (a two-line proof, and a check);
# 2. so $r$ measures the *relative noise* of $I$, and mini-batch noise sets it near one value for
#    every entry;
# 3. an experiment across batch sizes: does $r$ start to follow sensitivity when the gradient noise
#    shrinks?
# 4. what a fair comparison (each optimizer at its own tuned settings) says;
# 5. what would have to be true at a larger scale for the paper's effect to appear.
#
# Every number in the prose below is printed by the code next to it.

# %%
import importlib.util
import sys
from pathlib import Path

if "__file__" not in dir():  # a notebook: its own folder, else lessons/ beside the minisage in use
    package = importlib.util.find_spec("minisage")
    sys.path += [str(Path(package.origin).parents[1] / "lessons")] if package else []
from _lesson import FAST, save  # first: the lesson's process setup

# isort: split
import json
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from minisage import compare, spec
from minisage.train import TrainConfig, mean_ci, train

started = time.perf_counter()

# %% [markdown]
# ## 1. The multiplier is blind to scale
#
# Scale an entry by $c > 0$, keeping its gradient: $I = |c\theta\,g| = c\,|\theta g|$. The average
# $\bar I$ is linear in the $I$'s, so it scales by $c$, and so does its bias correction $\hat I$
# and $U = |I - \hat I|$. Then
#
# $$r' = \frac{cU}{c\hat I + \epsilon} = \frac{U}{\hat I + \epsilon / c}.$$
#
# Up to $\epsilon$, $r$ is unchanged. The same holds when the *loss* is scaled by $c$ (then
# $g \to cg$). So $r$ cannot tell a sensitivity of $10^{-9}$ from one of $10^{-3}$: it only sees
# how $I$ moves relative to its own average. We check it with the spec's official AdamW-SAGE rule
# (`adamw-sage`, per-tensor clipping off so that scaling $g$ is not undone), on 2,000 entries whose
# sizes span six decades, over 30 steps of random gradients. The learning rate is 0, so that
# every run sees the same stream of $(\theta, g)$, scaled or not: we test $r$ as a function of
# that stream.

# %%
rule = spec.make("adamw-sage", lr=1e-3, max_grad_norm=-1)
rng = np.random.default_rng(0)
theta = rng.standard_normal(2000) * 10.0 ** rng.uniform(-3, 3, 2000)  # six decades of sizes
grads = rng.standard_normal((30, 2000))


def multipliers(theta, grads, rule):
    """r of every entry at every step of one run of ``rule`` at lr 0 (the spec's trace)."""
    state, out = rule.init(theta), []
    for g in grads:
        _, state, trace = rule.step(theta, g, state, lr=0.0)
        out.append(trace["lr_multiplier"])
    return np.array(out)  # (steps, entries)


base = multipliers(theta, grads, rule)
print(f"r over 30 steps and 2000 entries: median {np.median(base[1:]):.3f}, "
      f"max {base.max():.3f}")
for label, (t, g) in {"theta x 1000": (1000 * theta, grads),
                      "loss x 100 (g x 100)": (theta, 100 * grads)}.items():
    other = multipliers(t, g, rule)
    print(f"{label:<24}: largest change of r {np.max(np.abs(other - base)):.1e}")
print(f"r at step 1 (bias-corrected average: Ihat = I, so U = 0): max {base[0].max():.1e}")

# %% [markdown]
# The multiplier changes only at the level of rounding and of $\epsilon = 10^{-12}$ (an entry
# whose $\hat I$ came near $\epsilon$ would feel it). A redundant entry and an important one are
# treated alike *unless their sensitivities fluctuate differently*.
#
# ## 2. Noise sets the multiplier
#
# Suppose an entry's sensitivity fluctuates around its mean $\mu$: $I_t = \mu X_t$ with $X_t$ drawn
# independently with mean 1. Once the average has settled ($\hat I \approx \bar I \approx \mu$),
# and because $I_t - \bar I_t = \beta_3 (I_t - \bar I_{t-1})$,
#
# $$r_t \approx \beta_3\, |X_t - 1|, \qquad \mathbb{E}\, r \approx \beta_3\, \mathbb{E}|X - 1|,$$
#
# a property of the *distribution of the relative fluctuation* $X$, not of $\mu$. Mini-batch
# gradients make that distribution nearly the same for every entry: when an entry's gradient is
# dominated by sampling noise, $g \approx \sigma Z$ with $Z$ roughly Gaussian, and
# $I/\mathbb{E} I = |Z| / \mathbb{E}|Z|$ whatever $\theta$ and $\sigma$ are. Then every entry gets
# about the same $r$. We simulate exactly that with the rule itself: 2,000 entries whose means
# span six decades, each with a Gaussian-noise gradient, 300 steps.

# %%
means = 10.0 ** rng.uniform(-6, 0, 2000)
noise_rule = spec.make("adamw-sage", lr=1e-3, max_grad_norm=-1)
state, sims = noise_rule.init(np.ones(2000)), []
for _ in range(300):  # theta = 1 (kept: lr 0 below), g = mean * Z: I = mean * |Z|
    _, state, trace = noise_rule.step(np.ones(2000), means * rng.standard_normal(2000), state,
                                      lr=0.0)
    sims.append(trace["lr_multiplier"])
r_noise = np.mean(sims[100:], axis=0)  # each entry's mean r after the average settled
gaussian = np.abs(rng.standard_normal(1_000_000))
predicted = 0.75 * np.mean(np.abs(gaussian / gaussian.mean() - 1))
rho_noise = stats.spearmanr(means, r_noise).statistic
print(f"pure noise: mean r {r_noise.mean():.3f} (entries' 5-95% range "
      f"{np.quantile(r_noise, 0.05):.3f} to {np.quantile(r_noise, 0.95):.3f}); "
      f"beta3 E|X - 1| = {predicted:.3f}; rank correlation of r with the entry's mean "
      f"sensitivity {rho_noise:+.3f}")

# %% [markdown]
# In the simulation every entry's mean $r$ sits close to the predicted value whatever its mean
# sensitivity, and the rank correlation with sensitivity is about zero: **pure noise gives every
# entry the same multiplier**, the value printed above. SAGE then acts as
# the underlying optimizer with its learning rate scaled by that value, plus a random factor per
# step.
#
# Now a real run. We train the tiny Transformer on `sort` (256 training sequences, batches of 32)
# with the official AdamW-SAGE, and over
# the last steps keep, for every entry of the attention and feed-forward matrices, the
# optimizer's own $\hat I$ and $r$ (its trace: `optimizer.record = True` asks for it) and the
# spread of its sensitivity. If noise sets $r$, an entry's mean $r$ should follow the relative
# spread of its $I$ (its coefficient of variation), not the size of $\hat I$.

# %%
STEPS = 30 if FAST else 100
WINDOW = 15 if FAST else 30  # the last steps, where each entry's I is followed
base_config = TrainConfig(task="sort", optimizer="adamw-sage", labels=256, lr=3e-3, steps=STEPS,
                          batch_size=32, eval_every=STEPS, eval_rows=64, record_every=5,
                          d_model=32, n_layers=2, n_heads=4)


class Window:
    """Keeps the optimizer's trace of every SAGE matrix over the last WINDOW steps."""

    def __init__(self, config):
        self.first = config.steps - WINDOW + 1
        self.traces = []

    def on_gradients(self, step, model, optimizer):
        optimizer.record = step >= self.first

    def on_step_end(self, step, model, optimizer, loss):
        if step >= self.first:
            matrices = {n: t for n, t in optimizer.last_trace.items()
                        if "lr_multiplier" in t and t["lr_multiplier"].ndim == 2}
            self.traces.append({key: np.concatenate([t[key].ravel() for t in matrices.values()])
                                for key in ("sensitivity", "sensitivity_ema_hat",
                                            "lr_multiplier")})


window = Window(base_config)
batch32 = train(base_config, callbacks=[window])  # section 3 reuses this run (batch 32, seed 0)
I = np.array([t["sensitivity"] for t in window.traces])  # (WINDOW, entries)
r_mean = np.mean([t["lr_multiplier"] for t in window.traces], axis=0)
ihat_mean = np.mean([t["sensitivity_ema_hat"] for t in window.traces], axis=0)
live = I.mean(axis=0) > 0
spread = I[:, live].std(axis=0) / I[:, live].mean(axis=0)  # coefficient of variation of I
rho_spread = stats.spearmanr(spread, r_mean[live]).statistic
rho_size = stats.spearmanr(ihat_mean[live], r_mean[live]).statistic
print(f"sort, batch 32, last {WINDOW} steps, {live.sum()} entries: median mean-r "
      f"{np.median(r_mean):.3f}; rank correlation of r with the spread of I {rho_spread:+.3f}, "
      f"with the size of Ihat {rho_size:+.3f}")

fig, axes = plt.subplots(1, 3, figsize=(14, 4))
axes[0].scatter(means, r_noise, s=3, alpha=0.4)
axes[0].axhline(predicted, color="k", lw=1, label=f"beta3 E|X-1| = {predicted:.2f}")
axes[0].set(xscale="log", xlabel="mean sensitivity of the entry", ylabel="mean r",
            title="Simulation: gradient = pure noise")
axes[1].scatter(ihat_mean[live], r_mean[live], s=2, alpha=0.3)
axes[1].set(xscale="log", xlabel="mean Ihat over the window", ylabel="mean r",
            title=f"Training: r against sensitivity (Spearman {rho_size:+.2f})")
axes[2].scatter(spread, r_mean[live], s=2, alpha=0.3, color="C1")
axes[2].set(xlabel="coefficient of variation of I over the window", ylabel="mean r",
            title=f"Training: r against I's spread (Spearman {rho_spread:+.2f})")
for ax in axes[:2]:
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
axes[2].grid(alpha=0.3)
save(fig, "08_scale_and_noise.png")

# %% [markdown]
# **What to see:** in training, each entry's mean $r$ tracks how much its sensitivity jumps around
# (right panel) far more closely than how large it is (middle panel): compare the two printed
# rank correlations. With batches of 32 the fluctuation is mostly sampling noise, and the median
# multiplier lands near the pure-noise value of the simulation.
#
# ## 3. Less noise: does $r$ start to follow sensitivity?
#
# If noise is what flattens $r$, shrinking it should let $r$ carry information. We train the same
# model on the same 256 training sequences with batches of 8, 32, 128 and 256 (the whole training
# set: no sampling noise at all), everything else fixed, and measure with the recorder every 5
# steps the median $r$ and the rank correlation of $\hat I$ and $r$ over all attention and
# feed-forward entries, averaged over the second half of training; 95% intervals over seeds.

# %%
BATCHES = (8, 32, 256) if FAST else (8, 32, 128, 256)
SEEDS = (0,) if FAST else (0, 1, 2)
measured = {b: {"spearman": [], "r_median": [], "by_decile": []} for b in BATCHES}
for batch in BATCHES:
    for seed in SEEDS:
        config = replace(base_config, batch_size=batch, seed=seed)
        result = batch32 if config == base_config else train(config)
        late = [m for m in result.recorder.mechanism if m["step"] > STEPS // 2]
        measured[batch]["spearman"].append(np.mean([m["spearman"] for m in late]))
        measured[batch]["r_median"].append(np.mean([m["r_median"] for m in late]))
        measured[batch]["by_decile"].append(np.mean([m["r_by_decile"] for m in late], axis=0))
for batch in BATCHES:
    rho, rho_half = mean_ci(measured[batch]["spearman"])
    r, r_half = mean_ci(measured[batch]["r_median"])
    print(f"batch {batch:>3}: median r {r:.3f} +- {r_half:.3f}, "
          f"Spearman(Ihat, r) {rho:+.3f} +- {rho_half:.3f} (95% CI over {len(SEEDS)} seeds)")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for color, batch in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], BATCHES):
    curves = np.array(measured[batch]["by_decile"])
    mean = curves.mean(axis=0)
    axes[0].plot(range(1, 11), mean, "o-", color=color, label=f"batch {batch}")
    if len(SEEDS) > 1:
        half = stats.t.ppf(0.975, len(SEEDS) - 1) * stats.sem(curves, axis=0)
        axes[0].fill_between(range(1, 11), mean - half, mean + half, color=color, alpha=0.2)
rho = [mean_ci(measured[b]["spearman"]) for b in BATCHES]
axes[1].errorbar(BATCHES, [m for m, _ in rho], yerr=[0 if np.isnan(h) else h for _, h in rho],
                 fmt="o-", capsize=4)
axes[1].axhline(0, color="gray", lw=0.8)
axes[0].set(xlabel="decile of Ihat (1: least sensitive)", ylabel="mean r",
            title="r by sensitivity decile (second half of training)")
axes[1].set(xscale="log", xlabel="batch size (256 = the whole training set)",
            ylabel="Spearman(Ihat, r)", title="Does r follow sensitivity?")
for ax in axes:
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8, title="band: 95% CI over seeds", title_fontsize=7)
save(fig, "08_batch_size.png")
spearman_full = mean_ci(measured[BATCHES[-1]]["spearman"])[0]
print(f"with the whole training set per step, Spearman(Ihat, r) = {spearman_full:+.3f}: r "
      f"{'rises' if spearman_full > 0 else 'falls'} with sensitivity")

# %% [markdown]
# **What to see:** with small batches the curves are flat (every decile gets the same $r$) and
# the rank correlation sits near zero, as section 2 predicts. As the batch grows, the printed
# numbers show what structure appears and in which direction: a *negative* correlation is the
# paper's mechanism (low-sensitivity entries get relatively larger steps); a positive one would
# mean SAGE speeds up the sensitive entries instead. Two things change together, though: the
# ordering of $r$ and its level. Without sampling noise the median $r$ falls far below its
# pure-noise value, so SAGE at an unchanged learning rate then trains *every* entry much more
# slowly, the least sensitive ones a little less slowly.
#
# ## 4. A fair comparison
#
# Section 2 says that at small batch sizes SAGE behaves like its base optimizer with a learning
# rate scaled by roughly the pure-noise value of $r$. Compared at the *same* learning rate, SAGE
# therefore just takes smaller steps, and any difference (a smaller generalization gap, a slower
# fit) is a learning-rate effect. A fair comparison lets each optimizer choose its own learning
# rate. `minisage compare --tune` does that on a validation split; the committed tuning record of
# the `finetune` task holds the grid, the seeds and every score:

# %%
path = compare.record_path("finetune")
if path.exists():
    record = json.loads(path.read_text())
    for name, scores in record["scores"].items():
        cells = ", ".join(f"lr {s['lr']:.0e}" + (f" b3 {s['beta3']}" if "beta3" in s else "")
                          + f": {s['val_accuracy']:.3f}" for s in scores)
        print(f"{name:<11} validation accuracy (mean of seeds {record['seeds']}): {cells}")
    chosen = record["selected"]
    ratio = chosen["adamw-sage"]["lr"] / chosen["bert-adamw"]["lr"]
    effective = ratio * np.median(r_mean)
    print(f"selected: {chosen}; SAGE's lr is {ratio:g}x AdamW's, so its typical effective lr "
          f"(x median r {np.median(r_mean):.2f} from section 2) is {effective:.2f}x AdamW's: "
          + ("the tuning undid the scaling" if 0.8 <= effective <= 1.25 else
             "the tuning did not undo the scaling: SAGE's best setting takes smaller steps"
             if effective < 0.8 else "SAGE's best setting takes larger steps than AdamW's"))
else:
    print(f"no tuning record at {path}: run `minisage compare --tune`")
print(f"lesson 8 ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# If SAGE were only AdamW with a smaller learning rate, tuning would pick a SAGE learning rate
# larger by about $1/r$, and the two effective rates would meet: the last printed line says
# whether they did. When they do not, SAGE's best setting on the validation split is one that
# steps more cautiously than AdamW's best, and any difference in the results mixes the multiplier's
# structure with that caution. Either way, the test results of the tuned comparison
# (`minisage compare`, in the README) are the honest answer to "is SAGE better here?": a
# difference, or a tie, with its paired confidence interval.
#
# ## 5. What would have to be true at a larger scale
#
# For SAGE to do what the paper describes, $r$ must differ *systematically* between entries, and
# in the right direction: the relative fluctuation of sensitivity must be larger for redundant
# entries than for important ones. Sections 2 and 3 show what stands in the way at toy scale:
# with noise-dominated gradients every entry's relative fluctuation has the same distribution, so
# $r$ is flat. The effect can appear only where
#
# - the gradient of many entries is *not* noise-dominated: large batches, or a loss with a strong,
#   steady signal (fine-tuning a pretrained model from a well-defined starting point is the
#   paper's setting);
# - sensitivities of redundant entries move in bursts (rarely-used features, heads that switch on
#   late) while important entries' sensitivities are steady; and
# - enough steps pass for the average $\bar I$ to settle, so $r$ measures fluctuation rather than
#   the warm-up of the average itself.
#
# Whether BERT-scale fine-tuning meets these conditions is an empirical question this laptop
# cannot answer; what it can show is the measurement to make: $r$ against $\hat I$ by decile, and
# the rank correlation, as `minisage compare` plots for every run.
