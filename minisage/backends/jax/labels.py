"""Parameter groups by name for the jax transformations: the official SAGE split as optax labels.

Each leaf of a parameter pytree is named by its dotted path: dict keys, attribute names and
sequence indices joined by ``.`` (a flax params tree ``{"params": {"layers_0": {"attention":
{"query": {"kernel": ...}}}}}`` gives ``params.layers_0.attention.query.kernel``). Which names get
SAGE and which get weight decay is decided by :func:`minisage.spec.split.sage_param_groups`, the
one home of the patterns, the named pattern sets of common architectures (``"bert"``,
``"distilbert"``, ``"gpt2"``, ``"vit"``, ``"llama"``, ``"flax"``, ``"all"``) and the check that a
SAGE split selects something.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from minisage.spec.split import DEFAULT_NO_DECAY_PATTERNS, SAGE_PATTERNS, sage_param_groups


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def leaf_names(params):
    """A pytree like ``params`` holding each leaf's dotted path name."""
    return jax.tree_util.tree_map_with_path(lambda path, _leaf: _path_name(path), params)


def sage_labels(params, *, sage_patterns: str | Sequence[str] = SAGE_PATTERNS,
                no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS,
                sage_select: Callable[[str], bool] | None = None,
                no_decay_select: Callable[[str], bool] | None = None,
                on_no_sage: str = "warn"):
    """A pytree of labels like ``params``: ``"sage/decay"``, ``"sage/no_decay"``,
    ``"plain/decay"`` or ``"plain/no_decay"``, for ``optax.multi_transform``.

    Each leaf's dotted path name (:func:`leaf_names`) is split as
    :func:`minisage.spec.split.sage_param_groups` splits a name: ``sage_patterns`` (substrings,
    or the name of a pattern set such as ``"llama"``, ``"flax"`` or ``"all"``),
    ``no_decay_patterns``, or the functions ``sage_select(name)`` / ``no_decay_select(name)``
    that replace them. When no leaf gets SAGE, ``on_no_sage`` decides: ``"warn"`` (a
    ``NoSageWarning`` naming the patterns, a few names and the sets that would fit), ``"raise"``
    (ValueError) or ``"ignore"``.
    """
    names_tree = leaf_names(params)
    names = jax.tree.leaves(names_tree)
    # weight_decay=1.0 marks the decayed groups (the others get 0.0)
    groups = sage_param_groups([(name, name) for name in names], sage_patterns=sage_patterns,
                               no_decay_patterns=no_decay_patterns, weight_decay=1.0,
                               sage_select=sage_select, no_decay_select=no_decay_select,
                               on_no_sage=on_no_sage)
    label = {name: f"{'sage' if g['sage'] else 'plain'}/"
                   f"{'decay' if g['weight_decay'] else 'no_decay'}"
             for g in groups for name, _ in g["params"]}
    return jax.tree.map(label.__getitem__, names_tree)


def official_sage(factory: Callable[..., optax.GradientTransformation], params, *,
                  weight_decay: float = 0.01,
                  sage_patterns: str | Sequence[str] = SAGE_PATTERNS,
                  no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS,
                  sage_select: Callable[[str], bool] | None = None,
                  no_decay_select: Callable[[str], bool] | None = None,
                  on_no_sage: str = "warn", **hparams: Any) -> optax.GradientTransformation:
    """The official SAGE split as one ``optax.multi_transform``.

    ``factory`` is :func:`adamw_sage`, :func:`adamax_sage` or :func:`adam_sage`; each group of
    :func:`sage_labels` (which takes the split's keyword arguments) gets
    ``factory(sage=..., weight_decay=weight_decay or 0.0, **hparams)``. Example, a LLaMA-style
    flax model: ``official_sage(adamw_sage, params, sage_patterns="llama", lr=2e-5)``.
    """
    labels = sage_labels(params, sage_patterns=sage_patterns,
                         no_decay_patterns=no_decay_patterns, sage_select=sage_select,
                         no_decay_select=no_decay_select, on_no_sage=on_no_sage)
    names = sorted(set(jax.tree.leaves(labels)))
    transforms = {
        name: factory(sage=name.startswith("sage/"),
                      weight_decay=weight_decay if name.endswith("/decay") else 0.0, **hparams)
        for name in names
    }
    return optax.multi_transform(transforms, labels)
