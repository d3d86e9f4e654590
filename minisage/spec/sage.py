"""The four pieces of SAGE, each one small public function (SAGE_SPEC.md section 1).

For a parameter entry ``p`` with gradient ``g`` (after any clipping), at step ``t``:

    I    = |p * g|                         sensitivity: first-order estimate of the loss change
                                           if the entry were set to zero
    Ibar = beta3 * Ibar + (1 - beta3) * I  its exponential moving average (zero-initialised)
    U    = |I - Ibar|                      uncertainty: how much I moves around its average
    r    = U / (Ibar + eps)                the per-entry learning-rate multiplier

The rules in :mod:`minisage.spec.rules` call these, and so do the lessons. They are elementwise,
pure (they never write into their arguments) and keep the input dtype.
"""

from __future__ import annotations

import numpy as np


def sensitivity(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``I = |p * g|``: how much the loss would change, to first order, if each entry were zeroed.

    An entry that is exactly zero has sensitivity zero whatever its gradient.
    """
    return np.abs(p * g)


def sensitivity_ema(prev: np.ndarray, I: np.ndarray, beta3: float) -> np.ndarray:  # noqa: N803
    """``Ibar = beta3 * prev + (1 - beta3) * I``: the smoothed sensitivity (no bias correction).

    A convex combination with a zero start, so ``0 <= Ibar <= max(I so far)``.
    """
    return beta3 * prev + (1 - beta3) * I


def bias_correct(x: np.ndarray, beta: float, t: int) -> np.ndarray:
    """``x / (1 - beta**t)``: Adam-style bias correction of a zero-initialised EMA at step ``t``."""
    return x / (1 - beta**t)


def uncertainty(I: np.ndarray, Ibar: np.ndarray) -> np.ndarray:  # noqa: N803
    """``U = |I - Ibar|``: the local temporal variation of the sensitivity.

    ``Ibar`` is the average that already includes this step's ``I``.
    """
    return np.abs(I - Ibar)


def lr_multiplier(U: np.ndarray, Ibar: np.ndarray, eps: float) -> np.ndarray:  # noqa: N803
    """``r = U / (Ibar + eps)``: the per-entry factor SAGE puts on the learning rate.

    ``r`` is the relative variation of the sensitivity. An entry whose sensitivity is large and
    steady (an important, settled weight) gets a small ``r``; one whose sensitivity is small next
    to its fluctuation gets a large ``r``: low-sensitivity entries take larger steps. ``eps`` is
    ``eps**2`` of the optimizer in the official code (1e-12 at
    its default eps=1e-6) and ``sage_eps`` in the paper preset.
    """
    return U / (Ibar + eps)
