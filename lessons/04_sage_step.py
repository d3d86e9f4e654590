# %% [markdown]
# # Lesson 4: SAGE step by step
#
# SAGE gives every parameter entry its own learning rate. On top of an Adam-style step it computes
#
# $$I = |\theta \cdot g|, \qquad \bar I \leftarrow \beta_3 \bar I + (1-\beta_3) I, \qquad
#   U = |I - \bar I|, \qquad r = \frac{U}{\bar I + \epsilon_s},$$
#
# and multiplies the step of each entry by its $r$. This lesson runs **every line of one step of
# the official AdamW-SAGE** (preset `adamw-sage`, a transcription of `UnstructAwareAdamW` in the
# official code) on a 2 x 3 example and checks the result against `rule.step`; makes visible two
# facts that follow from the equations (the first step is zero; a zero entry never moves) and
# why the official code uses SAGE on attention and feed-forward weights only; looks at the
# multiplier's distribution in a tiny Transformer; and compares the paper's form with the
# official code's.

# %%
import importlib.util
import sys
from pathlib import Path

if "__file__" not in dir():  # a notebook: its own folder, else lessons/ beside the minisage in use
    package = importlib.util.find_spec("minisage")
    sys.path += [str(Path(package.origin).parents[1] / "lessons")] if package else []
from _lesson import FAST, save  # first: sets up minisage before NumPy

# isort: split
import math
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np

from minisage import spec
from minisage.spec.split import SAGE_PATTERNS
from minisage.tasks import make_task
from minisage.train import TrainConfig, loss_and_logits, train

started = time.perf_counter()


# %% [markdown]
# ## 1. Every line of one `adamw-sage` step
#
# The official rule, in order (docs/spec.md section 3; `help(spec.rule_class("adamw-sage"))`):
#
# 1. `t += 1`; clip the gradient of this tensor to norm `max_grad_norm` (1.0 by default);
# 2. Adam moments $m = \beta_1 m + (1-\beta_1) g$, $v = \beta_2 v + (1-\beta_2) g^2$, and
#    `denom` $= \sqrt v + \epsilon$ (no bias correction inside);
# 3. $I = |\theta g|$ (the parameter *before* the update),
#    $\bar I = \beta_3 \bar I + (1-\beta_3) I$;
# 4. the official code bias-corrects the sensitivity average, $\hat I = \bar I / (1-\beta_3^t)$,
#    then $U = |I - \hat I|$ and $r = U / (\hat I + \epsilon^2)$ — note $\epsilon^2$;
# 5. the step size $s = \mathrm{lr}_t \cdot r \cdot \sqrt{1-\beta_2^t} / (1-\beta_1^t)$ and
#    $\theta \leftarrow \theta - s \cdot m / \text{denom}$;
# 6. decoupled weight decay after the step: $\theta \leftarrow \theta - \mathrm{lr}\cdot
#    \mathrm{wd}\cdot\theta$.
#
# The example has one entry that is exactly zero. We take two steps, each line computed with the
# spec's public pieces and then compared with what `rule.step` returns.

# %%
rule = spec.make("adamw-sage", lr=0.1, weight_decay=0.01)  # official defaults otherwise
h = rule.hparams
b1, b2 = h["betas"]
b3, eps, lr, wd = h["beta3"], h["eps"], h["lr"], h["weight_decay"]
print(rule)

theta = np.array([[0.5, -1.0, 0.0],
                  [2.0, 0.1, -0.3]])
gradients = [np.array([[0.8, 0.3, -0.5], [0.2, -1.2, 0.4]]),
             np.array([[0.1, 0.6, -0.2], [0.3, -0.9, 0.5]])]
state = rule.init(theta)

for g_raw in gradients:
    t = state["step"] + 1
    print(f"\n===== step t = {t} =====")
    g = spec.clip_per_tensor(g_raw, h["max_grad_norm"])
    print(f"1. ||g|| = {np.linalg.norm(g_raw):.4f} -> clipped to norm "
          f"{np.linalg.norm(g):.4f}:\n{g}")
    m = b1 * state["exp_avg"] + (1 - b1) * g
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
    denom = np.sqrt(v) + eps
    print(f"2. m = b1 m + (1 - b1) g:\n{m}\n   v = b2 v + (1 - b2) g^2:\n{v}")
    I = spec.sensitivity(theta, g)
    Ibar = spec.sensitivity_ema(state["sensitivity_ema"], I, b3)
    print(f"3. I = |theta * g|:\n{I}\n   Ibar = b3 Ibar + (1 - b3) I:\n{Ibar}")
    Ihat = spec.bias_correct(Ibar, b3, t)
    U = spec.uncertainty(I, Ihat)
    r = spec.lr_multiplier(U, Ihat, eps**2)
    print(f"4. Ihat = Ibar / (1 - b3^t) = Ibar / {1 - b3**t:.4f}:\n{Ihat}\n"
          f"   U = |I - Ihat|:\n{U}\n   r = U / (Ihat + eps^2):\n{r}")
    s = lr * r
    s = s * (math.sqrt(1 - b2**t) / (1 - b1**t))
    after_step = theta - m / denom * s
    print(f"5. s = lr * r * sqrt(1 - b2^t) / (1 - b1^t):\n{s}\n"
          f"   theta - s * m / denom:\n{after_step}")
    after_decay = after_step - lr * wd * after_step
    print(f"6. after the decay theta - lr * wd * theta:\n{after_decay}")

    new_theta, state, trace = rule.step(theta, g_raw, state)
    same = (np.array_equal(new_theta, after_decay) and np.array_equal(state["exp_avg"], m)
            and np.array_equal(state["exp_avg_sq"], v)
            and np.array_equal(state["sensitivity_ema"], Ibar)
            and np.array_equal(trace["lr_multiplier"], r))
    print(f"rule.step gives bit-for-bit the same parameter, state and multiplier: {same}")
    assert same
    if t == 1:
        print(f"At t = 1 the multiplier is r = {np.abs(r).max():.1e} everywhere (Ihat = I, so "
              f"U = 0): the update is {np.abs(trace['update'] + lr * wd * theta).max():.1e} "
              f"apart from the weight decay.")
    zero = (0, 2)
    print(f"The zero entry theta{zero} = {theta[zero]} has I = {I[zero]}, r = {r[zero]}: "
          f"after the step it is {new_theta[zero]}.")
    theta = new_theta

# %% [markdown]
# Two facts are already visible:
#
# - **The first step is zero.** At $t = 1$, $\bar I = (1-\beta_3) I$, so the bias-corrected
#   $\hat I = I$, $U = 0$ and $r = 0$: the official AdamW-SAGE does not move its parameters at the
#   first step (only the weight decay acts). The paper's form, without bias correction, has
#   $\bar I = (1 - \beta_3) I$ and $r = \beta_3 / (1-\beta_3)$ at step 1 instead: three times the
#   learning rate at $\beta_3 = 0.75$.
# - **A zero entry never moves.** $\theta_j = 0$ gives $I_j = 0$ whatever the gradient, so
#   $\bar I_j = U_j = 0$ and $r_j = 0$ (the $\epsilon^2$ keeps the division finite), so
#   $\theta_j$ stays 0 (and weight decay keeps zero at zero), for ever.
#
# ## 2. The two facts over many steps
#
# A small noisy least-squares problem with eight weights, one of them initialised to exactly
# zero; each step's gradient is taken on a random mini-batch of 16 rows. Three rules, all with
# `lr = 0.05`, no weight decay, clipping off: the official AdamW (`bert-adamw`), the official
# AdamW-SAGE (`adamw-sage`) and the paper's SAGE-Adam (`adam-sage`).

# %%
rng = np.random.default_rng(0)
X = rng.standard_normal((512, 8))
w_true = rng.standard_normal(8)
y = X @ w_true + 0.5 * rng.standard_normal(512)
w0 = rng.standard_normal(8) * 0.5
w0[0] = 0.0  # an exactly-zero entry
N_LSQ = 40 if FAST else 80

rules = {
    "bert-adamw (official AdamW)": spec.make("bert-adamw", lr=0.05, max_grad_norm=0),
    "adamw-sage (official)": spec.make("adamw-sage", lr=0.05, max_grad_norm=0),
    "adam-sage (paper)": spec.make("adam-sage", lr=0.05),
}
lsq = {}
for name, r_ in rules.items():
    batches = np.random.default_rng(1)  # the same mini-batches for every rule
    w, st = w0.copy(), r_.init(w0)
    steps, zero_entry, multipliers = [], [w[0]], []
    for _ in range(N_LSQ):
        rows = batches.choice(512, 16, replace=False)
        grad = X[rows].T @ (X[rows] @ w - y[rows]) / 16  # gradient of half the mean squared error
        w, st, tr = r_.step(w, grad, st)
        steps.append(np.mean(np.abs(tr["update"])) / r_.hparams["lr"])
        zero_entry.append(w[0])
        multipliers.append(tr.get("lr_multiplier"))
    lsq[name] = dict(steps=np.array(steps), zero=np.array(zero_entry), r=multipliers)
    first_r = "" if multipliers[0] is None else (
        f", step-1 multiplier r in [{multipliers[0][1:].min():.3g}, "
        f"{multipliers[0][1:].max():.3g}] on the nonzero entries")
    print(f"{name:<28} mean |update| / lr at step 1: {steps[0]:.3f}; "
          f"the zero-initialised entry ends at {w[0]:+.4f}{first_r}")
print(f"beta3 / (1 - beta3) = {b3 / (1 - b3):g} at beta3 = {b3}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
ax = axes[0]
shown = min(15, N_LSQ)
for k, (name, res) in enumerate(lsq.items()):
    ax.bar(np.arange(1, shown + 1) + (k - 1) * 0.27, res["steps"][:shown], width=0.27, label=name)
ax.set(xlabel="step t", ylabel="mean |update| / lr  (dimensionless)",
       title="Step size over the first steps")
ax.legend(fontsize=8)
ax.grid(alpha=0.3, axis="y")
ax = axes[1]
for (name, res), style in zip(lsq.items(), ("-", "--", ":")):
    ax.plot(np.arange(N_LSQ + 1), res["zero"], style, lw=2.5 if style != "-" else 1.5,
            label=name)
ax.set(xlabel="step t", ylabel="value of the entry initialised at 0",
       title="An exactly-zero entry under each rule")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
save(fig, "04_first_step_and_zero_entry.png")

# %% [markdown]
# **What to see:** left, at step 1 the official AdamW-SAGE bar is missing (zero), while the
# paper's SAGE-Adam takes a step about $\beta_3/(1-\beta_3)$ times Adam's sign step, since
# $r = \beta_3/(1-\beta_3)$ there; after a few steps both SAGE variants take steps *smaller*
# than AdamW's. Right, the entry that started at zero moves away under AdamW and stays exactly
# on the zero line under both SAGE variants.
#
# ## 3. Why the official code uses SAGE only on attention and feed-forward weights
#
# The official code applies SAGE to parameters whose names contain `attention.self`,
# `attention.output.dense`, `intermediate.dense` or `output.dense`, and the plain AdamW to
# embeddings, LayerNorms and heads. One reason follows from the fact above: LayerNorm biases are
# initialised to exactly zero, so under SAGE they could never move. We train the same tiny
# Transformer on the `sort` task twice from the same initialization with `adamw-sage` at the
# same settings: once with the official split (`minisage.spec.split.SAGE_PATTERNS`) and once
# with SAGE on every parameter (`minisage.train.train(..., sage_patterns=...)`). A training
# callback turns on the optimizer's per-entry trace (`optimizer.record`) at a few steps and keeps
# the multiplier $r$ it applied there.

# %%
N_TF = 30 if FAST else 150
config = TrainConfig(task="sort", optimizer="adamw-sage", lr=1e-3, steps=N_TF, batch_size=32,
                     weight_decay=0.01, clip_norm=1.0, schedule="linear", warmup=0.1, seed=0,
                     eval_every=N_TF, record_every=0)  # evaluate once, at the end
task = make_task("sort")
SNAPSHOTS = sorted({1, 2, 10, N_TF})


class Multipliers:
    """The training callback: the initial parameters, and at the SNAPSHOTS steps the multiplier
    r that the optimizer applied to every SAGE-group entry (from its trace)."""

    def __init__(self):
        self.initial = None
        self.at_step = {}

    def on_gradients(self, step, model, optimizer):
        if self.initial is None:  # before the first update
            self.initial = {n: p.data.copy() for n, p in model.named_parameters()}
        optimizer.record = step in SNAPSHOTS  # keep this step's trace in optimizer.last_trace

    def on_step_end(self, step, model, optimizer, loss):
        if step in SNAPSHOTS:
            self.at_step[step] = np.concatenate(
                [tr["lr_multiplier"].ravel() for tr in optimizer.last_trace.values()
                 if "lr_multiplier" in tr])


def train_recording(preset, sage_patterns):
    """Train with ``preset`` (SAGE on names matching ``sage_patterns``); returns the model, the
    fraction of each parameter's entries that moved, and the multipliers at the SNAPSHOTS."""
    watch = Multipliers()
    result = train(replace(config, optimizer=preset), task, sage_patterns=sage_patterns,
                   callbacks=[watch])
    moved = {n: np.mean(p.data != watch.initial[n]) for n, p in result.model.named_parameters()}
    return result, moved, watch.at_step


def kind(name):
    """A parameter's kind, for the bar chart."""
    if "norm" in name:
        return "LayerNorm " + name.rsplit(".", 1)[1]
    if name.startswith("embeddings"):
        return "embeddings"
    if name.startswith("lm_head") or name.startswith("classifier"):
        return "head"
    return "attention/FFN " + name.rsplit(".", 1)[1]


runs = {
    "official split": train_recording("adamw-sage", SAGE_PATTERNS),
    "SAGE on every parameter": train_recording("adamw-sage", ("",)),  # "" matches every name
}
kinds = sorted({kind(n) for n in runs["official split"][1]})
fractions = {label: {k: np.mean([v for n, v in moved.items() if kind(n) == k]) for k in kinds}
             for label, (_, moved, _) in runs.items()}
for label, (result, moved, _) in runs.items():
    acc = result.final["val_accuracy"]
    never = [n for n, v in moved.items() if v == 0]
    print(f"{label}: after {N_TF} steps validation accuracy {acc:.3f}; parameters with no entry "
          f"moved: {never if never else 'none'}")

fig, ax = plt.subplots(figsize=(9, 3.8))
x = np.arange(len(kinds))
for k, (label, fr) in enumerate(fractions.items()):
    ax.bar(x + (k - 0.5) * 0.38, [fr[kd] for kd in kinds], width=0.38, label=label)
ax.set_xticks(x)
ax.set_xticklabels(kinds, rotation=20, fontsize=8)
ax.set(ylabel="fraction of entries changed", ylim=(0, 1.3),
       title=f"Which entries moved from their initial value in {N_TF} steps of adamw-sage")
ax.legend(fontsize=8, loc="upper center", ncol=2)
ax.grid(alpha=0.3, axis="y")
save(fig, "04_official_split.png")

# %% [markdown]
# **What to see:** with SAGE on every parameter the LayerNorm-bias bar is at zero: those biases
# start at 0 and stay there, so every LayerNorm is stuck as a pure scale. With the official split
# they are trained by plain AdamW and move like everything else. (Embeddings and heads have no
# zero entries here; the official code keeps them on the plain optimizer as well.)
#
# Both runs also leave the attention **key biases** where they started, which is the gap in the
# attention/FFN-bias bars. Adding the same vector to every key adds the same number to all of a
# query's attention scores, and the softmax ignores that, so their gradient is zero up to
# rounding, and no optimizer moves them:

# %%
model = runs["official split"][0].model
model.zero_grad()
loss_and_logits(model, task, task.train.ids[:256], task.train.targets[:256])[0].backward()
for name, p in model.named_parameters():
    if "key.bias" in name or "query.bias" in name:
        print(f"max |gradient| of {name:<36} {np.abs(p.grad).max():.1e}")
model.zero_grad()

# %% [markdown]
# ## 4. The multiplier's distribution: paper against official
#
# The same official-split run, and a run of the paper's form (`adam-sage` on the same split,
# torch-style AdamW elsewhere), recording $r$ over all SAGE-group entries at a few steps.
# Without bias correction, $U = |I - \bar I| = \beta_3 |I - \bar I_{\text{prev}}|$ and
# $\bar I \ge (1-\beta_3) I$, so the paper's $r$ stays in $[0, \max(1, \beta_3/(1-\beta_3))]$.

# %%
runs["paper (adam-sage)"] = train_recording("adam-sage", SAGE_PATTERNS)
bound = max(1.0, b3 / (1 - b3))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), sharey=True)
bins = np.linspace(0, 3.2, 65)
for ax, label in zip(axes, ("official split", "paper (adam-sage)")):
    snaps = runs[label][2]
    for step, values in snaps.items():
        at_zero = np.mean(values == 0)
        ax.hist(np.clip(values, 0, bins[-1]), bins=bins, histtype="step", density=True, lw=1.5,
                label=f"step {step} ({at_zero:.0%} exactly 0)")
        print(f"{label:>18}, step {step:>3}: r over {values.size} entries: median "
              f"{np.median(values):.3f}, 95th percentile {np.quantile(values, 0.95):.3f}, "
              f"max {values.max():.3f}, exactly zero {at_zero:.1%}, below 1 "
              f"{np.mean(values < 1):.1%}")
    ax.axvline(bound, color="k", ls=":", lw=1, label=f"max(1, β3/(1−β3)) = {bound:g}")
    ax.set_yscale("log")
    title = "official adamw-sage" if label == "official split" else "paper's adam-sage"
    ax.set(xlabel="multiplier r (dimensionless)", title=f"r in {title}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("density (log scale)")
save(fig, "04_multiplier_distribution.png")
print(f"lesson 4 ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# **What to see:** at step 1 the official $r$ is a spike at 0 and the paper's a spike at
# $\beta_3/(1-\beta_3)$; both then spread over $[0, \beta_3/(1-\beta_3)]$ with most of the mass
# below 1, so at the same base learning rate SAGE takes smaller steps than AdamW on most entries
# (hence the paper's advice of a 2–5 times larger lr). The official form's bias correction lowers
# $r$ in the first few steps.
#
# | | paper (our reading, `adam-sage`) | official (`adamw-sage`) |
# |---|---|---|
# | EMA of $I$ | not bias-corrected | bias-corrected: $\hat I = \bar I/(1-\beta_3^t)$ |
# | first step | $r = \beta_3/(1-\beta_3)$ | $r = 0$ |
# | $\epsilon$ in $r$ | `sage_eps` | $\epsilon^2$ of the Adam $\epsilon$ |
# | Adam part | torch (eps after correction) | BERT (eps before, correction in the step) |
# | weight decay | decoupled, before, scheduled lr | decoupled, after, unscheduled lr |
# | parameters | all (as written) | attention and feed-forward only |
