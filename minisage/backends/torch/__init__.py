"""SAGE for PyTorch, defined by the spec, and a torch twin of the minisage Transformer.

Needs the ``torch`` extra (``pip install "minisage[torch]"``). Three optimizers, each a
``torch.optim.Optimizer`` with the spec's update, hyperparameter names and defaults, and a
per-group switch ``sage`` (True: the SAGE preset; False: the plain preset it is built on)::

    AdamWSAGE   sage=True: "adamw-sage"   sage=False: "bert-adamw"   (official UnstructAwareAdamW)
    AdamaxSAGE  sage=True: "adamax-sage"  sage=False: "bert-adamax"  (official UnstructAwareAdamax)
    AdamSAGE    sage=True: "adam-sage"    sage=False: "adamw"        (the paper's reading)

The equations are in each spec rule's docstring (``help(minisage.spec.rule_class(preset))``) and in
docs/spec.md sections 2 to 4. Usage, with the official split (SAGE on attention and feed-forward
weights and biases only)::

    from minisage.backends.torch import AdamWSAGE, sage_param_groups, structural_param_groups
    groups = sage_param_groups(model.named_parameters(), weight_decay=0.01)   # BERT names
    groups = sage_param_groups(model.named_parameters(), sage_patterns="llama")
    groups = structural_param_groups(model)            # any architecture, by module type
    opt = AdamWSAGE(groups, lr=5e-4, beta3=0.75, max_grad_norm=-1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 100))
    ...; loss.backward(); opt.step(); sched.step(); opt.zero_grad()

Half precision, speed, ``torch.compile`` and several processes: docs/backends.md.

Modules: :mod:`~minisage.backends.torch.optimizers` (the optimizers, param groups, state),
:mod:`~minisage.backends.torch.twin` (:func:`to_torch`, :class:`TorchTransformer`),
:mod:`~minisage.backends.torch.golden` (the step functions ``minisage crosscheck`` runs),
:mod:`~minisage.backends.torch.timing` (step times against ``torch.optim.AdamW``),
:mod:`~minisage.backends.torch.devices`.
"""

from __future__ import annotations

from minisage.backends.torch.devices import resolve_device, resolve_dtype
from minisage.backends.torch.golden import golden_step_functions
from minisage.backends.torch.optimizers import (
    AdamaxSAGE,
    AdamSAGE,
    AdamWSAGE,
    block_linear_names,
    sage_param_groups,
    structural_param_groups,
)
from minisage.backends.torch.twin import TorchTransformer, to_torch
from minisage.spec.split import DEFAULT_NO_DECAY_PATTERNS, NO_DECAY_PATTERNS, SAGE_PATTERNS

__all__ = [
    "AdamWSAGE", "AdamaxSAGE", "AdamSAGE", "sage_param_groups", "structural_param_groups",
    "block_linear_names", "SAGE_PATTERNS",
    "NO_DECAY_PATTERNS", "DEFAULT_NO_DECAY_PATTERNS", "to_torch", "TorchTransformer",
    "resolve_device", "resolve_dtype", "golden_step_functions",
]
