"""Parameter groups by name for the jax transformations: the official SAGE split as optax labels.

Each leaf of a parameter pytree is named by its dotted path (dict keys, attribute names and
sequence indices joined by ``.``); the patterns are those of :mod:`minisage.spec.split`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from minisage.spec.split import DEFAULT_NO_DECAY_PATTERNS, SAGE_PATTERNS, official_group


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


def sage_labels(params, *, sage_patterns: Sequence[str] = SAGE_PATTERNS,
                no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS):
    """A pytree of labels like ``params``: ``"sage/decay"``, ``"sage/no_decay"``,
    ``"plain/decay"`` or ``"plain/no_decay"``, from each leaf's dotted path name (dict keys and
    sequence indices joined by ``.``, e.g. ``blocks.0.attention.self.query.weight``) and the
    official name patterns and minisage's default no-decay list (see
    :func:`minisage.spec.split.official_group`)."""
    def label(path, _leaf):
        use_sage, decay = official_group(_path_name(path), sage_patterns, no_decay_patterns)
        return f"{'sage' if use_sage else 'plain'}/{'decay' if decay else 'no_decay'}"

    return jax.tree_util.tree_map_with_path(label, params)


def official_sage(factory: Callable[..., optax.GradientTransformation], params, *,
                  weight_decay: float = 0.01, **hparams: Any) -> optax.GradientTransformation:
    """The official SAGE split as one ``optax.multi_transform``.

    ``factory`` is :func:`adamw_sage`, :func:`adamax_sage` or :func:`adam_sage`; each group gets
    ``factory(sage=..., weight_decay=weight_decay or 0.0, **hparams)`` by :func:`sage_labels`.
    """
    labels = sage_labels(params)
    names = sorted(set(jax.tree.leaves(labels)))
    transforms = {
        name: factory(sage=name.startswith("sage/"),
                      weight_decay=weight_decay if name.endswith("/decay") else 0.0, **hparams)
        for name in names
    }
    return optax.multi_transform(transforms, labels)
