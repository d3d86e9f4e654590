"""Gradient clipping: per tensor (the official SAGE optimizers) and by global norm (torch's rule).

Both follow ``torch.nn.utils.clip_grad_norm_``: with ``n`` the 2-norm,
``c = max_norm / (n + 1e-6)``, and the gradient is scaled by ``c`` only where ``c < 1``
(:func:`clip_factor`). They are pure: an unchanged gradient is returned as the same array, a
clipped one as a new array, and the arithmetic stays in the gradient's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def grad_norm(g: np.ndarray, *, out: np.ndarray | None = None) -> np.floating:
    """``||g||_2`` in ``g``'s dtype. ``out``: optional room for ``g * g`` (``g``'s shape)."""
    # n = sqrt(sum(g * g))
    return np.sqrt(np.sum(np.multiply(g, g, out=out)))


def clip_factor(max_norm: float, n) -> np.floating | None:
    """The factor clipping applies to a gradient of norm ``n``: ``c = max_norm / (n + 1e-6)``
    where ``c < 1``, else None (nothing to clip). ``max_norm <= 0`` turns clipping off (None)."""
    if max_norm <= 0:
        return None
    # c = max_norm / (n + 1e-6)
    c = max_norm / (n + 1e-6)
    return c if c < 1 else None


def clip_per_tensor(g: np.ndarray, max_grad_norm: float) -> np.ndarray:
    """The official per-tensor rule: ``clip_grad_norm_(p, max_grad_norm)`` on one parameter.

    If ``max_grad_norm > 0``: ``n = ||g||_2``; ``c = max_grad_norm / (n + 1e-6)``; if ``c < 1``:
    ``g = g * c``. ``max_grad_norm <= 0`` (the official -1) turns clipping off.
    """
    if max_grad_norm <= 0:
        return g
    c = clip_factor(max_grad_norm, grad_norm(g))
    # g = g * c
    return g if c is None else g * c


def global_norm(grads: Sequence[np.ndarray]) -> float:
    """The norm of all gradients seen as one vector: the 2-norm of the per-tensor 2-norms."""
    if len(grads) == 0:
        return 0.0
    norms = np.array([grad_norm(g) for g in grads])
    return np.sqrt(np.sum(norms * norms))


def clip_global_norm(grads: Sequence[np.ndarray], max_norm: float):
    """``torch.nn.utils.clip_grad_norm_`` over several tensors; returns ``(clipped, total_norm)``.

    ``total = ||(||g_1||, ..., ||g_k||)||_2``; ``c = max_norm / (total + 1e-6)``; every gradient is
    scaled by ``c`` where ``c < 1``. ``max_norm`` must be > 0.
    """
    if not max_norm > 0:
        raise ValueError(f"clip_global_norm: max_norm must be in (0, inf), got {max_norm!r}")
    total = global_norm(grads)
    c = clip_factor(max_norm, total)
    if c is None:
        return list(grads), total
    # g = g * c, for every gradient
    return [g * np.asarray(c, dtype=g.dtype) for g in grads], total
