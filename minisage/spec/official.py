"""Presets that reproduce the official SAGE code (cliang1453/SAGE, ``module/bert_optim.py``).

``bert-adamw`` / ``adamw-sage`` are the two paths of its ``UnstructAwareAdamW`` (the ``'common'``
groups are exactly its plain ``AdamW``); ``bert-adamax`` / ``adamax-sage`` the two paths of
``UnstructAwareAdamax`` (``'common'`` = its plain ``Adamax``). Hyperparameter names and defaults
are the official classes' own; the schedule can live inside the rule, as it does there.

State keys: ``step``, ``exp_avg``, ``exp_avg_sq`` (AdamW pair) or ``exp_inf`` (Adamax pair), and
for the SAGE presets ``sensitivity_ema`` (the official ``exp_avg_ipt``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minisage.spec import _checks
from minisage.spec.moments import first_moment_into, infinity_moment_into, second_moment_into
from minisage.spec.rule import REQUIRED, Rule
from minisage.spec.schedules import OFFICIAL_SCHEDULES, official_lr


class _OfficialRule(Rule):
    """Hyperparameter checks and the internal schedule shared by the four official presets."""

    aliases = {"b1": "betas[0]", "b2": "betas[1]", "e": "eps"}

    def _fold_aliases(self, given: dict[str, Any]) -> dict[str, Any]:
        # b1, b2, e: the names in the official docstrings (copied from BertAdam); the official
        # signatures take betas and eps. Accept both spellings, never both at once.
        if "b1" in given or "b2" in given:
            if "betas" in given:
                raise ValueError(f"{self.name}: give betas or b1/b2, not both")
            b1 = given.pop("b1", self.defaults["betas"][0])
            b2 = given.pop("b2", self.defaults["betas"][1])
            given["betas"] = (b1, b2)
        if "e" in given:
            if "eps" in given:
                raise ValueError(f"{self.name}: give eps or e, not both")
            given["eps"] = given.pop("e")
        return given

    def _validate(self, hp: dict[str, Any]) -> dict[str, Any]:
        n = self.name
        out: dict[str, Any] = {"lr": _checks.nonneg(n, "lr", hp["lr"])}
        warmup = _checks.real(n, "warmup", hp["warmup"], range_text="[0, 1) or -1")
        if not (0.0 <= warmup < 1.0 or warmup == -1):
            raise ValueError(f"{n}: warmup must be in [0, 1) or -1, got {hp['warmup']!r}")
        out["warmup"] = warmup
        allowed = "a positive integer or -1 (constant lr)"
        t_total = _checks.integer(n, "t_total", hp["t_total"], allowed_text=allowed)
        if not (t_total > 0 or t_total == -1):
            raise ValueError(f"{n}: t_total must be {allowed}, got {hp['t_total']!r}")
        out["t_total"] = t_total
        if hp["schedule"] not in OFFICIAL_SCHEDULES:
            raise ValueError(f"{n}: schedule must be one of {', '.join(OFFICIAL_SCHEDULES)}, "
                             f"got {hp['schedule']!r}")
        out["schedule"] = hp["schedule"]
        out["betas"] = _checks.betas(n, hp["betas"])
        if "beta3" in hp:
            out["beta3"] = _checks.sage_beta3(n, hp["beta3"])
        # the SAGE pair divides by Ihat + eps**2 as well as by sqrt(v) + eps (or u + eps)
        out["eps"] = _checks.divisor_eps(n, "eps", hp["eps"], squared=self.sage)
        out["weight_decay"] = _checks.nonneg(n, "weight_decay", hp["weight_decay"])
        if "correct_bias" in hp:
            out["correct_bias"] = _checks.flag(n, "correct_bias", hp["correct_bias"])
        out["max_grad_norm"] = _checks.real(n, "max_grad_norm", hp["max_grad_norm"],
                                            range_text="(-inf, inf) (<= 0 turns clipping off)")
        return out

    def _max_grad_norm(self) -> float:
        return self.hparams["max_grad_norm"]

    def _scheduled_lr(self, lr: float | None, step: int) -> float:
        """The caller's ``lr`` if given, else the official in-optimizer schedule at ``step``."""
        h = self.hparams
        if lr is not None:
            if h["t_total"] != -1:
                raise ValueError(f"{self.name}: this rule schedules its own lr (t_total="
                                 f"{h['t_total']}); call step() with lr=None")
            return lr
        return official_lr(h["lr"], step, h["t_total"], h["warmup"], h["schedule"])


class BertAdamWRule(_OfficialRule):
    """``bert-adamw`` (and, with SAGE, ``adamw-sage``): the official BERT-style AdamW.

    Update (``bert-adamw``; ``t`` is incremented first)::

        t     = t + 1
        g     = g * c  where c = max_grad_norm / (||g||_2 + 1e-6) < 1      (per-tensor clipping)
        m     = beta1 * m + (1 - beta1) * g
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) + eps                       (no bias correction inside the denominator)
        s     = lr_t                                (scheduled with the incremented t)
        s     = s * sqrt(1 - beta2^t) / (1 - beta1^t)                        if correct_bias
        p     = p - s * m / denom
        p     = p - lr * weight_decay * p           if weight_decay > 0: after the step, on the
                                                    updated p, with the *unscheduled* base lr

    Symbols -> arguments: ``lr`` (base lr), ``lr_t`` = ``lr * schedule(t / t_total, warmup)``
    when ``t_total != -1``, else ``lr`` (or the ``lr`` passed to ``step``, which overrides it);
    ``(beta1, beta2)`` = ``betas``; ``eps``; ``weight_decay``; ``correct_bias``;
    ``max_grad_norm`` (<= 0: no clipping); ``schedule`` in ``warmup_linear`` (default; note its
    jump), ``warmup_constant``, ``warmup_linear_xdl``. Aliases ``b1``, ``b2``, ``e``. Defaults
    (official): ``lr=1e-3``, ``warmup=-1``, ``t_total=-1``, ``betas=(0.9, 0.999)``, ``eps=1e-6``,
    ``weight_decay=0``, ``correct_bias=True``, ``max_grad_norm=1.0``.

    Reproduces ``AdamW`` of cliang1453/SAGE ``module/bert_optim.py`` (= the ``'common'`` path of
    its ``UnstructAwareAdamW``).

    Warning: it differs from ``torch.optim.AdamW`` (preset ``adamw``) in three places: eps is
    added to the *uncorrected* ``sqrt(v)`` (the bias correction is folded into the step size), the
    decay comes *after* the step and uses the *unscheduled* lr, and the gradient is clipped per
    tensor at norm 1.0 by default.
    """

    name = "bert-adamw"
    reproduces = "AdamW of the official SAGE code (cliang1453/SAGE module/bert_optim.py)"
    defaults = {"lr": 1e-3, "warmup": -1, "t_total": -1, "schedule": "warmup_linear",
                "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0, "correct_bias": True,
                "max_grad_norm": 1.0}

    @property
    def array_keys(self) -> tuple[str, ...]:
        if self.sage:
            return ("exp_avg", "exp_avg_sq", "sensitivity_ema")
        return ("exp_avg", "exp_avg_sq")

    def _step_lr(self, lr: float | None, step: int) -> float:
        # lr_t: scheduled with the step count after its increment
        return self._scheduled_lr(lr, step + 1)

    def update_into(self, p, g, state, t, lr_t, scratch, trace=None):
        h = self.hparams
        b1, b2 = h["betas"]
        eps = h["eps"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        a, b = scratch.get(1, p), scratch.get(2, p)
        # m = beta1 * m + (1 - beta1) * g
        first_moment_into(m, g, b1, out=a)
        # v = beta2 * v + (1 - beta2) * g * g
        second_moment_into(v, g, b2, out=a)
        # denom = sqrt(v) + eps
        denom = np.sqrt(v, out=a)
        denom += eps
        bias_correction1 = 1 - b1**t
        bias_correction2 = 1 - b2**t
        if self.sage:
            # r = U / (Ihat + eps^2), from I = |p * g|, Ibar and Ihat = Ibar / (1 - beta3^t)
            # (Ihat = Ibar without correct_bias)
            r = self.multiplier_into(p, g, state["sensitivity_ema"], t, out=scratch.get(3, p),
                                     work=b, trace=trace)
            # s = lr_t * r
            s = np.multiply(lr_t, r, out=r)
            if h["correct_bias"]:
                # s = s * (sqrt(1 - beta2^t) / (1 - beta1^t))   (the official grouping on this path)
                s *= math.sqrt(bias_correction2) / bias_correction1
            # p = p - (m / denom) * s
            step = np.divide(m, denom, out=denom)
            step *= s
        else:
            s = lr_t
            if h["correct_bias"]:
                # s = s * sqrt(1 - beta2^t) / (1 - beta1^t)
                s = s * math.sqrt(bias_correction2) / bias_correction1
            # p = p - s * m / denom
            step = np.multiply(s, m, out=b)
            step /= denom
        p -= step
        if h["weight_decay"] > 0:
            # p = p - lr * weight_decay * p       (base lr, after the update)
            p -= np.multiply(h["lr"] * h["weight_decay"], p, out=a)


class AdamWSAGERule(BertAdamWRule):
    """``adamw-sage``: AdamW-SAGE exactly as the official ``UnstructAwareAdamW`` (``'mask'`` path).

    Update (``t`` is incremented first)::

        t     = t + 1
        g     = g * c  where c = max_grad_norm / (||g||_2 + 1e-6) < 1      (per-tensor clipping)
        m     = beta1 * m + (1 - beta1) * g
        v     = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v) + eps
        I     = |p * g|                              (p before the update, g after clipping)
        Ibar  = beta3 * Ibar + (1 - beta3) * I
        Ihat  = Ibar / (1 - beta3^t)   if correct_bias, else Ibar
        U     = |I - Ihat|
        r     = U / (Ihat + eps^2)                   (eps squared: 1e-12 at eps=1e-6)
        s     = lr_t * r                             (lr_t scheduled with the incremented t)
        s     = s * (sqrt(1 - beta2^t) / (1 - beta1^t))                      if correct_bias
        p     = p - (m / denom) * s
        p     = p - lr * weight_decay * p            if weight_decay > 0 (unscheduled lr, no r)

    Symbols -> arguments as in ``bert-adamw``, plus ``beta3`` (default 0.75). The trace holds
    ``Ibar`` as ``sensitivity_ema`` (as the state does) and ``Ihat``, the value in the ratio, as
    ``sensitivity_ema_hat``.

    Reproduces ``UnstructAwareAdamW`` of cliang1453/SAGE ``module/bert_optim.py``.

    Warning: with ``correct_bias`` the sensitivity EMA is bias-corrected, so at the first step
    ``Ihat = I`` and nothing moves (``U = 0``); the paper's reading (``adam-sage``) and
    ``adamax-sage`` have no such correction. eps enters the multiplier squared, and in the
    denominator of the Adam step unsquared and uncorrected. The decay ignores ``r`` and the
    schedule.
    """

    name = "adamw-sage"
    reproduces = "UnstructAwareAdamW of the official SAGE code (module/bert_optim.py)"
    defaults = {"lr": 1e-3, "warmup": -1, "t_total": -1, "schedule": "warmup_linear",
                "betas": (0.9, 0.999), "beta3": 0.75, "eps": 1e-6, "weight_decay": 0.0,
                "correct_bias": True, "max_grad_norm": 1.0}
    sage = True

    def sage_terms(self, t):
        # eps squared; Ibar bias-corrected at step t with correct_bias
        return self.hparams["eps"] ** 2, (t if self.hparams["correct_bias"] else None)


class BertAdamaxRule(_OfficialRule):
    """``bert-adamax`` (and, with SAGE, ``adamax-sage``): the official BERT-style Adamax.

    Update (``bert-adamax``; ``t`` is incremented *last*)::

        g      = g * c  where c = max_grad_norm / (||g||_2 + 1e-6) < 1     (per-tensor clipping)
        m      = beta1 * m + (1 - beta1) * g
        u      = max(beta2 * u, |g| + eps)
        update = m / (u + eps)                       (eps a second time; no bias correction)
        update = update + weight_decay * p           if weight_decay > 0 (p before the update)
        s      = lr_t                                (scheduled with t *before* the increment)
        p      = p - s * update
        t      = t + 1

    Symbols -> arguments: ``lr`` (required: the official class has no default), ``lr_t`` =
    ``lr * schedule(t / t_total, warmup)`` when ``t_total != -1`` (so with warmup the first update
    is zero), else ``lr`` or the ``lr`` passed to ``step``; ``(beta1, beta2)`` = ``betas``; ``eps``;
    ``weight_decay``; ``max_grad_norm``; ``schedule``; aliases ``b1``, ``b2``, ``e``. Defaults
    (official): ``warmup=-1``, ``t_total=-1``, ``betas=(0.9, 0.999)``, ``eps=1e-6``,
    ``weight_decay=0.01``, ``max_grad_norm=1.0``.

    Reproduces ``Adamax`` of cliang1453/SAGE ``module/bert_optim.py`` (= the ``'common'`` path of
    its ``UnstructAwareAdamax``).

    Warning: unlike ``torch.optim.Adamax`` (preset ``adamax``) there is no bias correction, eps is
    added twice, the weight decay (default 0.01) is added to the update and so scaled by the
    scheduled lr, and the schedule uses the step count before its increment.
    """

    name = "bert-adamax"
    reproduces = "Adamax of the official SAGE code (cliang1453/SAGE module/bert_optim.py)"
    defaults = {"lr": REQUIRED, "warmup": -1, "t_total": -1, "schedule": "warmup_linear",
                "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.01, "max_grad_norm": 1.0}

    @property
    def array_keys(self) -> tuple[str, ...]:
        if self.sage:
            return ("exp_avg", "exp_inf", "sensitivity_ema")
        return ("exp_avg", "exp_inf")

    def _step_lr(self, lr: float | None, step: int) -> float:
        # lr_t: scheduled with the step count *before* its increment
        return self._scheduled_lr(lr, step)

    def update_into(self, p, g, state, t, lr_t, scratch, trace=None):
        h = self.hparams
        b1, b2 = h["betas"]
        eps = h["eps"]
        m, u = state["exp_avg"], state["exp_inf"]
        a, b = scratch.get(1, p), scratch.get(2, p)
        # m = beta1 * m + (1 - beta1) * g
        first_moment_into(m, g, b1, out=a)
        # u = max(beta2 * u, |g| + eps)
        infinity_moment_into(u, g, b2, eps, out=a)
        # update = m / (u + eps)
        update = np.divide(m, np.add(u, eps, out=a), out=a)
        if self.sage:
            # r = U / (Ibar + eps^2), from I = |p * g| and Ibar (no bias correction)
            r = self.multiplier_into(p, g, state["sensitivity_ema"], t, out=scratch.get(3, p),
                                     work=b, trace=trace)
        if h["weight_decay"] > 0:
            # update = update + weight_decay * p
            update += np.multiply(h["weight_decay"], p, out=b)
        if self.sage:
            # s = lr_t * r
            s = np.multiply(lr_t, r, out=r)
            # p = p - s * update
            update *= s
        else:
            # p = p - lr_t * update
            update *= lr_t
        p -= update


class AdamaxSAGERule(BertAdamaxRule):
    """``adamax-sage``: Adamax-SAGE exactly as the official ``UnstructAwareAdamax`` (``'mask'``).

    Update (``t`` is incremented *last*)::

        g      = g * c  where c = max_grad_norm / (||g||_2 + 1e-6) < 1     (per-tensor clipping)
        m      = beta1 * m + (1 - beta1) * g
        u      = max(beta2 * u, |g| + eps)
        update = m / (u + eps)
        I      = |p * g|                             (p before the update, g after clipping)
        Ibar   = beta3 * Ibar + (1 - beta3) * I      (no bias correction)
        update = update + weight_decay * p           if weight_decay > 0
        U      = |I - Ibar|
        r      = U / (Ibar + eps^2)
        s      = lr_t * r                            (lr_t scheduled with t before the increment)
        p      = p - s * update
        t      = t + 1

    Symbols -> arguments as in ``bert-adamax``, plus ``beta3`` (default 0.75); ``lr`` is required.

    Reproduces ``UnstructAwareAdamax`` of cliang1453/SAGE ``module/bert_optim.py``.

    Warning: without bias correction the first step has ``r = beta3 / (1 - beta3)`` (3 at 0.75)
    wherever ``I > 0``, and ``r`` stays in ``[0, max(1, beta3 / (1 - beta3))]``. The weight decay is
    inside the update, so it is scaled by ``r`` too (an entry with ``r = 0`` is not decayed).
    """

    name = "adamax-sage"
    reproduces = "UnstructAwareAdamax of the official SAGE code (module/bert_optim.py)"
    defaults = {"lr": REQUIRED, "warmup": -1, "t_total": -1, "schedule": "warmup_linear",
                "betas": (0.9, 0.999), "beta3": 0.75, "eps": 1e-6, "weight_decay": 0.01,
                "max_grad_norm": 1.0}
    sage = True

    def sage_terms(self, t):
        # eps squared; no bias correction
        return self.hparams["eps"] ** 2, None

