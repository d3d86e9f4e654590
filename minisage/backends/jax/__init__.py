"""SAGE for JAX as optax ``GradientTransformation``s, defined by the spec (:mod:`minisage.spec`).

Needs the ``jax`` extra (``pip install "minisage[jax]"``: jax and optax)::

    adamw_sage(...)    sage=True: "adamw-sage"    sage=False: "bert-adamw"   (official AdamW pair)
    adamax_sage(...)   sage=True: "adamax-sage"   sage=False: "bert-adamax"  (official Adamax pair)
    adam_sage(...)     sage=True: "adam-sage"     sage=False: "adamw"        (the paper's reading)
    scale_by_sage(inner)   the SAGE multiplier r on top of any transformation (composable)

The equations are in each spec rule's docstring (``help(minisage.spec.rule_class(preset))``) and in
docs/spec.md sections 2 to 4. Modules: :mod:`~minisage.backends.jax.optimizers` (the
transformations, their states, dtypes, x64, schedules), :mod:`~minisage.backends.jax.hparams`
(hyperparameters: numbers, schedules, traced values under ``optax.inject_hyperparams``),
:mod:`~minisage.backends.jax.labels` (:func:`sage_labels`, :func:`official_sage`: the official
split by parameter names), :mod:`~minisage.backends.jax.golden` (the step functions ``minisage
crosscheck`` runs), :mod:`~minisage.backends.jax.devices`.
"""

from __future__ import annotations

from minisage.backends.jax.devices import resolve_device
from minisage.backends.jax.golden import golden_step_functions
from minisage.backends.jax.labels import official_sage, sage_labels
from minisage.backends.jax.optimizers import (
    AdamSAGEState,
    BertAdamaxState,
    BertAdamWState,
    ScaleBySAGEState,
    adam_sage,
    adamax_sage,
    adamw_sage,
    scale_by_sage,
)

__all__ = [
    "adamw_sage", "adamax_sage", "adam_sage", "scale_by_sage", "sage_labels", "official_sage",
    "BertAdamWState", "BertAdamaxState", "AdamSAGEState", "ScaleBySAGEState",
    "golden_step_functions", "resolve_device",
]
