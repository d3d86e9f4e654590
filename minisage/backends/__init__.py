"""Other frameworks' SAGE, checked against the spec (:mod:`minisage.spec`), which defines it.

- :mod:`minisage.backends.torch` (extra ``torch``): ``AdamWSAGE``, ``AdamaxSAGE``, ``AdamSAGE`` as
  ``torch.optim.Optimizer`` subclasses; ``sage_param_groups`` (the official SAGE split by
  parameter name); ``to_torch`` (a torch twin of a minisage Transformer).
- :mod:`minisage.backends.jax` (extra ``jax``): ``scale_by_sage``, ``adamw_sage``,
  ``adamax_sage``, ``adam_sage`` as optax ``GradientTransformation``s.

Importing this package imports neither framework; each submodule imports its own. The command
``minisage crosscheck --backend torch|jax`` (:mod:`minisage.crosscheck`) runs every golden case of
the spec through a backend and reports the worst relative error per preset.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

#: backend name -> the modules that must import for it to be available
FRAMEWORKS: dict[str, tuple[str, ...]] = {"torch": ("torch",), "jax": ("jax", "optax")}

#: Substrings of the parameter names that get SAGE in the official experiments (SAGE_SPEC.md 1).
SAGE_PATTERNS: tuple[str, ...] = (
    "attention.self", "attention.output.dense", "output.dense", "intermediate.dense",
)
#: Substrings of the parameter names that get no weight decay in the official experiments.
NO_DECAY_PATTERNS: tuple[str, ...] = ("bias", "gamma", "beta", "LayerNorm")
#: The default no-decay patterns: the official ones plus ``norm``, because the minisage Transformer
#: names its LayerNorms ``..._norm`` (the same default as ``minisage.optim.sage_param_groups``).
DEFAULT_NO_DECAY_PATTERNS: tuple[str, ...] = (*NO_DECAY_PATTERNS, "norm")


def official_group(name: str, sage_patterns: Sequence[str] = SAGE_PATTERNS,
                   no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS
                   ) -> tuple[bool, bool]:
    """``(sage, decay)`` for a parameter name, by the official SAGE code's name patterns.

    SAGE on attention Q/K/V, the attention output projection and the feed-forward layers (weights
    and biases); weight decay on everything except biases and LayerNorm parameters.
    """
    return (any(p in name for p in sage_patterns),
            not any(p in name for p in no_decay_patterns))


def available(backend: str) -> bool:
    """Whether ``backend`` ("torch" or "jax") can be imported here (without importing it)."""
    if backend not in FRAMEWORKS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(FRAMEWORKS)}")
    try:
        return all(importlib.util.find_spec(n) is not None for n in FRAMEWORKS[backend])
    except (ImportError, ValueError):
        return False
