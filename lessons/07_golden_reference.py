# %% [markdown]
# # Lesson 7: A golden reference for other backends
#
# minisage's spec is meant to be the **golden reference** for other implementations of SAGE: a
# PyTorch optimizer, a JAX transformation, a fused GPU kernel. The spec ships *golden vectors*:
# for each preset, a few short trajectories (an initial parameter, a gradient per step, and the
# exact parameter and optimizer state after every step) written to JSON with every float exact.
# `minisage.testing` runs any step function through them and reports the first mismatch
# precisely.
#
# This lesson loads the golden cases, lets the spec check itself, checks the torch backend when
# torch is installed, and then checks a NumPy implementation written from scratch — once correct
# and twice with a deliberate, plausible bug — to show what a mismatch looks like and which case
# catches it.

# %%
import importlib.util
import sys
from pathlib import Path

if "__file__" not in dir():  # a notebook: its own folder, else lessons/ beside the minisage in use
    package = importlib.util.find_spec("minisage")
    sys.path += [str(Path(package.origin).parents[1] / "lessons")] if package else []
from _lesson import save  # first: sets up minisage before NumPy

# isort: split
import math
import time
from functools import partial

import matplotlib.pyplot as plt
import numpy as np

from minisage import spec, testing

started = time.perf_counter()


# %% [markdown]
# ## 1. The golden cases
#
# `testing.golden_cases(preset)` returns the committed cases of a preset. Each has an `id`, the
# resolved hyperparameters, the initial parameter and, per step, the gradient, the `lr` argument
# (`None` means the rule's own: the base lr, or its internal schedule), and the expected
# parameter and state.

# %%
PRESET = "adamw-sage"
cases = testing.golden_cases(PRESET)
for case in cases:
    h = case.hparams
    print(f"{case.id:<40} {case.dtype.name:<8} shape {str(case.shape):<7} {len(case.steps):>2} "
          f"steps  weight_decay={h['weight_decay']} t_total={h['t_total']} "
          f"correct_bias={h['correct_bias']} max_grad_norm={h['max_grad_norm']}")
first = cases[0]
print(f"\n{first.id}: param {first.param}, grad {first.steps[0].grad}\n"
      f"  expected param after step 1: {first.steps[0].param}\n"
      f"  expected state keys: {sorted(first.steps[0].state)}")
rtol64, atol64 = testing.tolerances("float64")
rtol32, atol32 = testing.tolerances("float32")
print(f"tolerances: |got - expected| <= atol + rtol |expected| with float64 rtol={rtol64:g}, "
      f"atol={atol64:g}; float32 rtol={rtol32:g}, atol={atol32:g}")

# %% [markdown]
# ## 2. The contract: a step function
#
# Another backend provides `step_fn(param, grad, state, lr, hparams)`, NumPy in and NumPy out,
# returning the new parameter and state (state keys in the spec's names: `exp_avg`,
# `exp_avg_sq`, `sensitivity_ema`, `step`). The spec's own rule fits directly, and passes its own
# cases, of course:

# %%
checked = testing.check_rule(testing.spec_step_fn(PRESET), PRESET)
print(f"the spec passes its own {len(checked)} golden cases of {PRESET}")

# %% [markdown]
# ## 3. The torch backend
#
# `minisage.backends.torch` implements SAGE as `torch.optim.Optimizer`s and exposes a step
# function per preset (`golden_step_functions`); `minisage crosscheck --backend torch` runs them
# all from the command line. Here we call the same functions. If torch is not installed, this
# section says so and the rest of the lesson runs unchanged (its figure, then without the torch
# curve, is written as `07_golden_errors_without_torch.png`, leaving the committed one as it is).

# %%
step_functions = {"spec (reference)": testing.spec_step_fn(PRESET)}
HAVE_TORCH = importlib.util.find_spec("torch") is not None
if HAVE_TORCH:
    from minisage import crosscheck
    from minisage.backends.torch import golden_step_functions

    torch_functions = golden_step_functions("cpu")
    rows = crosscheck.check_backend(torch_functions, ("float64", "float32"))
    print(crosscheck.format_table(rows))
    step_functions["torch AdamWSAGE"] = next(fn for impl, preset, fn in torch_functions
                                             if impl == "AdamWSAGE")
else:
    print("torch is not installed: skipping the torch backend (pip install 'minisage[torch]')")

# %% [markdown]
# ## 4. Your own implementation, and two plausible bugs
#
# Suppose you write the official AdamW-SAGE yourself, from docs/spec.md, in plain NumPy. Below
# is such an implementation, with a switch for two bugs that are easy to make and hard to see
# in a training curve:
#
# - `bug="eps"`: the multiplier's denominator uses $\hat I + \epsilon$ instead of the official
#   $\hat I + \epsilon^2$;
# - `bug="decay_lr"`: the decoupled weight decay uses this step's *scheduled* lr instead of the
#   official *unscheduled* base lr (which is what `torch.optim.AdamW` does, so it is an easy
#   habit to carry over).

# %%
def my_adamw_sage(param, grad, state, lr, hparams, bug=None):
    """The official AdamW-SAGE (UnstructAwareAdamW), written from docs/spec.md section 3."""
    b1, b2 = hparams["betas"]
    b3, eps, wd = hparams["beta3"], hparams["eps"], hparams["weight_decay"]
    t = state["step"] + 1
    if hparams["max_grad_norm"] > 0:  # per-tensor clipping
        scale = hparams["max_grad_norm"] / (np.sqrt(np.sum(grad * grad)) + 1e-6)
        if scale < 1:
            grad = grad * scale
    m = b1 * state["exp_avg"] + (1 - b1) * grad
    v = b2 * state["exp_avg_sq"] + (1 - b2) * grad * grad
    lr_t = lr if lr is not None else spec.official_lr(hparams["lr"], t, hparams["t_total"],
                                                      hparams["warmup"], hparams["schedule"])
    sens = np.abs(param * grad)
    ema = b3 * state["sensitivity_ema"] + (1 - b3) * sens
    ema_hat = ema / (1 - b3**t) if hparams["correct_bias"] else ema
    multiplier = np.abs(sens - ema_hat) / (ema_hat + (eps if bug == "eps" else eps**2))
    size = lr_t * multiplier
    if hparams["correct_bias"]:
        size = size * (math.sqrt(1 - b2**t) / (1 - b1**t))
    new = param - m / (np.sqrt(v) + eps) * size
    if wd > 0:
        new = new - (lr_t if bug == "decay_lr" else hparams["lr"]) * wd * new
    return new, {"step": t, "exp_avg": m, "exp_avg_sq": v, "sensitivity_ema": ema}


implementations = {
    "mine, correct": my_adamw_sage,
    "mine, bug eps": partial(my_adamw_sage, bug="eps"),
    "mine, bug decay_lr": partial(my_adamw_sage, bug="decay_lr"),
}
step_functions.update(implementations)
for label, fn in implementations.items():
    try:
        ids = testing.check_rule(fn, PRESET)
        print(f"{label}: passes all {len(ids)} golden cases")
    except AssertionError as err:
        print(f"{label}: check_rule reports\n    {err}")

# %% [markdown]
# The report names the case, the step, the array (`param` or `state['key']`), the worst entry
# with both values, and the tolerance it broke, which is usually enough to find the line. Which
# cases catch which bug? Every case against every implementation (`testing.check_case`), with the
# worst relative error `|got - expected| / (|expected| + atol/rtol)` over all steps (an entry
# passes when this is at most rtol):

# %%
def per_step_errors(step_fn, case):
    """The worst relative error of the parameter at each step, every step started from the golden
    state of the previous one (as check_case does by default)."""
    rtol, atol = testing.tolerances(case.dtype)
    param = np.array(case.param, copy=True)
    state = case.initial_state()
    errors = []
    for step in case.steps:
        state_copy = {k: (v if k == "step" else np.array(v, copy=True)) for k, v in state.items()}
        got = step_fn(np.array(param, copy=True), np.array(step.grad, copy=True), state_copy,
                      step.lr, dict(case.hparams))
        got = np.asarray(got[0] if isinstance(got, tuple) else got, dtype=np.float64)
        expected = step.param.astype(np.float64)
        errors.append(float(np.max(np.abs(got - expected) / (np.abs(expected) + atol / rtol))))
        param, state = step.param, step.state
    return np.array(errors)


print(f"{'case':<40}" + "".join(f"{label:>20}" for label in step_functions))
caught_by = {label: [] for label in step_functions}
for case in cases:
    cells = []
    for label, fn in step_functions.items():
        try:
            testing.check_case(fn, case)
            verdict = "ok"
        except AssertionError:
            verdict = "FAIL"
            caught_by[label].append(case.id)
        cells.append(f"{verdict} {per_step_errors(fn, case).max():9.1e}")
    print(f"{case.id:<40}" + "".join(f"{c:>20}" for c in cells))
for label in ("mine, bug eps", "mine, bug decay_lr"):
    missed = [c.id for c in cases if c.id not in caught_by[label]]
    print(f"{label}: caught by {len(caught_by[label])} of {len(cases)} cases "
          f"({', '.join(caught_by[label])}); missed by {', '.join(missed)}")

# %% [markdown]
# The figure follows the longest cases (one per dtype, each with a warmup-linear schedule)
# step by step.

# %%
long_cases = [c for c in cases if len(c.steps) >= 20]
fig, axes = plt.subplots(1, len(long_cases), figsize=(5.6 * len(long_cases), 4.2), sharey=True,
                         squeeze=False)
FLOOR = 1e-18  # an error of exactly 0 is drawn here
markers = ["o", "s", "^", "x", "d", "v"]
for ax, case in zip(axes[0], long_cases):
    rtol, _ = testing.tolerances(case.dtype)
    for k, (label, fn) in enumerate(step_functions.items()):
        errors = np.maximum(per_step_errors(fn, case), FLOOR)
        ax.semilogy(np.arange(1, len(errors) + 1), errors, ":", marker=markers[k % 6],
                    ms=8 - k, lw=1, mfc="none" if k < 3 else None, label=label)
    ax.axhline(rtol, color="k", lw=1.2, ls=":")
    ax.text(1, rtol * 2, f"tolerance rtol = {rtol:g}", fontsize=8)
    ax.set(xlabel="step", title=case.id, ylim=(FLOOR / 3, 1e2))
    ax.grid(alpha=0.3)
axes[0][0].set_ylabel(f"worst relative error of the parameter (0 drawn at {FLOOR:g})")
axes[0][-1].legend(fontsize=7, loc="upper right")
save(fig, "07_golden_errors.png" if HAVE_TORCH else "07_golden_errors_without_torch.png")
print(f"lesson 7 ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# **What to see:** the three correct implementations (the reference, torch, and mine without
# bugs) sit on top of each other at the bottom, far under the tolerance line (a different order
# of floating-point operations would cost a few units in the last place; here they agree
# exactly). Each bug's curve sits above the float64 tolerance line at almost every step. In
# float32 the tolerance is looser, and an error that is plain in float64 can hide under it; the
# printed lists above say exactly which cases caught each bug and which missed it. No single case
# catches everything: a bug in the decay needs a case with decay *and* a schedule, a bug in the
# epsilon needs float64. That is why the golden cases mix schedules, decay, clipping, bias
# correction and both dtypes. Check your own backend with `testing.check_rule(step_fn, preset)`
# for every preset it implements, in its own test suite.
