"""Presets that reproduce ``torch.optim`` (torch 2.x, single-tensor path): sgd, adam, adamw, adamax.

State keys are torch's own: ``exp_avg``, ``exp_avg_sq`` (Adam), ``exp_inf`` (Adamax),
``momentum_buffer`` (SGD with momentum), plus the integer ``step``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minisage.spec import _checks
from minisage.spec.moments import (
    adam_denominator,
    infinity_moment_into,
    lerp_moment_into,
    second_moment_into,
)
from minisage.spec.rule import Rule, Scratch


def coupled_grad(p: np.ndarray, g: np.ndarray, maximize: bool, weight_decay: float,
                 scratch: Scratch) -> np.ndarray:
    """The gradient torch's rules use: ``-g`` if ``maximize``, plus the L2 term
    ``weight_decay * p``; ``g`` itself when neither applies, else a new value in scratch buffer 0
    (buffer 1 is used)."""
    if maximize:
        # g = -g
        g = np.negative(g, out=scratch.get(0, p))
    if weight_decay != 0:
        # g = g + weight_decay * p
        g = np.add(g, np.multiply(weight_decay, p, out=scratch.get(1, p)), out=scratch.get(0, p))
    return g


class SGDRule(Rule):
    """``sgd``: stochastic gradient descent, as ``torch.optim.SGD``.

    Update, with ``t`` the number of steps already taken::

        g   = -g                              if maximize
        g   = g + weight_decay * p            (L2, coupled into the gradient)
        buf = g                               at the first step (t = 0), else
        buf = momentum * buf + (1 - dampening) * g
        g   = g + momentum * buf              if nesterov, else g = buf   (only if momentum != 0)
        p   = p - lr_t * g

    Symbols: ``lr_t`` = ``lr`` (or this step's scheduled lr), ``momentum``, ``dampening``,
    ``weight_decay``, ``nesterov``, ``maximize``. Defaults (torch): ``lr=1e-3``, the rest 0/False.
    State: ``step``; ``momentum_buffer`` only when ``momentum != 0``.

    Warning: weight decay here is L2 added to the gradient (and so passes through the momentum),
    unlike the decoupled decay of ``adamw`` and the official presets.
    """

    name = "sgd"
    reproduces = "torch.optim.SGD (torch 2.x)"
    defaults = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                "nesterov": False, "maximize": False}

    def _validate(self, hp: dict[str, Any]) -> dict[str, Any]:
        out = {
            "lr": _checks.nonneg(self.name, "lr", hp["lr"]),
            "momentum": _checks.nonneg(self.name, "momentum", hp["momentum"]),
            "dampening": _checks.real(self.name, "dampening", hp["dampening"],
                                      range_text="(-inf, inf)"),
            "weight_decay": _checks.nonneg(self.name, "weight_decay", hp["weight_decay"]),
            "nesterov": _checks.flag(self.name, "nesterov", hp["nesterov"]),
            "maximize": _checks.flag(self.name, "maximize", hp["maximize"]),
        }
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"{self.name}: nesterov=True requires momentum in (0, inf) and "
                             f"dampening = 0, got momentum={out['momentum']!r}, "
                             f"dampening={out['dampening']!r}")
        return out

    @property
    def array_keys(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.hparams["momentum"] != 0 else ()

    def update_into(self, p, g, state, t, lr_t, scratch, trace=None):
        h = self.hparams
        momentum = h["momentum"]
        a = scratch.get(1, p)
        # g = -g if maximize ;  g = g + weight_decay * p
        g = coupled_grad(p, g, h["maximize"], h["weight_decay"], scratch)
        if momentum != 0:
            buf = state["momentum_buffer"]
            if t == 1:
                # buf = g
                np.copyto(buf, g)
            else:
                # buf = momentum * buf + (1 - dampening) * g
                buf *= momentum
                buf += np.multiply(1 - h["dampening"], g, out=a)
            if h["nesterov"]:
                # g = g + momentum * buf
                g = np.add(g, np.multiply(momentum, buf, out=a), out=scratch.get(0, p))
            else:
                # g = buf
                g = buf
        # p = p - lr_t * g
        p -= np.multiply(lr_t, g, out=a)


class AdamRule(Rule):
    """``adam``: Adam with L2 weight decay, as ``torch.optim.Adam``.

    Update, with ``t`` the step count after its increment (1 at the first step)::

        t     = t + 1
        g     = -g                                  if maximize
        g     = g + weight_decay * p                (L2, coupled: it enters m and v)
        m     = m + (1 - beta1) * (g - m)           (torch's lerp form of beta1 m + (1-beta1) g)
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p     = p - (lr_t / (1 - beta1^t)) * m / denom

    Symbols: ``lr_t`` = ``lr`` or this step's scheduled lr, ``(beta1, beta2)`` = ``betas``,
    ``eps``, ``weight_decay``, ``maximize``. Defaults (torch): ``lr=1e-3``, ``betas=(0.9, 0.999)``,
    ``eps=1e-8``, ``weight_decay=0``. State: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v).

    Warning: eps is added *after* the bias correction of ``sqrt(v)`` (the official BERT AdamW adds
    it before, to the uncorrected ``sqrt(v)``), and weight decay is coupled L2, not AdamW's
    decoupled decay.
    """

    name = "adam"
    reproduces = "torch.optim.Adam (torch 2.x)"
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                "maximize": False}
    decoupled = False

    def _validate(self, hp: dict[str, Any]) -> dict[str, Any]:
        return {
            "lr": _checks.nonneg(self.name, "lr", hp["lr"]),
            "betas": _checks.betas(self.name, hp["betas"]),
            "eps": _checks.divisor_eps(self.name, "eps", hp["eps"]),
            "weight_decay": _checks.nonneg(self.name, "weight_decay", hp["weight_decay"]),
            "maximize": _checks.flag(self.name, "maximize", hp["maximize"]),
        }

    @property
    def array_keys(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def update_into(self, p, g, state, t, lr_t, scratch, trace=None):
        h = self.hparams
        b1, b2 = h["betas"]
        wd = h["weight_decay"]
        if self.decoupled and wd != 0:
            # p = p * (1 - lr_t * weight_decay)       (AdamW: decoupled, before the step)
            p *= 1 - lr_t * wd
        # g = -g if maximize ;  g = g + weight_decay * p  (Adam only: L2 in the gradient)
        g = coupled_grad(p, g, h["maximize"], 0.0 if self.decoupled else wd, scratch)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        a = scratch.get(1, p)
        # m = m + (1 - beta1) * (g - m)
        lerp_moment_into(m, g, b1, out=a)
        # v = beta2 * v + (1 - beta2) * g * g
        second_moment_into(v, g, b2, out=a)
        # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        denom = adam_denominator(v, b2, t, h["eps"], out=a)
        # p = p - (lr_t / (1 - beta1^t)) * m / denom
        step = np.multiply(lr_t / (1 - b1**t), m, out=scratch.get(2, p))
        step /= denom
        p -= step


class AdamWRule(AdamRule):
    """``adamw``: Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    Update, with ``t`` the step count after its increment::

        t     = t + 1
        g     = -g                                  if maximize
        p     = p * (1 - lr_t * weight_decay)       (decoupled, scaled by the *current* lr,
                                                     applied before the Adam step)
        m     = m + (1 - beta1) * (g - m)
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p     = p - (lr_t / (1 - beta1^t)) * m / denom

    Symbols as in ``adam``. Defaults (torch): ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``,
    ``weight_decay=1e-2``. State: ``step``, ``exp_avg``, ``exp_avg_sq``. With ``weight_decay=0`` it
    is ``adam`` exactly.

    Warning: three "AdamW"s disagree. torch decays first with the scheduled lr; the official BERT
    AdamW (``bert-adamw``) decays *after* the step with the *unscheduled* base lr, and puts eps
    inside the uncorrected denominator; ``adam`` couples the decay into the gradient.
    """

    name = "adamw"
    reproduces = "torch.optim.AdamW (torch 2.x)"
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
                "maximize": False}
    decoupled = True


class AdamaxRule(Rule):
    """``adamax``: Adamax (Adam with the infinity norm), as ``torch.optim.Adamax``.

    Update, with ``t`` the step count after its increment::

        t = t + 1
        g = -g                                      if maximize
        g = g + weight_decay * p                    (L2, coupled)
        m = m + (1 - beta1) * (g - m)
        u = max(beta2 * u, |g| + eps)
        p = p - (lr_t / (1 - beta1^t)) * m / u

    Symbols: ``u`` = ``exp_inf``; others as in ``adam``. Defaults (torch): ``lr=2e-3``,
    ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``. State: ``step``, ``exp_avg``,
    ``exp_inf``.

    Warning: eps enters once, inside the max; the official ``bert-adamax`` adds it a second time
    (``m / (u + eps)``), has no bias correction, and adds its weight decay to the update.
    """

    name = "adamax"
    reproduces = "torch.optim.Adamax (torch 2.x)"
    defaults = {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                "maximize": False}

    _validate = AdamRule._validate

    @property
    def array_keys(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_inf")

    def update_into(self, p, g, state, t, lr_t, scratch, trace=None):
        h = self.hparams
        b1, b2 = h["betas"]
        m, u = state["exp_avg"], state["exp_inf"]
        a = scratch.get(1, p)
        # g = -g if maximize ;  g = g + weight_decay * p
        g = coupled_grad(p, g, h["maximize"], h["weight_decay"], scratch)
        # m = m + (1 - beta1) * (g - m)
        lerp_moment_into(m, g, b1, out=a)
        # u = max(beta2 * u, |g| + eps)
        infinity_moment_into(u, g, b2, h["eps"], out=a)
        # p = p - (lr_t / (1 - beta1^t)) * m / u
        step = np.multiply(lr_t / (1 - b1**t), m, out=a)
        step /= u
        p -= step

