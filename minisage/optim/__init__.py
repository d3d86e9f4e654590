"""Stateful optimizers over Parameters, torch-style, each a thin loop over a spec rule.

==============  ===========================  ===========================  =================
class           groups with sage=False       groups with sage=True        default ``sage``
==============  ===========================  ===========================  =================
``SGD``         ``sgd`` (torch.optim.SGD)    --                           False
``Adam``        ``adam``                     --                           False
``AdamW``       ``adamw``                    --                           False
``Adamax``      ``adamax``                   --                           False
``BertAdamW``   ``bert-adamw`` (official)    ``adamw-sage``               False
``AdamWSAGE``   ``bert-adamw``               ``adamw-sage`` (official)    True
``BertAdamax``  ``bert-adamax`` (official)   ``adamax-sage``              False
``AdamaxSAGE``  ``bert-adamax``              ``adamax-sage`` (official)   True
``AdamSAGE``    ``adamw`` (torch)            ``adam-sage`` (paper)        True
==============  ===========================  ===========================  =================

Hyperparameter names and defaults are the spec preset's (``minisage.spec.defaults(name)``). The
official split -- SAGE on attention and feed-forward weights, the plain rule elsewhere -- is one
call (:func:`sage_param_groups`: the split of :mod:`minisage.spec.split`, warning when it
selects nothing)::

    groups = sage_param_groups(model.named_parameters(), lr=1e-4)
    opt = AdamWSAGE(groups, lr=1e-4, record=True)
    ...; loss.backward(); opt.step(); opt.zero_grad()
    opt.last_trace["blocks.0.intermediate.dense.weight"]["lr_multiplier"]   # when record=True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from minisage import spec
from minisage.optim.optimizer import Optimizer
from minisage.spec import split


class SGD(Optimizer):
    """``torch.optim.SGD`` (preset ``sgd``): lr, momentum, dampening, weight_decay, nesterov,
    maximize."""

    plain_preset = "sgd"


class Adam(Optimizer):
    """``torch.optim.Adam`` (preset ``adam``): lr, betas, eps, weight_decay (L2), maximize."""

    plain_preset = "adam"


class AdamW(Optimizer):
    """``torch.optim.AdamW`` (preset ``adamw``): lr, betas, eps, weight_decay (decoupled, 1e-2),
    maximize."""

    plain_preset = "adamw"


class Adamax(Optimizer):
    """``torch.optim.Adamax`` (preset ``adamax``): lr (2e-3), betas, eps, weight_decay, maximize."""

    plain_preset = "adamax"


class BertAdamW(Optimizer):
    """The official ``AdamW`` of the SAGE code (preset ``bert-adamw``); groups may opt in to SAGE.

    Hyperparameters: lr, warmup, t_total, schedule, betas, beta3, eps, weight_decay, correct_bias,
    max_grad_norm (see ``help(minisage.spec.BertAdamWRule)``).
    """

    plain_preset = "bert-adamw"
    sage_preset = "adamw-sage"
    sage_default = False


class AdamWSAGE(BertAdamW):
    """The official ``UnstructAwareAdamW``: ``adamw-sage`` on groups with ``sage=True`` (the
    default), ``bert-adamw`` on the others. Also accepts the official ``params_type`` group key
    (``'mask'`` = SAGE, ``'common'`` = plain)."""

    sage_default = True


class BertAdamax(Optimizer):
    """The official ``Adamax`` of the SAGE code (preset ``bert-adamax``; ``lr`` is required).

    Hyperparameters: lr, warmup, t_total, schedule, betas, beta3, eps, weight_decay (0.01),
    max_grad_norm (see ``help(minisage.spec.BertAdamaxRule)``).
    """

    plain_preset = "bert-adamax"
    sage_preset = "adamax-sage"
    sage_default = False


class AdamaxSAGE(BertAdamax):
    """The official ``UnstructAwareAdamax``: ``adamax-sage`` on groups with ``sage=True`` (the
    default), ``bert-adamax`` on the others (``lr`` is required)."""

    sage_default = True


class AdamSAGE(Optimizer):
    """The paper's SAGE-Adam (preset ``adam-sage``) on groups with ``sage=True`` (the default);
    ``torch.optim.AdamW`` (preset ``adamw``, same hyperparameters) on the others.

    Hyperparameters: lr, betas, beta3, eps, sage_eps, weight_decay.
    """

    plain_preset = "adamw"
    sage_preset = "adam-sage"
    sage_default = True


_BY_PRESET: dict[str, type[Optimizer]] = {
    "sgd": SGD, "adam": Adam, "adamw": AdamW, "adamax": Adamax, "bert-adamw": BertAdamW,
    "adamw-sage": AdamWSAGE, "bert-adamax": BertAdamax, "adamax-sage": AdamaxSAGE,
    "adam-sage": AdamSAGE,
}


def optimizer_class(preset: str) -> type[Optimizer]:
    """The optimizer class of a spec preset (the table above)."""
    try:
        return _BY_PRESET[preset]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {preset!r}; choose one of: "
                         f"{', '.join(_BY_PRESET)}") from None


def make(preset: str, params: Iterable[Any], *, record: bool = False,
         **hparams: Any) -> Optimizer:
    """The optimizer of a spec preset: ``optimizer_class(preset)(params, **hparams)``.

    For a SAGE preset, groups say ``sage`` themselves (e.g. from :func:`sage_param_groups`) and
    default to SAGE; for a plain preset every group is plain.
    """
    return optimizer_class(preset)(params, record=record, **hparams)


def sage_param_groups(named_parameters: Iterable[tuple[str, Any]], *, on_no_sage: str = "warn",
                      **split_options: Any) -> list[dict[str, Any]]:
    """The official split (:func:`minisage.spec.split.sage_param_groups`, same options) of
    ``model.named_parameters()``; a split that gives no parameter SAGE warns by default
    (``on_no_sage``: ``"warn"``, ``"raise"`` or ``"ignore"``), since the run would then equal the
    plain preset's to the last digit. Empty ``sage_patterns`` ask for no SAGE: no warning."""
    if "sage_patterns" in split_options and not split_options.get("sage_select") and not (
            split.resolve_patterns(split_options["sage_patterns"])):
        on_no_sage = "ignore"
    return split.sage_param_groups(named_parameters, on_no_sage=on_no_sage, **split_options)


def clip_grad_norm_(params: Iterable[Any], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_``: scale all gradients in place so that their global
    2-norm is at most ``max_norm``; returns the norm before clipping. Parameters without a
    gradient are ignored; ``(name, parameter)`` pairs are accepted."""
    ps = [p[1] if isinstance(p, tuple) else p for p in params]
    ps = [p for p in ps if p.grad is not None]
    grads = [np.asarray(p.grad) for p in ps]
    clipped, total = spec.clip_global_norm(grads, max_norm)
    for p, g_old, g_new in zip(ps, grads, clipped):
        if g_new is not g_old:
            p.grad[...] = g_new
    return float(total)


__all__ = ["Optimizer", "make", "optimizer_class", "SGD", "Adam", "AdamW", "Adamax",
           "BertAdamW", "AdamWSAGE", "BertAdamax", "AdamaxSAGE", "AdamSAGE",
           "sage_param_groups", "clip_grad_norm_"]
