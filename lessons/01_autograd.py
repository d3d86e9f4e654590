# %% [markdown]
# # Lesson 1: Autograd from scratch
#
# Every lesson after this one trains something, and training needs gradients. minisage computes
# them with a small reverse-mode autograd engine (`minisage.autograd`, one file you can read in a
# sitting). This lesson checks it three ways:
#
# 1. a small graph differentiated **by hand** (the chain rule, written out) and **by the engine**;
# 2. why the gradient of a **broadcast** input is a **sum**;
# 3. a **finite-difference** gradient check, and why its step size `h` cannot be too small.
#
# It ends with the two ways minisage computes a network's functions: the **reference forms**
# (compositions of engine operations) and the **fast path** (the same functions fused).
#
# Run it as a script (`python lessons/01_autograd.py`) or open it as a notebook (jupytext).
# Every number below is printed by the code; figures go to `lessons/figures/`.

# %%
import importlib.util
import sys
from pathlib import Path

if "__file__" not in dir():  # a notebook: its own folder, else lessons/ beside the minisage in use
    package = importlib.util.find_spec("minisage")
    sys.path += [str(Path(package.origin).parents[1] / "lessons")] if package else []
from _lesson import FAST, save  # first: sets up minisage before NumPy

# isort: split
import timeit

import matplotlib.pyplot as plt
import numpy as np

import minisage.fast as fast
import minisage.functional as F
from minisage import Tensor
from minisage.autograd import unbroadcast

# %% [markdown]
# ## 1. A small graph, by hand and by the engine
#
# One neuron with a squared error:
#
# $$z = w x + b, \qquad h = \tanh z, \qquad L = (h - y)^2 .$$
#
# The chain rule, one local derivative per edge of the graph, read from the loss backwards:
#
# $$\frac{\partial L}{\partial h} = 2(h - y), \quad
#   \frac{\partial L}{\partial z} = \frac{\partial L}{\partial h}\,(1 - h^2), \quad
#   \frac{\partial L}{\partial w} = \frac{\partial L}{\partial z}\,x, \quad
#   \frac{\partial L}{\partial b} = \frac{\partial L}{\partial z}, \quad
#   \frac{\partial L}{\partial x} = \frac{\partial L}{\partial z}\,w .$$
#
# First by hand, in plain NumPy floats:

# %%
x, w, b, y = 0.5, -1.3, 0.2, 0.8

z = w * x + b
h = np.tanh(z)
L = (h - y) ** 2
dL_dh = 2 * (h - y)
dL_dz = dL_dh * (1 - h**2)
by_hand = {"w": dL_dz * x, "b": dL_dz, "x": dL_dz * w}
print(f"forward: z = {z:.4f}, h = {h:.4f}, L = {L:.6f}")
print("by hand:    " + ", ".join(f"dL/d{k} = {v:+.10f}" for k, v in by_hand.items()))

# %% [markdown]
# Now the engine. Each operation on a `Tensor` records its inputs and a *vector-Jacobian product*
# (VJP): given `dL/d(output)`, it returns `dL/d(input)` for each input. `L.backward()` visits the
# graph in reverse topological order and calls each VJP once: exactly the chain rule above, done
# by the machine.

# %%
tx, tw, tb = (Tensor(v, requires_grad=True) for v in (x, w, b))
tL = ((tw * tx + tb).tanh() - y) ** 2
tL.backward()
by_engine = {"w": tw.grad.item(), "b": tb.grad.item(), "x": tx.grad.item()}
print("by engine:  " + ", ".join(f"dL/d{k} = {v:+.10f}" for k, v in by_engine.items()))
worst = max(abs(by_hand[k] - by_engine[k]) for k in by_hand)
print(f"largest difference between hand and engine: {worst:.1e} (float64 rounding)")

# %% [markdown]
# ### A value used twice gets the sum of its gradients
#
# If `x` feeds two operations, the loss depends on it along two paths, and the total derivative
# adds them: for $f(x) = x \cdot x + x$, $f'(x) = x + x + 1 = 2x + 1$. The engine does the same
# sum when a node receives gradients from several consumers.

# %%
t = Tensor(3.0, requires_grad=True)
(t * t + t).backward()
print(f"d/dx (x*x + x) at x = 3: engine {t.grad.item()}, formula 2x + 1 = {2 * 3.0 + 1}")

# %% [markdown]
# ## 2. Broadcasting: a copied input receives the sum of its copies' gradients
#
# In `Y = X + c` with `X` of shape (4, 3) and `c` of shape (3,), NumPy *broadcasts* `c`: it is
# used once in every row, as if it had been copied four times. Each copy gets its own gradient
# `dL/dY[i, :]`, and since they are all the same `c`,
#
# $$\frac{\partial L}{\partial c_j} = \sum_i \frac{\partial L}{\partial Y_{ij}} .$$
#
# The engine undoes every broadcast with one helper, `unbroadcast(grad, shape)`, which sums the
# gradient over the axes that broadcasting added or stretched. Take $L = \sum_{ij} G_{ij} Y_{ij}$,
# so that `dL/dY = G`:

# %%
rng = np.random.default_rng(0)
X = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
c = Tensor(rng.standard_normal(3), requires_grad=True)
c_row = Tensor(rng.standard_normal((1, 3)), requires_grad=True)  # an explicit length-1 axis
G = rng.standard_normal((4, 3))
((X + c + c_row) * G).sum().backward()
print("c.grad             =", np.round(c.grad, 6))
print("G.sum(axis=0)      =", np.round(G.sum(axis=0), 6))
print("c_row.grad         =", np.round(c_row.grad, 6), " shape", c_row.grad.shape)
print("unbroadcast(G,(1,3))", np.round(unbroadcast(G, (1, 3)), 6))
print(f"X.grad equals G exactly: {np.array_equal(X.grad, G)}; "
      f"c.grad equals G.sum(0): {np.allclose(c.grad, G.sum(axis=0), rtol=0, atol=1e-15)}")

# %% [markdown]
# A bias in a linear layer, `x W^T + b` with `x` of shape (batch, in), is exactly this case: the
# bias gradient is the sum of the per-example gradients over the batch.
#
# ## 3. Elementwise derivatives, and a finite-difference check
#
# For an elementwise function applied to a vector, `backward(grad=ones)` returns every derivative
# at once (each output depends on one input only). We compare the engine's derivative of `gelu`
# and `tanh` with the **central difference**
#
# $$f'(x) \approx \frac{f(x + h) - f(x - h)}{2h}.$$

# %%
grid = np.linspace(-4, 4, 81 if FAST else 401)
h_check = 1e-5
curves = {}
for name, fn in (("gelu", F.gelu), ("tanh", lambda v: v.tanh())):
    xs = Tensor(grid, requires_grad=True)
    out = fn(xs)
    out.backward(np.ones_like(grid))
    fd = (fn(Tensor(grid + h_check)).data - fn(Tensor(grid - h_check)).data) / (2 * h_check)
    curves[name] = (out.data, xs.grad, fd)
    print(f"{name}: largest |engine - central difference| over the grid = "
          f"{np.max(np.abs(xs.grad - fd)):.1e} (h = {h_check:g})")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, (name, (f_val, grad, fd)) in zip(axes, curves.items()):
    ax.plot(grid, f_val, color="C0", label=f"{name}(x)")
    ax.plot(grid, grad, color="C1", lw=2.5, alpha=0.6, label=f"{name}'(x), engine")
    step = max(1, len(grid) // 40)
    ax.plot(grid[::step], fd[::step], "k.", ms=4, label="central difference")
    ax.set(xlabel="x", ylabel="value", title=f"{name} and its derivative")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
save(fig, "01_derivatives.png")

# %% [markdown]
# **What to see:** the black dots (finite differences) sit on the engine's derivative curve
# everywhere; `gelu'` dips below zero for negative inputs and overshoots 1 just above x = 1,
# `tanh'` is a bump of height 1 at 0.
#
# ### The gradient check of a whole model-like function, and the choice of `h`
#
# A finite-difference check of a function of many inputs perturbs one input at a time. Here
# the loss is the cross-entropy of a linear layer followed by `layer_norm` and `gelu`, a small
# version of what the Transformer computes.

# %%
rng = np.random.default_rng(1)
W0 = rng.standard_normal((5, 4))
inputs = rng.standard_normal((6, 4))
gain, shift = rng.standard_normal(5), rng.standard_normal(5)
labels = rng.integers(0, 5, 6)


def loss_of(W):
    """Cross-entropy of gelu(layer_norm(inputs @ W^T)): a tiny model, as a function of W."""
    logits = F.gelu(F.layer_norm(Tensor(inputs) @ W.transpose(), Tensor(gain), Tensor(shift)))
    return F.cross_entropy(logits, labels)


Wt = Tensor(W0, requires_grad=True)
loss_of(Wt).backward()
engine_grad = Wt.grad


def finite_difference(h, central=True):
    """The gradient of loss_of at W0 by forward or central differences, one entry at a time."""
    grad = np.zeros_like(W0)
    base = loss_of(Tensor(W0)).item()
    for idx in np.ndindex(W0.shape):
        plus, minus = W0.copy(), W0.copy()
        plus[idx] += h
        minus[idx] -= h
        f_plus = loss_of(Tensor(plus)).item()
        grad[idx] = ((f_plus - loss_of(Tensor(minus)).item()) / (2 * h) if central
                     else (f_plus - base) / h)
    return grad


def relative_error(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


rel = relative_error(finite_difference(1e-5), engine_grad)
print(f"gradient check of all {W0.size} entries, central differences, h = 1e-5: "
      f"relative error {rel:.1e}")

# %% [markdown]
# How small should `h` be? Two errors pull in opposite directions:
#
# - **truncation**: the Taylor series $f(x+h) = f(x) + h f'(x) + \tfrac{h^2}{2} f''(x) + \dots$
#   makes the forward difference wrong by $O(h)$ and the central difference by $O(h^2)$ (the
#   even terms cancel);
# - **rounding**: $f(x + h) - f(x)$ loses digits when the two are close, an error of about
#   $\epsilon_{\text{mach}} |f| / h$ with $\epsilon_{\text{mach}} \approx 2.2 \times 10^{-16}$.
#
# Their sum is smallest near $h \approx \epsilon^{1/2}$ (forward) and $h \approx \epsilon^{1/3}$
# (central).

# %%
hs = np.logspace(-13, -1, 13 if FAST else 37)
errors = {kind: np.array([relative_error(finite_difference(h, central), engine_grad) for h in hs])
          for kind, central in (("forward", False), ("central", True))}
eps_mach = np.finfo(np.float64).eps
for kind, err in errors.items():
    best = np.argmin(err)
    print(f"{kind:>7} differences: smallest relative error {err[best]:.1e} at h = {hs[best]:.0e}")
print(f"theory: best h near eps^(1/2) = {eps_mach ** 0.5:.0e} (forward), "
      f"eps^(1/3) = {eps_mach ** (1 / 3):.0e} (central)")

fig, ax = plt.subplots(figsize=(6.5, 4.2))
for color, (kind, err) in zip(("C0", "C1"), errors.items()):
    ax.loglog(hs, err, "o-", color=color, ms=4, label=f"{kind} difference")
# reference slopes, drawn a decade below the data so that they stay visible
ref = hs[hs > 1e-6]
ax.loglog(ref, 0.1 * errors["forward"][-1] * ref / ref[-1], ":", color="C0",
          label="slope 1: truncation O(h)")
ax.loglog(ref, 0.1 * errors["central"][-1] * (ref / ref[-1]) ** 2, ":", color="C1",
          label="slope 2: truncation O(h²)")
small = hs[hs < 1e-4]
ax.loglog(small, 0.1 * errors["central"][0] * hs[0] / small, "--", color="gray",
          label="slope -1: rounding ∝ eps / h")
ax.set(xlabel="finite-difference step h", ylabel="relative error vs engine gradient",
       title="Gradient check: truncation vs rounding error", ylim=(1e-12, 10))
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
save(fig, "01_gradient_check.png")

# %% [markdown]
# **What to see:** a V on log-log axes. Right of the minimum the error falls with `h` at slope 1
# (forward) or 2 (central): truncation. Left of it the error rises parallel to the gray `eps / h`
# line: rounding. The central difference reaches a far smaller error, at a larger `h`. That the
# V's floor is so low is itself the check: the engine's gradient agrees with the function it
# differentiates to many digits.
#
# ## 4. The reference forms and the fast path
#
# `minisage.functional` writes each function of a network in its **reference form**, mostly as a
# composition of the engine operations above, so that its gradient follows from theirs. Layer
# normalization over the last axis of length $D$, for example, is
#
# $$\mu = \frac{1}{D} \sum_j x_j, \qquad \sigma^2 = \frac{1}{D} \sum_j (x_j - \mu)^2, \qquad
#   y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot w + b ,$$
#
# written in the code as sums, a subtraction, a product, a square root, a division, and the
# scale and shift; attention $\operatorname{softmax}(q k^\top / \sqrt{d})\, v$ is two matrix
# products around a scale, a mask and a softmax. Each operation is a node of the graph and at
# least one pass of NumPy over the data, forward and backward. `minisage.fast` computes the same
# functions as one node each, with the forward done in place and the VJP written out by hand,
# in fewer NumPy passes: that is its only purpose, speed. The Transformer uses it by default
# (`TransformerConfig(fused=True)`; `fused=False` computes with the reference forms). The two
# must agree to rounding, values and gradients:

# %%
rng = np.random.default_rng(2)
x_np = rng.standard_normal((8, 16, 32))  # (B, T, D)
w_np, b_np = 1 + 0.1 * rng.standard_normal(32), 0.1 * rng.standard_normal(32)  # (D,)
q_np, k_np, v_np = (rng.standard_normal((8, 4, 16, 8)) for _ in range(3))  # (B, H, T, D/H)
cases = {
    "layer_norm": (F.layer_norm, fast.layer_norm, (x_np, w_np, b_np)),
    "causal attention": (lambda q, k, v: F.attention(q, k, v, causal=True),
                         lambda q, k, v: fast.attention(q, k, v, causal=True),
                         (q_np, k_np, v_np)),
}


def value_and_grads(f, arrays, u):
    """f(*arrays) and the gradient of sum(u * f) with respect to each array."""
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    out = f(*leaves)
    out.backward(u)
    return out.data, [leaf.grad for leaf in leaves]


def milliseconds(f, arrays, u, number=3 if FAST else 20):
    """One forward and backward pass: the best of three timings of ``number`` passes."""
    seconds = timeit.repeat(lambda: value_and_grads(f, arrays, u), number=number, repeat=3)
    return 1e3 * min(seconds) / number


def relative_difference(a, b):
    """The largest |a - b|, relative to the largest |b|."""
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


for name, (reference, fused, arrays) in cases.items():
    u = rng.standard_normal(reference(*arrays).shape)  # a random cotangent dL/dy
    value, grads = value_and_grads(reference, arrays, u)
    fast_value, fast_grads = value_and_grads(fused, arrays, u)
    worst_grad = max(relative_difference(a, b) for a, b in zip(fast_grads, grads))
    print(f"{name:>16}: largest relative difference fast - reference: values "
          f"{relative_difference(fast_value, value):.1e}, gradients {worst_grad:.1e}")
    print(f"{'':>16}  one forward + backward: {milliseconds(reference, arrays, u):.2f} ms "
          f"reference, {milliseconds(fused, arrays, u):.2f} ms fast")
print(f"float64 unit roundoff: {np.finfo(np.float64).eps / 2:.1e}")

# %% [markdown]
# **What to see:** the differences are of the order of float64's rounding (compare them with the
# unit roundoff): the two compute the same function, each summing in its own order. The fast path
# is quicker (the times vary by machine). To see how a function is computed, read its reference
# form; each fast function is tested against it, values and gradients, in `tests/test_fast.py`.
#
# Next: lesson 2 feeds such gradients to Adam.
