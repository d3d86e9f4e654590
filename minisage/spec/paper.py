"""``adam-sage``: SAGE on Adam as the paper states it (Liang et al., ICLR 2022, Algorithm 1).

This is a reading of the paper, not a reproduction of code (SAGE_SPEC.md section 4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minisage.spec import _checks
from minisage.spec.rule import Rule
from minisage.spec.sage import lr_multiplier, sensitivity, sensitivity_ema, uncertainty


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
    reproduces = "the paper's Algorithm 1 (our reading; SAGE_SPEC.md section 4), no code"
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "beta3": 0.75, "eps": 1e-8,
                "sage_eps": 1e-12, "weight_decay": 0.0}
    sage = True

    def _validate(self, hp: dict[str, Any]) -> dict[str, Any]:
        n = self.name
        return {
            "lr": _checks.nonneg(n, "lr", hp["lr"]),
            "betas": _checks.betas(n, hp["betas"]),
            "beta3": _checks.beta(n, "beta3", hp["beta3"]),
            "eps": _checks.nonneg(n, "eps", hp["eps"]),
            "sage_eps": _checks.nonneg(n, "sage_eps", hp["sage_eps"]),
            "weight_decay": _checks.nonneg(n, "weight_decay", hp["weight_decay"]),
        }

    @property
    def array_keys(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "sensitivity_ema")

    def _update(self, p, g, state, lr):
        h = self.hparams
        b1, b2 = h["betas"]
        wd = h["weight_decay"]
        lr_t = self._base_lr(lr)
        # t = t + 1
        t = state["step"] + 1
        # I = |p * g|
        I = sensitivity(p, g)  # noqa: E741
        # Ibar = beta3 * Ibar + (1 - beta3) * I
        Ibar = sensitivity_ema(state["sensitivity_ema"], I, h["beta3"])
        # U = |I - Ibar|
        U = uncertainty(I, Ibar)
        # r = U / (Ibar + sage_eps)
        r = lr_multiplier(U, Ibar, h["sage_eps"])
        if wd != 0:
            # p = p * (1 - lr_t * weight_decay)
            p = p * (1 - lr_t * wd)
        # m = m + (1 - beta1) * (g - m)
        m = state["exp_avg"] + (1 - b1) * (g - state["exp_avg"])
        # v = beta2 * v + (1 - beta2) * g * g
        v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
        # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        denom = np.sqrt(v) / (1 - b2**t) ** 0.5 + h["eps"]
        # p = p - (lr_t / (1 - beta1^t)) * r * m / denom
        new_p = p - (lr_t / (1 - b1**t)) * r * m / denom
        new_state = {"step": t, "exp_avg": m, "exp_avg_sq": v, "sensitivity_ema": Ibar}
        trace = {"lr": np.asarray(lr_t), "sensitivity": I, "sensitivity_ema": Ibar,
                 "sensitivity_ema_hat": Ibar, "uncertainty": U, "lr_multiplier": r}
        return new_p, new_state, trace
