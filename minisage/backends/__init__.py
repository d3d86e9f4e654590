"""Other frameworks' SAGE, checked against the spec (:mod:`minisage.spec`), which defines it.

- :mod:`minisage.backends.torch` (extra ``torch``): ``AdamWSAGE``, ``AdamaxSAGE``, ``AdamSAGE`` as
  ``torch.optim.Optimizer`` subclasses; ``sage_param_groups`` (the SAGE split by parameter name,
  with pattern sets for common architectures) and ``structural_param_groups`` (by module type);
  ``to_torch`` (a torch twin of a minisage Transformer).
- :mod:`minisage.backends.jax` (extra ``jax``): ``scale_by_sage``, ``adamw_sage``,
  ``adamax_sage``, ``adam_sage`` as optax ``GradientTransformation``s.

Importing this package imports neither framework; each submodule imports its own. The command
``minisage crosscheck --backend torch|jax`` (:mod:`minisage.crosscheck`) runs every golden case of
the spec through a backend and reports the worst relative error per preset. docs/backends.md
covers half precision, speed, ``torch.compile`` and several processes.
"""

from __future__ import annotations

import importlib.util

#: backend name -> the modules that must import for it to be available
FRAMEWORKS: dict[str, tuple[str, ...]] = {"torch": ("torch",), "jax": ("jax", "optax")}

def available(backend: str) -> bool:
    """Whether ``backend`` ("torch" or "jax") can be imported here (without importing it)."""
    if backend not in FRAMEWORKS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(FRAMEWORKS)}")
    try:
        return all(importlib.util.find_spec(n) is not None for n in FRAMEWORKS[backend])
    except (ImportError, ValueError):
        return False
