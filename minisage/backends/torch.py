"""SAGE for PyTorch, defined by the spec, and a torch twin of the minisage Transformer.

Needs the ``torch`` extra (``pip install "minisage[torch]"``). Three optimizers, each a
``torch.optim.Optimizer`` with the spec's update, hyperparameter names and defaults, and a
per-group switch ``sage`` (True: the SAGE preset; False: the plain preset it is built on)::

    AdamWSAGE   sage=True: "adamw-sage"   sage=False: "bert-adamw"   (official UnstructAwareAdamW)
    AdamaxSAGE  sage=True: "adamax-sage"  sage=False: "bert-adamax"  (official UnstructAwareAdamax)
    AdamSAGE    sage=True: "adam-sage"    sage=False: "adamw"        (the paper's reading)

The equations are in each spec rule's docstring (``help(minisage.spec.rule_class(preset))``) and in
SAGE_SPEC.md; the code below follows the spec line by line, with the same association of products,
so that float64 results agree with :mod:`minisage.spec` to about 1e-15 relative
(``minisage crosscheck --backend torch`` checks every golden case).

Usage, with the official split (SAGE on attention and feed-forward weights and biases only)::

    from minisage.backends.torch import AdamWSAGE, sage_param_groups
    groups = sage_param_groups(model.named_parameters(), weight_decay=0.01)
    opt = AdamWSAGE(groups, lr=5e-4, beta3=0.75, max_grad_norm=-1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 100))
    ...; loss.backward(); opt.step(); sched.step(); opt.zero_grad()

Learning-rate schedules: a ``torch.optim.lr_scheduler`` changes ``group["lr"]``; that value is the
step's ``lr_t``. The AdamW pair's decoupled decay uses the *unscheduled* base lr (as the spec
does), which is ``group["initial_lr"]`` once a torch scheduler has been attached (torch stores it
there), else ``group["lr"]``. The official in-optimizer schedule is supported too: the AdamW and
Adamax pairs take ``warmup``, ``t_total`` and ``schedule`` exactly as the spec (and the official
code) does; it multiplies whatever ``group["lr"]`` holds, so use one schedule or the other.

State per parameter: ``step`` (a Python int), ``exp_avg``, ``exp_avg_sq`` (AdamW, Adam) or
``exp_inf`` (Adamax), and ``sensitivity_ema`` where SAGE is on -- the spec's names, so a torch state
converts to a spec state key by key. Works on any device and floating dtype; the arithmetic stays
in the parameter's dtype. A non-finite gradient raises FloatingPointError naming the parameter
(by its index in the groups) before anything is changed (this costs one device sync per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF  # noqa: N812
from torch import nn

from minisage import spec
from minisage.nn.transformer import Transformer, TransformerConfig
from minisage.spec import split
from minisage.spec.schedules import official_lr
from minisage.spec.split import DEFAULT_NO_DECAY_PATTERNS, NO_DECAY_PATTERNS, SAGE_PATTERNS

__all__ = [
    "AdamWSAGE", "AdamaxSAGE", "AdamSAGE", "sage_param_groups", "SAGE_PATTERNS",
    "NO_DECAY_PATTERNS", "DEFAULT_NO_DECAY_PATTERNS", "to_torch", "TorchTransformer",
    "resolve_device", "resolve_dtype", "golden_step_functions",
]



# ----------------------------------------------------------------------------------------------
# devices and dtypes
# ----------------------------------------------------------------------------------------------

def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; a clear ValueError when it is CUDA and CUDA is missing."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available to this "
                         f"torch {torch.__version__} (no NVIDIA GPU or a CPU-only build)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {device!r}")
    return dev


def resolve_dtype(dtype: str | torch.dtype | np.dtype) -> torch.dtype:
    """``"float32"``, ``"float64"`` (or a torch/NumPy float dtype) as a torch dtype."""
    table = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, torch.dtype):
        if dtype in table.values():
            return dtype
    else:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
        if name in table:
            return table[name]
    raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")


# ----------------------------------------------------------------------------------------------
# parameter groups
# ----------------------------------------------------------------------------------------------

def sage_param_groups(named_parameters: Iterable[tuple[str, Any]], *,
                      sage_patterns: Sequence[str] = SAGE_PATTERNS,
                      no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS,
                      weight_decay: float = 0.01, **hparams: Any) -> list[dict[str, Any]]:
    """The official SAGE split (:func:`minisage.spec.split.sage_param_groups`) of a torch model's
    ``named_parameters()``, leaving out parameters with ``requires_grad=False``; torch keeps the
    names in ``group["param_names"]``."""
    return split.sage_param_groups(named_parameters, sage_patterns=sage_patterns,
                                   no_decay_patterns=no_decay_patterns, weight_decay=weight_decay,
                                   include=lambda p: getattr(p, "requires_grad", True), **hparams)


# ----------------------------------------------------------------------------------------------
# the optimizers
# ----------------------------------------------------------------------------------------------

def _clip_per_tensor(g: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """The spec's per-tensor clipping: ``g * c`` where ``c = max_grad_norm / (||g|| + 1e-6) < 1``.

    Same arithmetic as :func:`minisage.spec.clip_per_tensor` (sum of squares, then sqrt), with a
    ``torch.where`` instead of a Python ``if`` so that CUDA needs no sync.
    """
    if max_grad_norm <= 0:
        return g
    # n = ||g||_2
    n = torch.sqrt(torch.sum(g * g))
    # c = max_grad_norm / (n + 1e-6)
    c = max_grad_norm / (n + 1e-6)
    # g = g * c  if c < 1
    return torch.where(c < 1, g * c, g)


class _SpecOptimizer(torch.optim.Optimizer):
    """Shared machinery: hyperparameters checked by the spec rule, per-group ``sage`` switch."""

    #: (preset with sage, preset without)
    presets: tuple[str, str] = ("", "")

    def __init__(self, params, sage: bool = True, **hparams: Any) -> None:
        rule = spec.make(self.presets[0], **hparams)  # checks names and ranges; fills defaults
        defaults = {**rule.hparams, "sage": sage}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        for p in group["params"]:
            if not p.is_floating_point():
                raise TypeError(f"{type(self).__name__}: parameters must be floating point, "
                                f"got dtype {p.dtype}")

    def _check_group(self, group: dict[str, Any]) -> None:
        if not isinstance(group["sage"], (bool, np.bool_)):
            raise ValueError(f"{type(self).__name__}: sage must be True or False, "
                             f"got {group['sage']!r}")
        group["sage"] = bool(group["sage"])
        hp = {k: group[k] for k in self.defaults if k != "sage"}
        checked = spec.make(self.presets[0], **hp).hparams
        # group["lr"] may be changed later by a scheduler; the rest is normalised here
        for k, v in checked.items():
            if k != "lr":
                group[k] = v

    def preset(self, group: Mapping[str, Any]) -> str:
        """The spec preset a group follows: ``presets[0]`` with SAGE on, ``presets[1]`` without."""
        return self.presets[0] if group["sage"] else self.presets[1]

    def _grads(self, group) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(p, p.grad) for p in group["params"] if p.grad is not None]

    def _check_finite(self) -> None:
        bad = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse "
                                           "gradients")
                    bad.append((gi, pi, p.grad))
        if not bad:
            return
        checks = [torch.isfinite(g).all() for _, _, g in bad]
        if len({c.device for c in checks}) == 1:
            flags = torch.stack(checks).cpu()  # one device sync per step
        else:
            flags = torch.stack([c.cpu() for c in checks])
        if not bool(flags.all()):
            gi, pi, g = bad[int(torch.nonzero(~flags)[0])]
            names = self.param_groups[gi].get("param_names")
            label = repr(names[pi]) if names and pi < len(names) else f"{pi} of group {gi}"
            raise FloatingPointError(
                f"{type(self).__name__}: non-finite gradient for parameter {label}; "
                "the parameters and the optimizer state were left unchanged")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a gradient. Returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_finite()
        for group in self.param_groups:
            for p, g in self._grads(group):
                if g.dtype != p.dtype:
                    g = g.to(p.dtype)
                state = self.state[p]
                if len(state) == 0:
                    state.update(self._init_state(p, group))
                elif group["sage"] and "sensitivity_ema" not in state:
                    state["sensitivity_ema"] = _zeros(p)
                new_p = self._update(p, g, state, group)
                p.copy_(new_p)
        return loss

    def _init_state(self, p: torch.Tensor, group) -> dict[str, Any]:
        raise NotImplementedError

    def _update(self, p, g, state, group) -> torch.Tensor:
        raise NotImplementedError


def _zeros(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


class AdamWSAGE(_SpecOptimizer):
    """AdamW-SAGE exactly as the official ``UnstructAwareAdamW`` (spec preset ``adamw-sage``);
    a group with ``sage=False`` is the official BERT AdamW (spec preset ``bert-adamw``).

    Update, per parameter (``t`` incremented first)::

        t     = t + 1
        g     = g * c  where c = max_grad_norm / (||g||_2 + 1e-6) < 1      (per tensor)
        m     = beta1 * m + (1 - beta1) * g
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) + eps
        I     = |p * g|;  Ibar = beta3 * Ibar + (1 - beta3) * I           (sage only)
        Ihat  = Ibar / (1 - beta3^t)   if correct_bias, else Ibar
        r     = |I - Ihat| / (Ihat + eps^2)                                (sage only; else 1)
        s     = lr_t * r * (sqrt(1 - beta2^t) / (1 - beta1^t))   (the factor if correct_bias)
        p     = p - (m / denom) * s
        p     = p - lr * weight_decay * p     if weight_decay > 0 (base lr, after the step, no r)

    Arguments (the official names and defaults): ``lr=1e-3``, ``warmup=-1``, ``t_total=-1``,
    ``schedule="warmup_linear"`` (the official in-optimizer schedule; ``t_total=-1`` turns it off),
    ``betas=(0.9, 0.999)``, ``beta3=0.75``, ``eps=1e-6``, ``weight_decay=0.0``,
    ``correct_bias=True``, ``max_grad_norm=1.0`` (<= 0: no clipping), ``sage=True``.

    Warning: unlike ``torch.optim.AdamW`` the decay comes *after* the step with the *unscheduled*
    lr, eps sits inside the uncorrected denominator, and the gradient is clipped per tensor at 1.0
    by default. With ``correct_bias`` the first SAGE step moves nothing (``Ihat = I``).
    """

    presets = ("adamw-sage", "bert-adamw")

    def __init__(self, params, lr: float = 1e-3, warmup: float = -1, t_total: int = -1,
                 schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True,
                 max_grad_norm: float = 1.0, sage: bool = True) -> None:
        super().__init__(params, sage=sage, lr=lr, warmup=warmup, t_total=t_total,
                         schedule=schedule, betas=betas, beta3=beta3, eps=eps,
                         weight_decay=weight_decay, correct_bias=correct_bias,
                         max_grad_norm=max_grad_norm)

    def _init_state(self, p, group):
        state = {"step": 0, "exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}
        if group["sage"]:
            state["sensitivity_ema"] = _zeros(p)
        return state

    def _update(self, p, g, state, group):
        b1, b2 = group["betas"]
        eps = group["eps"]
        # t = t + 1
        t = state["step"] + 1
        g = _clip_per_tensor(g, group["max_grad_norm"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        # m = beta1 * m + (1 - beta1) * g
        m.mul_(b1).add_(g * (1 - b1))
        # v = beta2 * v + (1 - beta2) * g * g
        v.mul_(b2).add_(g.mul(1 - b2).mul_(g))
        # denom = sqrt(v) + eps
        denom = v.sqrt().add_(eps)
        # s = lr_t, scheduled with the incremented t
        lr_t = official_lr(group["lr"], t, group["t_total"], group["warmup"], group["schedule"])
        bias_correction1 = 1 - b1**t
        bias_correction2 = 1 - b2**t
        if group["sage"]:
            b3 = group["beta3"]
            Ibar = state["sensitivity_ema"]
            # I = |p * g|
            I = (p * g).abs_()  # noqa: E741
            # Ibar = beta3 * Ibar + (1 - beta3) * I
            Ibar.mul_(b3).add_(I * (1 - b3))
            # Ihat = Ibar / (1 - beta3^t) if correct_bias, else Ibar
            Ihat = Ibar / (1 - b3**t) if group["correct_bias"] else Ibar
            # r = |I - Ihat| / (Ihat + eps^2)
            r = (I - Ihat).abs_().div_(Ihat + eps**2)
            # s = lr_t * r (* sqrt(1 - beta2^t) / (1 - beta1^t))
            s = r.mul_(lr_t)
            if group["correct_bias"]:
                s.mul_(math.sqrt(bias_correction2) / bias_correction1)
            # p = p - (m / denom) * s
            new_p = p - (m / denom).mul_(s)
        else:
            s = lr_t
            if group["correct_bias"]:
                s = s * math.sqrt(bias_correction2) / bias_correction1
            # p = p - s * m / denom
            new_p = p - (m * s).div_(denom)
        if group["weight_decay"] > 0:
            # p = p - lr * weight_decay * p      (base lr: unscheduled by a torch scheduler)
            base_lr = group.get("initial_lr", group["lr"])
            new_p = new_p - new_p * (base_lr * group["weight_decay"])
        state["step"] = t
        return new_p


class AdamaxSAGE(_SpecOptimizer):
    """Adamax-SAGE exactly as the official ``UnstructAwareAdamax`` (spec preset ``adamax-sage``);
    a group with ``sage=False`` is the official BERT Adamax (spec preset ``bert-adamax``).

    Update, per parameter (``t`` incremented *last*)::

        g      = g * c  where c = max_grad_norm / (||g||_2 + 1e-6) < 1     (per tensor)
        m      = beta1 * m + (1 - beta1) * g
        u      = max(beta2 * u, |g| + eps)
        update = m / (u + eps)                         (eps twice; no bias correction)
        I      = |p * g|;  Ibar = beta3 * Ibar + (1 - beta3) * I          (sage only)
        update = update + weight_decay * p             if weight_decay > 0
        r      = |I - Ibar| / (Ibar + eps^2)                              (sage only; else 1)
        p      = p - lr_t * r * update                 (lr_t scheduled with t *before* increment)
        t      = t + 1

    Arguments (official names and defaults): ``lr`` (required), ``warmup=-1``, ``t_total=-1``,
    ``schedule="warmup_linear"``, ``betas=(0.9, 0.999)``, ``beta3=0.75``, ``eps=1e-6``,
    ``weight_decay=0.01``, ``max_grad_norm=1.0``, ``sage=True``.

    Warning: unlike ``torch.optim.Adamax`` there is no bias correction, eps enters twice and the
    decay is inside the update (so it is scaled by the schedule and by ``r``). With warmup the
    first update is zero. The first SAGE step has ``r = beta3 / (1 - beta3)`` wherever ``I > 0``.
    """

    presets = ("adamax-sage", "bert-adamax")

    def __init__(self, params, lr: float, warmup: float = -1, t_total: int = -1,
                 schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                 sage: bool = True) -> None:
        super().__init__(params, sage=sage, lr=lr, warmup=warmup, t_total=t_total,
                         schedule=schedule, betas=betas, beta3=beta3, eps=eps,
                         weight_decay=weight_decay, max_grad_norm=max_grad_norm)

    def _init_state(self, p, group):
        state = {"step": 0, "exp_avg": _zeros(p), "exp_inf": _zeros(p)}
        if group["sage"]:
            state["sensitivity_ema"] = _zeros(p)
        return state

    def _update(self, p, g, state, group):
        b1, b2 = group["betas"]
        eps = group["eps"]
        t = state["step"]
        g = _clip_per_tensor(g, group["max_grad_norm"])
        m, u = state["exp_avg"], state["exp_inf"]
        # m = beta1 * m + (1 - beta1) * g
        m.mul_(b1).add_(g * (1 - b1))
        # u = max(beta2 * u, |g| + eps)
        torch.maximum(u.mul_(b2), g.abs().add_(eps), out=u)
        # update = m / (u + eps)
        update = m / (u + eps)
        if group["sage"]:
            b3 = group["beta3"]
            Ibar = state["sensitivity_ema"]
            # I = |p * g|
            I = (p * g).abs_()  # noqa: E741
            # Ibar = beta3 * Ibar + (1 - beta3) * I
            Ibar.mul_(b3).add_(I * (1 - b3))
        if group["weight_decay"] > 0:
            # update = update + weight_decay * p
            update.add_(p * group["weight_decay"])
        # s = lr_t, scheduled with t before its increment
        lr_t = official_lr(group["lr"], t, group["t_total"], group["warmup"], group["schedule"])
        if group["sage"]:
            # r = |I - Ibar| / (Ibar + eps^2);  s = lr_t * r
            s = (I - Ibar).abs_().div_(Ibar + eps**2).mul_(lr_t)
            new_p = p - s.mul_(update)
        else:
            new_p = p - update.mul_(lr_t)
        # t = t + 1
        state["step"] = t + 1
        return new_p


class AdamSAGE(_SpecOptimizer):
    """SAGE on Adam as the paper's Algorithm 1 reads (spec preset ``adam-sage``), with
    ``torch.optim.AdamW``'s moments and decoupled decay; a group with ``sage=False`` is
    ``torch.optim.AdamW`` (spec preset ``adamw``). A reading of the paper, not a reproduction of
    code.

    Update, per parameter (``t`` incremented first)::

        t     = t + 1
        I     = |p * g|;  Ibar = beta3 * Ibar + (1 - beta3) * I     (no bias correction)
        r     = |I - Ibar| / (Ibar + sage_eps)                      (sage only; else 1)
        p     = p * (1 - lr_t * weight_decay)                       (before the step)
        m     = m + (1 - beta1) * (g - m)
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p     = p - (lr_t / (1 - beta1^t)) * r * m / denom

    Arguments: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``beta3=0.75``, ``eps=1e-8``,
    ``sage_eps=1e-12``, ``weight_decay=0.0``, ``sage=True``. No clipping, no internal schedule:
    use ``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.lr_scheduler``.

    Warning: the official ``AdamWSAGE`` bias-corrects the sensitivity EMA, uses ``eps**2`` in the
    multiplier and decays after the step with the unscheduled lr; here the first step already has
    ``r = beta3 / (1 - beta3)`` where ``I > 0``, and the decay is not scaled by ``r``.
    """

    presets = ("adam-sage", "adamw")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-8, sage_eps: float = 1e-12, weight_decay: float = 0.0,
                 sage: bool = True) -> None:
        super().__init__(params, sage=sage, lr=lr, betas=betas, beta3=beta3, eps=eps,
                         sage_eps=sage_eps, weight_decay=weight_decay)

    def _init_state(self, p, group):
        state = {"step": 0, "exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}
        if group["sage"]:
            state["sensitivity_ema"] = _zeros(p)
        return state

    def _update(self, p, g, state, group):
        b1, b2 = group["betas"]
        wd = group["weight_decay"]
        lr_t = group["lr"]
        # t = t + 1
        t = state["step"] + 1
        if group["sage"]:
            b3 = group["beta3"]
            Ibar = state["sensitivity_ema"]
            # I = |p * g|
            I = (p * g).abs_()  # noqa: E741
            # Ibar = beta3 * Ibar + (1 - beta3) * I
            Ibar.mul_(b3).add_(I * (1 - b3))
            # r = |I - Ibar| / (Ibar + sage_eps)
            r = (I - Ibar).abs_().div_(Ibar + group["sage_eps"])
        if wd != 0:
            # p = p * (1 - lr_t * weight_decay)
            p = p * (1 - lr_t * wd)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        # m = m + (1 - beta1) * (g - m)
        m.add_((g - m).mul_(1 - b1))
        # v = beta2 * v + (1 - beta2) * g * g
        v.mul_(b2).add_(g.mul(1 - b2).mul_(g))
        # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        denom = v.sqrt().div_((1 - b2**t) ** 0.5).add_(group["eps"])
        step_size = lr_t / (1 - b1**t)
        if group["sage"]:
            # p = p - (lr_t / (1 - beta1^t)) * r * m / denom
            new_p = p - r.mul_(step_size).mul_(m).div_(denom)
        else:
            # p = p - (lr_t / (1 - beta1^t)) * m / denom
            new_p = p - (m * step_size).div_(denom)
        state["step"] = t
        return new_p


# ----------------------------------------------------------------------------------------------
# the model twin
# ----------------------------------------------------------------------------------------------

class _Namespace(nn.Module):
    """A named group of sub-modules, so that parameter names read like BERT's (and minisage's)."""

    def __init__(self, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


class _SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.self = _Namespace(query=nn.Linear(d, d), key=nn.Linear(d, d), value=nn.Linear(d, d))
        self.output = _Namespace(dense=nn.Linear(d, d))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, D/H)
            return t.reshape(B, T, H, D // H).transpose(1, 2)

        q, k, v = heads(self.self.query(x)), heads(self.self.key(x)), heads(self.self.value(x))
        # scores = q k^T / sqrt(d_head)
        scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(D // H))  # (B, H, T, T)
        if causal:
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, -math.inf)
        weights = self.dropout(torch.softmax(scores, dim=-1))  # (B, H, T, T)
        mixed = (weights @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.output.dense(mixed)


class _Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.attention_norm = nn.LayerNorm(d, eps=1e-5)
        self.attention = _SelfAttention(config)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-5)
        self.intermediate = _Namespace(dense=nn.Linear(d, 4 * d))
        self.output = _Namespace(dense=nn.Linear(4 * d, d))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), causal))  # (B, T, D)
        hidden = TF.gelu(self.intermediate.dense(self.ffn_norm(x)))  # exact (erf) GELU, (B, T, 4D)
        return x + self.dropout(self.output.dense(hidden))  # (B, T, D)


class TorchTransformer(nn.Module):
    """The torch twin of :class:`minisage.nn.Transformer`: same architecture, same parameter
    names and layouts (Linear weights ``(out, in)``), same methods (``forward`` -> hidden states,
    ``lm_logits``, ``classify_logits``) and the same ``config``. Build one with :func:`to_torch`.

    Dropout uses torch's own generator, so with ``dropout > 0`` in training mode its masks differ
    from minisage's; everything else agrees to rounding error.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embeddings = _Namespace(word=nn.Embedding(config.vocab_size, d),
                                     position=nn.Embedding(config.max_len, d))
        self.blocks = nn.ModuleList([_Block(config) for _ in range(config.n_layers)])
        self.final_norm = nn.LayerNorm(d, eps=1e-5)
        self.lm_head = nn.Linear(d, config.vocab_size)
        if config.num_classes:
            self.classifier = nn.Linear(d, config.num_classes)
        self.dropout = nn.Dropout(config.dropout)

    def _ids(self, ids) -> torch.Tensor:
        device = self.lm_head.weight.device
        if isinstance(ids, torch.Tensor):
            return ids.to(device=device, dtype=torch.long)
        return torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)

    def forward(self, ids, causal: bool | None = None) -> torch.Tensor:
        ids = self._ids(ids)
        B, T = ids.shape
        if T > self.config.max_len:
            raise ValueError(f"TorchTransformer: sequence length {T} exceeds max_len "
                             f"{self.config.max_len}")
        causal = self.config.causal if causal is None else causal
        positions = torch.arange(T, device=ids.device)
        x = self.embeddings.word(ids) + self.embeddings.position(positions)  # (B, T, D)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, causal)
        return self.final_norm(x)  # (B, T, D)

    def lm_logits(self, ids, causal: bool | None = None) -> torch.Tensor:
        return self.lm_head(self.forward(ids, causal))  # (B, T, V)

    def classify_logits(self, ids, causal: bool | None = None) -> torch.Tensor:
        if not self.config.num_classes:
            raise ValueError("TorchTransformer: this model has no classification head "
                             "(num_classes=0)")
        return self.classifier(self.forward(ids, causal)[:, 0, :])  # (B, C)


def to_torch(model: Transformer, *, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None) -> TorchTransformer:
    """A :class:`TorchTransformer` with ``model``'s architecture and a copy of its weights.

    ``dtype`` defaults to the model's own (``model.config.dtype``); ``device`` to the CPU. The
    twin is in the same train/eval mode as ``model``. Raises ValueError if ``model`` is not a
    minisage Transformer or if its parameter names do not map one to one.
    """
    if not isinstance(model, Transformer):
        raise ValueError(f"to_torch: expected a minisage Transformer, got {type(model).__name__}")
    dev = resolve_device(device)
    dt = resolve_dtype(model.config.dtype if dtype is None else dtype)
    twin = TorchTransformer(model.config)
    ours = dict(model.named_parameters())
    theirs = dict(twin.named_parameters())
    if list(ours) != list(theirs):
        raise ValueError(f"to_torch: parameter names differ: minisage only "
                         f"{sorted(set(ours) - set(theirs))}, torch only "
                         f"{sorted(set(theirs) - set(ours))}")
    with torch.no_grad():
        for name, p in theirs.items():
            src = ours[name].data
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"to_torch: {name} has shape {src.shape}, the twin expects "
                                 f"{tuple(p.shape)}")
            p.data = torch.tensor(np.array(src), dtype=dt)
    twin.to(dev)
    twin.train(model.training)
    return twin


# ----------------------------------------------------------------------------------------------
# golden-vector step functions (minisage.testing.check_rule's signature), for crosscheck
# ----------------------------------------------------------------------------------------------

def _to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(np.array(a), device=device)  # keeps float32 / float64


def _spec_optimizer_step(cls: type[_SpecOptimizer], sage: bool, device: torch.device):
    """A step function running one step of ``cls`` (with ``sage``) on the golden inputs.

    The scheduled ``lr`` of a golden step is set as a torch scheduler would: ``group["lr"] = lr``
    with the base lr in ``group["initial_lr"]``. The spec preset ``adamw`` has ``maximize``,
    which ``AdamSAGE(sage=False)`` lacks: it is emulated by negating the gradient (exact).
    """

    def step_fn(param, grad, state, lr, hparams):
        hp = dict(hparams)
        if hp.pop("maximize", False):
            grad = -grad
        p = _to_tensor(param, device)
        p.grad = _to_tensor(grad, device)
        opt = cls([p], sage=sage, **hp)
        opt.state[p] = {k: (int(v) if k == "step" else _to_tensor(v, device))
                        for k, v in state.items()}
        if lr is not None:
            opt.param_groups[0]["initial_lr"] = hp["lr"]
            opt.param_groups[0]["lr"] = lr
        opt.step()
        out = {k: (v if k == "step" else v.cpu().numpy()) for k, v in opt.state[p].items()}
        return p.detach().cpu().numpy(), out

    return step_fn


def _torch_optim_step(preset: str, device: torch.device):
    """A step function for ``torch.optim``'s own SGD, Adam, AdamW, Adamax (single-tensor path),
    which the spec presets ``sgd``, ``adam``, ``adamw``, ``adamax`` reproduce."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "adamax": torch.optim.Adamax}[preset]

    def step_fn(param, grad, state, lr, hparams):
        hp = dict(hparams)
        if lr is not None:
            hp["lr"] = lr
        p = _to_tensor(param, device)
        p.grad = _to_tensor(grad, device)
        opt = cls([p], foreach=False, **hp)
        t = int(state["step"])
        if preset == "sgd":
            if "momentum_buffer" in state:
                opt.state[p] = {"momentum_buffer": (None if t == 0 else
                                                    _to_tensor(state["momentum_buffer"], device))}
        else:
            st = {k: _to_tensor(v, device) for k, v in state.items() if k != "step"}
            st["step"] = torch.tensor(float(t), dtype=torch.float32)
            opt.state[p] = st
        opt.step()
        out: dict[str, Any] = {"step": t + 1}
        for k, v in opt.state[p].items():
            if k != "step":
                out[k] = v.cpu().numpy()
        return p.detach().cpu().numpy(), out

    return step_fn


def golden_step_functions(device: str | torch.device | None = None
                          ) -> list[tuple[str, str, Callable]]:
    """``(implementation, preset, step_fn)`` for every spec preset this backend implements.

    ``step_fn`` has :func:`minisage.testing.check_rule`'s signature; it runs on ``device``
    (CPU by default) in the golden case's dtype.
    """
    dev = resolve_device(device)
    return [
        ("torch.optim.SGD", "sgd", _torch_optim_step("sgd", dev)),
        ("torch.optim.Adam", "adam", _torch_optim_step("adam", dev)),
        ("torch.optim.AdamW", "adamw", _torch_optim_step("adamw", dev)),
        ("torch.optim.Adamax", "adamax", _torch_optim_step("adamax", dev)),
        ("AdamWSAGE(sage=False)", "bert-adamw", _spec_optimizer_step(AdamWSAGE, False, dev)),
        ("AdamWSAGE", "adamw-sage", _spec_optimizer_step(AdamWSAGE, True, dev)),
        ("AdamaxSAGE(sage=False)", "bert-adamax", _spec_optimizer_step(AdamaxSAGE, False, dev)),
        ("AdamaxSAGE", "adamax-sage", _spec_optimizer_step(AdamaxSAGE, True, dev)),
        ("AdamSAGE(sage=False)", "adamw", _spec_optimizer_step(AdamSAGE, False, dev)),
        ("AdamSAGE", "adam-sage", _spec_optimizer_step(AdamSAGE, True, dev)),
    ]
