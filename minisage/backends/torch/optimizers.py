"""SAGE as ``torch.optim.Optimizer`` subclasses, defined by the spec (:mod:`minisage.spec`).

Each optimizer implements two spec presets, chosen per param group by ``group["sage"]``; the
update equations are the spec rule's (``help(minisage.spec.rule_class(preset))``, docs/spec.md
sections 3 and 4). The code follows the spec line by line, with the same association of products,
so float64 results agree with the spec to about 1e-15 relative (``minisage crosscheck --backend
torch`` checks every golden case). What is specific to torch:

- schedules: a ``torch.optim.lr_scheduler`` changes ``group["lr"]``, which is the step's ``lr_t``;
  the AdamW pair's decoupled decay uses the *unscheduled* base lr, ``group["initial_lr"]`` once a
  scheduler is attached (torch stores it there), else ``group["lr"]``. The official in-optimizer
  schedule (``warmup``, ``t_total``, ``schedule``) multiplies whatever ``group["lr"]`` holds: use
  one schedule or the other;
- state per parameter: ``step`` (a Python int), ``exp_avg``, ``exp_avg_sq`` or ``exp_inf``, and
  ``sensitivity_ema`` where SAGE is on -- the spec's names, so a torch state converts to a spec
  state key by key;
- any device and floating dtype; the arithmetic stays in the parameter's dtype. A non-finite
  gradient raises FloatingPointError naming the parameter before anything changes (one device
  sync per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from minisage import spec
from minisage.spec import split
from minisage.spec.schedules import official_lr
from minisage.spec.split import DEFAULT_NO_DECAY_PATTERNS, SAGE_PATTERNS


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


def _sage_multiplier(p: torch.Tensor, g: torch.Tensor, Ibar: torch.Tensor, beta3: float,  # noqa: N803
                     eps: float, t: int | None = None) -> torch.Tensor:
    """SAGE's multiplier ``r`` of one parameter (a new tensor), from the pieces of
    :mod:`minisage.spec.sage`; ``Ibar`` (the state's ``sensitivity_ema``) is updated in place.
    ``t``: bias-correct the average at step ``t`` (``adamw-sage`` with ``correct_bias``)."""
    # I = |p * g|
    I = (p * g).abs_()  # noqa: E741
    # Ibar = beta3 * Ibar + (1 - beta3) * I
    Ibar.mul_(beta3).add_(I * (1 - beta3))
    # Ihat = Ibar / (1 - beta3^t) where bias-corrected, else Ibar
    Ihat = Ibar if t is None else Ibar / (1 - beta3**t)
    # r = |I - Ihat| / (Ihat + eps)
    return (I - Ihat).abs_().div_(Ihat + eps)


class SpecOptimizer(torch.optim.Optimizer):
    """Shared machinery: hyperparameters checked by the spec rule, per-group ``sage`` switch."""

    #: (preset with sage, preset without)
    presets: tuple[str, str] = ("", "")
    #: the state's moment arrays (``sensitivity_ema`` comes in where SAGE is on)
    moments: tuple[str, ...] = ()

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
        state = {"step": 0, **{key: _zeros(p) for key in self.moments}}
        if group["sage"]:
            state["sensitivity_ema"] = _zeros(p)
        return state

    def _update(self, p, g, state, group) -> torch.Tensor:
        raise NotImplementedError


def _zeros(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


class AdamWSAGE(SpecOptimizer):
    """The official ``UnstructAwareAdamW``: spec preset ``adamw-sage`` on groups with ``sage=True``
    (the default), ``bert-adamw`` on the others.

    The update: ``help(minisage.spec.rule_class("adamw-sage"))`` (docs/spec.md section 3).
    Arguments, with the official names and defaults: ``lr=1e-3``, ``warmup=-1``, ``t_total=-1``,
    ``schedule="warmup_linear"`` (the official in-optimizer schedule; ``t_total=-1`` turns it
    off), ``betas=(0.9, 0.999)``, ``beta3=0.75``, ``eps=1e-6``, ``weight_decay=0.0``,
    ``correct_bias=True``, ``max_grad_norm=1.0`` (<= 0: no per-tensor clipping), ``sage=True``.

    Warning: not ``torch.optim.AdamW``: the decay follows the step and uses the base lr
    (``group["initial_lr"]`` under a torch scheduler).
    """

    presets = ("adamw-sage", "bert-adamw")
    moments = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, warmup: float = -1, t_total: int = -1,
                 schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True,
                 max_grad_norm: float = 1.0, sage: bool = True) -> None:
        super().__init__(params, sage=sage, lr=lr, warmup=warmup, t_total=t_total,
                         schedule=schedule, betas=betas, beta3=beta3, eps=eps,
                         weight_decay=weight_decay, correct_bias=correct_bias,
                         max_grad_norm=max_grad_norm)

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
            # r = |I - Ihat| / (Ihat + eps^2), Ihat = Ibar / (1 - beta3^t) if correct_bias
            r = _sage_multiplier(p, g, state["sensitivity_ema"], group["beta3"], eps**2,
                                 t if group["correct_bias"] else None)
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


class AdamaxSAGE(SpecOptimizer):
    """The official ``UnstructAwareAdamax``: spec preset ``adamax-sage`` on groups with
    ``sage=True`` (the default), ``bert-adamax`` on the others.

    The update: ``help(minisage.spec.rule_class("adamax-sage"))`` (docs/spec.md section 3).
    Arguments, with the official names and defaults: ``lr`` (required), ``warmup=-1``,
    ``t_total=-1``, ``schedule="warmup_linear"``, ``betas=(0.9, 0.999)``, ``beta3=0.75``,
    ``eps=1e-6``, ``weight_decay=0.01``, ``max_grad_norm=1.0``, ``sage=True``.

    Warning: not ``torch.optim.Adamax``: no bias correction, and the decay is inside the update
    (scaled by the lr and by ``r``).
    """

    presets = ("adamax-sage", "bert-adamax")
    moments = ("exp_avg", "exp_inf")

    def __init__(self, params, lr: float, warmup: float = -1, t_total: int = -1,
                 schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                 sage: bool = True) -> None:
        super().__init__(params, sage=sage, lr=lr, warmup=warmup, t_total=t_total,
                         schedule=schedule, betas=betas, beta3=beta3, eps=eps,
                         weight_decay=weight_decay, max_grad_norm=max_grad_norm)

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
            # r = |I - Ibar| / (Ibar + eps^2)
            r = _sage_multiplier(p, g, state["sensitivity_ema"], group["beta3"], eps**2)
        if group["weight_decay"] > 0:
            # update = update + weight_decay * p
            update.add_(p * group["weight_decay"])
        # s = lr_t, scheduled with t before its increment
        lr_t = official_lr(group["lr"], t, group["t_total"], group["warmup"], group["schedule"])
        if group["sage"]:
            # s = lr_t * r ;  p = p - s * update
            s = r.mul_(lr_t)
            new_p = p - s.mul_(update)
        else:
            new_p = p - update.mul_(lr_t)
        # t = t + 1
        state["step"] = t + 1
        return new_p


class AdamSAGE(SpecOptimizer):
    """The paper's SAGE-Adam as the spec reads it: preset ``adam-sage`` on groups with
    ``sage=True`` (the default), ``torch.optim.AdamW`` (preset ``adamw``) on the others.

    The update: ``help(minisage.spec.rule_class("adam-sage"))`` (docs/spec.md section 4).
    Arguments: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``beta3=0.75``, ``eps=1e-8``,
    ``sage_eps=1e-12``, ``weight_decay=0.0``, ``sage=True``. No clipping and no internal
    schedule: use ``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.lr_scheduler``.

    Warning: a reading of the paper, not of the official code (see ``AdamWSAGE``).
    """

    presets = ("adam-sage", "adamw")
    moments = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-8, sage_eps: float = 1e-12, weight_decay: float = 0.0,
                 sage: bool = True) -> None:
        super().__init__(params, sage=sage, lr=lr, betas=betas, beta3=beta3, eps=eps,
                         sage_eps=sage_eps, weight_decay=weight_decay)

    def _update(self, p, g, state, group):
        b1, b2 = group["betas"]
        wd = group["weight_decay"]
        lr_t = group["lr"]
        # t = t + 1
        t = state["step"] + 1
        if group["sage"]:
            # r = |I - Ibar| / (Ibar + sage_eps)
            r = _sage_multiplier(p, g, state["sensitivity_ema"], group["beta3"],
                                 group["sage_eps"])
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
