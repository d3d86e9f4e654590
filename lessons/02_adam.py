# %% [markdown]
# # Lesson 2: Adam step by step
#
# SAGE is not an optimizer of its own: it multiplies the learning rate of Adam (or Adamax) entry
# by entry. So first Adam, from `minisage.spec`, where every optimizer rule is a pure function
#
# ```python
# rule = spec.make("adam", lr=0.1)
# state = rule.init(param)
# param, state, trace = rule.step(param, grad, state)
# ```
#
# This lesson follows one parameter through Adam's moments, bias correction and effective step;
# puts the three conventions that all call themselves "Adam(W)" side by side in numbers; and runs
# SGD, Adam and AdamW-SAGE on a two-dimensional loss surface.

# %%
import importlib.util
import sys
from pathlib import Path

if "__file__" not in dir():  # a notebook: its own folder, else lessons/ beside the minisage in use
    package = importlib.util.find_spec("minisage")
    sys.path += [str(Path(package.origin).parents[1] / "lessons")] if package else []
from _lesson import FAST, save  # first: sets up minisage before NumPy

# isort: split
import matplotlib.pyplot as plt
import numpy as np

from minisage import Tensor, spec

# %% [markdown]
# ## 1. One parameter through Adam
#
# With gradient $g_t$ at step $t = 1, 2, \dots$ and zero-initialised moments (torch's `Adam`,
# preset `adam`):
#
# $$m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,$$
# $$\hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
#   p_t = p_{t-1} - \mathrm{lr}\,\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.$$
#
# `m` and `v` are averages that start at zero, so early on they are too small; dividing by
# $1-\beta^t$ (the total weight the average has collected so far) removes that bias. The rule
# keeps `m` and `v` in its state (`exp_avg`, `exp_avg_sq`, torch's names); the bias correction is
# `spec.bias_correct`. The gradients here are noisy: a true slope of 0.3 plus unit noise, as from
# mini-batches.

# %%
rule = spec.make("adam", lr=0.1)  # betas (0.9, 0.999), eps 1e-8: torch's defaults
b1, b2 = rule.hparams["betas"]
eps, lr = rule.hparams["eps"], rule.hparams["lr"]
n_steps = 60 if FAST else 200
TRUE_SLOPE = 0.3
grads = TRUE_SLOPE + np.random.default_rng(0).standard_normal(n_steps)

p = np.array(1.0)
state = rule.init(p)
rows = []
for t, g in enumerate(grads, start=1):
    p_new, state, trace = rule.step(p, np.array(g), state)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m_hat, v_hat = spec.bias_correct(m, b1, t), spec.bias_correct(v, b2, t)
    step = lr * m_hat / (np.sqrt(v_hat) + eps)
    # the rule's own update agrees with the equation above
    assert np.isclose(trace["update"], -step, rtol=1e-12, atol=1e-15)
    rows.append(dict(t=t, g=g, m=float(m), v=float(v), m_hat=float(m_hat), v_hat=float(v_hat),
                     step=float(step), p=float(p_new)))
    p = p_new

print(f"{'t':>3} {'g':>8} {'m':>8} {'m_hat':>8} {'v':>9} {'v_hat':>8} {'lr*step':>9} {'p':>8}")
for r in rows[:5]:
    print(f"{r['t']:>3} {r['g']:8.4f} {r['m']:8.4f} {r['m_hat']:8.4f} {r['v']:9.6f} "
          f"{r['v_hat']:8.4f} {r['step']:9.5f} {r['p']:8.4f}")
first = rows[0]
print(f"At step 1, m_hat = g = {first['m_hat']:.4f} and v_hat = g^2 = {first['v_hat']:.4f}, so the "
      f"step is lr * g/|g| = {first['step']:.6f}: Adam's first step is lr times the sign of g, "
      "whatever the size of g.")
ratio = np.mean([abs(r["step"]) for r in rows[n_steps // 2:]]) / lr
print(f"Later, with noise, the mean |step| / lr over the second half is {ratio:.3f}: "
      "the step shrinks when the gradient's sign is unreliable.")

# %% [markdown]
# The figure shows the raw and corrected averages and the effective step `|p_t - p_{t-1}| / lr`.

# %%
ts = np.array([r["t"] for r in rows])
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
ax = axes[0]
ax.plot(ts, grads, ".", color="0.6", ms=3, label="gradient g")
ax.plot(ts, [r["m"] for r in rows], color="C0", label="m (raw average)")
ax.plot(ts, [r["m_hat"] for r in rows], color="C1", label="m_hat (bias-corrected)")
ax.axhline(TRUE_SLOPE, color="k", ls=":", lw=1, label=f"true mean slope {TRUE_SLOPE}")
ax.set(xlabel="step t", ylabel="gradient units", title="First moment")
ax = axes[1]
ax.plot(ts, np.sqrt([r["v"] for r in rows]), color="C0", label="sqrt(v) (raw)")
ax.plot(ts, np.sqrt([r["v_hat"] for r in rows]), color="C1", label="sqrt(v_hat) (corrected)")
ax.set(xlabel="step t", ylabel="gradient units", title="Second moment (RMS of g)")
ax = axes[2]
ax.plot(ts, [abs(r["step"]) / lr for r in rows], color="C2")
ax.set(xlabel="step t", ylabel="|step| / lr (dimensionless)", title="Effective step size",
       ylim=(0, 1.1))
for ax in axes:
    ax.grid(alpha=0.3)
for ax in axes[:2]:
    ax.legend(fontsize=7)
save(fig, "02_adam_one_parameter.png")

# %% [markdown]
# **What to see:** the raw `m` and `sqrt(v)` (blue) start near zero and creep up; the corrected
# ones (orange) are on the right scale from step 1. `sqrt(v)` reacts slowly ($\beta_2 = 0.999$
# averages over about a thousand steps), so `sqrt(v_hat)` is an estimate from few samples early
# on. The effective step starts at exactly 1 (the sign step) and settles to a fraction of `lr`:
# roughly the ratio of the mean gradient to its RMS, a signal-to-noise ratio.
#
# ## 2. Three "Adam"s side by side, in numbers
#
# - `adam`: `torch.optim.Adam`, which is also the paper's Adam (Kingma & Ba) that SAGE's
#   Algorithm 1 builds on. eps after the bias correction, $\sqrt{\hat v} + \epsilon$ with
#   $\epsilon = 10^{-8}$; weight decay as L2, `g += wd * p`, so the decay is normalised along
#   with the gradient.
# - `adamw`: `torch.optim.AdamW`. eps as `adam`; decoupled decay `p *= 1 - lr_t * wd`, before
#   the step, with this step's scheduled `lr_t`.
# - `bert-adamw`: the official SAGE code's `AdamW` (BERT's). eps before the bias correction,
#   $\sqrt{v} + \epsilon$ with $\epsilon = 10^{-6}$, the correction folded into the step size;
#   decoupled decay *after* the step, with the *unscheduled* base `lr`.
#
# Folding the correction into the step size means `bert-adamw` effectively uses
# $\epsilon / \sqrt{1 - \beta_2^t}$ in place of $\epsilon$: a much larger epsilon early on. Three
# one-step experiments from a fresh state with `lr = 0.01`, the official per-tensor clipping
# turned off (`max_grad_norm=0`) to isolate the two differences:
#
# - a gradient of 1 (a typical one), no weight decay;
# - a gradient of `1e-6` (a rarely used embedding row, say), no weight decay;
# - a gradient of 0 while the schedule has halved the learning rate (`lr_t = lr / 2`), with
#   `weight_decay = 0.01`: only the decay moves the parameter.

# %%
def three_adams(weight_decay):
    return {
        "adam": spec.make("adam", lr=0.01, weight_decay=weight_decay),
        "adamw": spec.make("adamw", lr=0.01, weight_decay=weight_decay),
        "bert-adamw": spec.make("bert-adamw", lr=0.01, weight_decay=weight_decay,
                                max_grad_norm=0),
    }


# (label, gradient, this step's lr_t, weight_decay)
scenarios = [("g = 1", 1.0, 0.01, 0.0), ("g = 1e-6", 1e-6, 0.01, 0.0),
             ("g = 0, lr_t = lr/2, wd = 0.01", 0.0, 0.005, 0.01)]
print(f"update p_1 - p_0 from p_0 = 1 {'':<8}" + "".join(f"{n:>14}" for n in three_adams(0)))
updates = {}
for label, g, lr_t, wd in scenarios:
    cells = []
    for name, r in three_adams(wd).items():
        p0 = np.array([1.0])
        _, _, tr = r.step(p0, np.array([g]), r.init(p0), lr=lr_t)
        updates[(label, name)] = tr["update"][0]
        cells.append(f"{tr['update'][0]:14.3e}")
    print(f"{label:<38}" + "".join(cells))

tiny = {name: updates[("g = 1e-6", name)] for name in three_adams(0)}
official = three_adams(0)["bert-adamw"].hparams
eps_official, b2_official, lr_demo = official["eps"], official["betas"][1], official["lr"]
print(f"With g = 1e-6, torch's Adam still steps {abs(tiny['adam']) / lr_demo:.3f} x lr, the "
      f"official AdamW only {abs(tiny['bert-adamw']) / lr_demo:.4f} x lr: its eps acts at the "
      f"scale eps / sqrt(1 - b2) = {eps_official / np.sqrt(1 - b2_official):.2e} at step 1.")
decay = {name: updates[(scenarios[2][0], name)] for name in three_adams(0)}
print(f"With g = 0: adamw decays by lr_t*wd = {-decay['adamw']:.1e}, bert-adamw by lr*wd = "
      f"{-decay['bert-adamw']:.1e} (unscheduled lr), and adam's L2 term wd*p is normalised like a "
      f"gradient into a full sign step of {-decay['adam']:.1e}.")
for t in (1, 10, 100, 1000, 10000):
    print(f"  bert-adamw's effective eps at step {t:>5}: eps / sqrt(1 - b2^t) = "
          f"{eps_official / np.sqrt(1 - b2_official**t):.2e}")

# %% [markdown]
# So the same name hides large differences in the step of small-gradient entries and in the
# decay of idle ones. minisage's presets are named after the code they reproduce, and
# lesson 7 shows how to check an implementation against them.
#
# ## 3. SGD, Adam and AdamW-SAGE on a two-dimensional loss surface
#
# A tilted, badly conditioned quadratic bowl,
# $L(p) = \tfrac12 (p - c)^\top A (p - c)$ with $c = (1, 1.5)$, started at $(-1.5, -0.5)$, its
# gradient from the engine. Three rules, settings fixed in advance: `sgd` with `lr = 0.1`
# (stable: below $2 / \lambda_{\max}(A)$), and `adam` and `adamw-sage` both with `lr = 0.05` (the
# same lr: SAGE multiplies it by $r$, and we want to see what $r$ does). `adamw-sage` is the
# official rule with its clipping off and no weight decay. We run it twice: with the **exact**
# gradient, and with Gaussian noise of standard deviation 0.5 added to each coordinate, as
# mini-batches would.
#
# SAGE's multiplier is $r = U / \hat I$ with $I = |p \cdot g|$ and $U = |I - \hat I|$ (lesson 4
# steps through it): it is the *variation* of the sensitivity relative to its average.

# %%
center = np.array([1.0, 1.5])
A = np.array([[3.0, 1.2], [1.2, 0.6]])
start = np.array([-1.5, -0.5])
NOISE = 0.5
n_steps = 60 if FAST else 300


def surface_loss(p):
    """L(p) = 0.5 (p - c)^T A (p - c), on the engine (p a Tensor) or on arrays."""
    d = p - center
    return 0.5 * ((d @ A) * d).sum()


def run(rule, noise):
    rng = np.random.default_rng(0)
    p, state = start.copy(), rule.init(start)
    path, losses, multipliers = [p], [surface_loss(p)], []
    for _ in range(n_steps):
        pt = Tensor(p, requires_grad=True)
        surface_loss(pt).backward()
        g = pt.grad + noise * rng.standard_normal(2)
        p, state, trace = rule.step(p, g, state)
        path.append(p)
        losses.append(surface_loss(p))
        multipliers.append(trace.get("lr_multiplier", np.full(2, np.nan)))
    return np.array(path), np.array(losses), np.array(multipliers)


rules = {
    "SGD (lr 0.1)": spec.make("sgd", lr=0.1),
    "Adam (lr 0.05)": spec.make("adam", lr=0.05),
    "AdamW-SAGE (lr 0.05)": spec.make("adamw-sage", lr=0.05, max_grad_norm=0),
}
results = {(noise, name): run(r, noise) for noise in (0.0, NOISE) for name, r in rules.items()}
print(f"SGD on this surface is stable for lr < 2 / lambda_max(A) = "
      f"{2 / np.linalg.eigvalsh(A).max():.3f}")
for (noise, name), (path, losses, mult) in results.items():
    moved = np.abs(path - start).max()
    extra = f", mean multiplier r = {np.mean(mult[1:]):.3f}" if "SAGE" in name else ""
    print(f"{'exact' if noise == 0 else 'noisy'} gradient, {name:<22}: final loss "
          f"{losses[-1]:.2e}, largest move from the start {moved:.3f}{extra}")

# %%
xs, ys = np.meshgrid(np.linspace(-2.2, 2.5, 200), np.linspace(-1.5, 3.5, 200))
grid = np.stack([xs, ys], axis=-1) - center
zs = 0.5 * np.einsum("...i,ij,...j->...", grid, A, grid)
fig, axes = plt.subplots(2, 2, figsize=(11, 8.4))
for row, noise in enumerate((0.0, NOISE)):
    kind = "exact gradient" if noise == 0 else f"noisy gradient (std {noise})"
    ax = axes[row, 0]
    ax.contour(xs, ys, zs, levels=np.logspace(-3, 1.5, 12), colors="0.7", linewidths=0.8)
    for color, name in zip(("C0", "C1", "C2"), rules):
        path = results[(noise, name)][0]
        ax.plot(path[:, 0], path[:, 1], ".-", color=color, ms=2, lw=1, label=name)
    ax.plot(*start, "ks", label="start")
    ax.plot(*center, "k*", ms=12, label="minimum")
    ax.set(xlabel="p[0]", ylabel="p[1]", title=f"Trajectories, {kind}")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[row, 1]
    for color, name in zip(("C0", "C1", "C2"), rules):
        ax.semilogy(results[(noise, name)][1], color=color, label=name)
    ax.set(xlabel="step", ylabel="loss L(p)", title=f"Loss, {kind}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
save(fig, "02_trajectories.png")

# %% [markdown]
# **What to see:** top row, exact gradients: SGD drops along the steep direction to the valley
# floor in a few steps and then crawls along the flat one (its loss falls fast, then slowly);
# Adam first moves diagonally (the sign steps of section 1) and then bends down the valley;
# AdamW-SAGE **does not move at all**: its marker sits on the start and its loss is flat. With
# an exact gradient at a point that does not move, the sensitivity $I$ is the same at every
# step, so it never differs from its average: $U = 0$ and $r = 0$. The official rule's first
# step is zero (lesson 4), so the point never moves and $I$ never changes. Bottom row, noisy
# gradients: the noise makes $I$ fluctuate, $U > 0$, and SAGE moves, its steps scaled by the
# mean multiplier printed above. SAGE scales steps by how much an entry's sensitivity *varies*;
# it is built for stochastic training, which is also why the paper
# recommends a base learning rate 2–5 times the plain optimizer's.
