"""``adam-sage``: SAGE on Adam as the paper states it (Liang et al., ICLR 2022, Algorithm 1).

This is a reading of the paper, not a reproduction of code (docs/spec.md section 4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minisage.spec import _checks
from minisage.spec.moments import adam_denominator, lerp_moment_into, second_moment_into
from minisage.spec.rule import Rule


class AdamSAGERule(Rule):
    """``adam-sage``: the paper's SAGE-Adam, with torch.optim.AdamW's moments and decay.

    Update, with ``t`` the step count after its increment::

        t     = t + 1
        I     = |p * g|                              (p before this step's decay and update)
        Ibar  = beta3 * Ibar + (1 - beta3) * I       (no bias correction)
        U     = |I - Ibar|
        r     = U / (Ibar + sage_eps)
        p     = p * (1 - lr_t * weight_decay)        (decoupled, as torch.optim.AdamW)
        m     = m + (1 - beta1) * (g - m)
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p     = p - (lr_t / (1 - beta1^t)) * r * m / denom

    i.e. ``p -= lr_t * r * mhat / (sqrt(vhat) + eps)``. Symbols -> arguments: ``lr_t`` = ``lr`` or
    this step's scheduled lr, ``(beta1, beta2)`` = ``betas``, ``beta3``, ``eps`` (Adam's),
    ``sage_eps`` (the multiplier's), ``weight_decay``. Defaults: ``lr=1e-3``,
    ``betas=(0.9, 0.999)``, ``beta3=0.75``, ``eps=1e-8``, ``sage_eps=1e-12``, ``weight_decay=0``.
    State: ``step``, ``exp_avg``, ``exp_avg_sq``, ``sensitivity_ema``.

    Reproduces no code: it is our reading of the paper's Algorithm 1, with ``torch.optim.AdamW``
    where the paper is silent (the decay). The first step has ``r = beta3 / (1 - beta3)`` wherever
    ``I > 0``.

    Warning: the official ``adamw-sage`` bias-corrects the sensitivity EMA (so its first step is
    zero), uses ``eps**2`` in the multiplier, eps inside the uncorrected Adam denominator, and
    decays after the step with the unscheduled lr; here the decay comes first with the scheduled
    lr and is not scaled by ``r``.
    """

    name = "adam-sage"
    reproduces = "the paper's Algorithm 1 (our reading; docs/spec.md section 4), no code"
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "beta3": 0.75, "eps": 1e-8,
                "sage_eps": 1e-12, "weight_decay": 0.0}
    sage = True

    def sage_terms(self, t):
        # its own sage_eps; no bias correction
        return self.hparams["sage_eps"], None

    def _validate(self, hp: dict[str, Any]) -> dict[str, Any]:
        n = self.name
        return {
            "lr": _checks.nonneg(n, "lr", hp["lr"]),
            "betas": _checks.betas(n, hp["betas"]),
            "beta3": _checks.sage_beta3(n, hp["beta3"]),
            "eps": _checks.divisor_eps(n, "eps", hp["eps"]),
            "sage_eps": _checks.divisor_eps(n, "sage_eps", hp["sage_eps"]),
            "weight_decay": _checks.nonneg(n, "weight_decay", hp["weight_decay"]),
        }

    @property
    def array_keys(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "sensitivity_ema")

    def update_into(self, p, g, state, t, lr_t, scratch, trace=None):
        h = self.hparams
        b1, b2 = h["betas"]
        wd = h["weight_decay"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        a = scratch.get(1, p)
        # r = U / (Ibar + sage_eps), from I = |p * g| (p before this step) and Ibar
        r = self.multiplier_into(p, g, state["sensitivity_ema"], t, out=scratch.get(3, p),
                                 work=a, trace=trace)
        if wd != 0:
            # p = p * (1 - lr_t * weight_decay)
            p *= 1 - lr_t * wd
        # m = m + (1 - beta1) * (g - m)
        lerp_moment_into(m, g, b1, out=a)
        # v = beta2 * v + (1 - beta2) * g * g
        second_moment_into(v, g, b2, out=a)
        # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        denom = adam_denominator(v, b2, t, h["eps"], out=a)
        # p = p - (lr_t / (1 - beta1^t)) * r * m / denom
        step = np.multiply(lr_t / (1 - b1**t), r, out=r)
        step *= m
        step /= denom
        p -= step
