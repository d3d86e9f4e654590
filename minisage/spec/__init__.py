"""The torch-free spec: every optimizer rule as a pure NumPy function (the golden reference).

::

    from minisage import spec
    rule = spec.make("adamw-sage", lr=1e-3, beta3=0.75)   # hyperparameters: see spec.defaults(name)
    state = rule.init(param)                               # {"step": 0, "exp_avg": zeros, ...}
    param, state, trace = rule.step(param, grad, state, lr=None)   # pure; lr = scheduled lr

Presets (``spec.presets()``): ``sgd``, ``adam``, ``adamw``, ``adamax`` reproduce ``torch.optim``;
``bert-adamw``, ``bert-adamax``, ``adamw-sage``, ``adamax-sage`` reproduce the official SAGE code
(cliang1453/SAGE ``module/bert_optim.py``); ``adam-sage`` is the paper's Algorithm 1 as read in
docs/spec.md section 4. Each rule's docstring (``help(spec.rule_class(name))``) gives its full
update, the symbol-to-argument mapping and where it differs from the others; its ``update_into``
is the one place the update is written as code (``rule.prepare`` does the checks, the lr and the
clipping factor; ``rule.step`` runs both on copies; :mod:`minisage.optim` runs them in place).

The SAGE pieces are public: :func:`sensitivity`, :func:`sensitivity_ema`, :func:`uncertainty`,
:func:`lr_multiplier`, :func:`bias_correct`. So are the schedules and the clipping rules.

This package imports NumPy only.
"""

from __future__ import annotations

from typing import Any

from minisage.spec.clipping import (
    clip_factor,
    clip_global_norm,
    clip_per_tensor,
    global_norm,
    grad_norm,
)
from minisage.spec.official import AdamaxSAGERule, AdamWSAGERule, BertAdamaxRule, BertAdamWRule
from minisage.spec.paper import AdamSAGERule
from minisage.spec.rule import REQUIRED, Prepared, Rule, Scratch
from minisage.spec.sage import (
    bias_correct,
    lr_multiplier,
    sensitivity,
    sensitivity_ema,
    uncertainty,
)
from minisage.spec.schedules import (
    OFFICIAL_SCHEDULES,
    constant,
    cosine,
    linear_warmup_decay,
    make_schedule,
    official_lr,
    warmup_constant,
    warmup_linear,
    warmup_linear_xdl,
)
from minisage.spec.torch_rules import AdamaxRule, AdamRule, AdamWRule, SGDRule

_RULES: dict[str, type[Rule]] = {
    cls.name: cls
    for cls in (SGDRule, AdamRule, AdamWRule, AdamaxRule, BertAdamWRule, BertAdamaxRule,
                AdamWSAGERule, AdamaxSAGERule, AdamSAGERule)
}


def presets() -> tuple[str, ...]:
    """The preset names, in a fixed order: torch's four, the official four, the paper's one."""
    return tuple(_RULES)


def rule_class(name: str) -> type[Rule]:
    """The class behind a preset (its docstring carries the update equations)."""
    try:
        return _RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of: "
                         f"{', '.join(_RULES)}") from None


def defaults(name: str) -> dict[str, Any]:
    """A preset's hyperparameters and their defaults (``spec.REQUIRED`` where there is none)."""
    return dict(rule_class(name).defaults)


def make(name: str, **hparams: Any) -> Rule:
    """Make the rule of preset ``name`` with the given hyperparameters (others take defaults).

    Raises ValueError for an unknown preset, an unknown hyperparameter, or a value out of range
    (the message names it and the allowed range).
    """
    return rule_class(name)(**hparams)


__all__ = [
    "make", "presets", "defaults", "rule_class", "Rule", "REQUIRED", "Prepared", "Scratch",
    "sensitivity", "sensitivity_ema", "uncertainty", "lr_multiplier", "bias_correct",
    "clip_per_tensor", "clip_factor", "clip_global_norm", "global_norm", "grad_norm",
    "constant", "warmup_linear", "warmup_constant", "warmup_linear_xdl", "linear_warmup_decay",
    "cosine", "make_schedule", "official_lr", "OFFICIAL_SCHEDULES",
    "SGDRule", "AdamRule", "AdamWRule", "AdamaxRule", "BertAdamWRule", "BertAdamaxRule",
    "AdamWSAGERule", "AdamaxSAGERule", "AdamSAGERule",
]
