"""The four pieces of SAGE, each one small public function (docs/spec.md section 1).

For a parameter entry ``p`` with gradient ``g`` (after any clipping), at step ``t``:

    I    = |p * g|                         sensitivity: first-order estimate of the loss change
                                           if the entry were set to zero
    Ibar = beta3 * Ibar + (1 - beta3) * I  its exponential moving average (zero-initialised)
    U    = |I - Ibar|                      uncertainty: how much I moves around its average
    r    = U / (Ibar + eps)                the per-entry learning-rate multiplier

The SAGE rules (``adamw-sage``, ``adamax-sage``, ``adam-sage``) call these in their update
kernels, and so do the lessons. They are elementwise and keep the input dtype. Called plainly they
are pure (they never write into their arguments); a kernel passes ``out=`` (the array that
receives the result, which may be an input of the same shape) and ``work=`` (room for an
intermediate) to compute in place, with the same operations in the same order.
"""

from __future__ import annotations

import numpy as np


def sensitivity(p: np.ndarray, g: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``I = |p * g|``: how much the loss would change, to first order, if each entry were zeroed.

    An entry that is exactly zero has sensitivity zero whatever its gradient.
    """
    # I = |p * g|
    I = np.multiply(p, g, out=out)  # noqa: E741
    return np.abs(I, out=out)


def sensitivity_ema(prev: np.ndarray, I: np.ndarray, beta3: float, *,  # noqa: N803
                    out: np.ndarray | None = None,
                    work: np.ndarray | None = None) -> np.ndarray:
    """``Ibar = beta3 * prev + (1 - beta3) * I``: the smoothed sensitivity (no bias correction).

    A convex combination with a zero start, so ``0 <= Ibar <= max(I so far)``.
    """
    # Ibar = beta3 * prev + (1 - beta3) * I
    return np.add(np.multiply(beta3, prev, out=out), np.multiply(1 - beta3, I, out=work),
                  out=out)


def bias_correct(x: np.ndarray, beta: float, t: int, *,
                 out: np.ndarray | None = None) -> np.ndarray:
    """``x / (1 - beta**t)``: Adam-style bias correction of a zero-initialised EMA at step ``t``."""
    return np.divide(x, 1 - beta**t, out=out)


def uncertainty(I: np.ndarray, Ibar: np.ndarray, *,  # noqa: N803
                out: np.ndarray | None = None) -> np.ndarray:
    """``U = |I - Ibar|``: the local temporal variation of the sensitivity.

    ``Ibar`` is the average that already includes this step's ``I``.
    """
    # U = |I - Ibar|
    U = np.subtract(I, Ibar, out=out)
    return np.abs(U, out=out)


def lr_multiplier(U: np.ndarray, Ibar: np.ndarray, eps: float, *,  # noqa: N803
                  out: np.ndarray | None = None, work: np.ndarray | None = None) -> np.ndarray:
    """``r = U / (Ibar + eps)``: the per-entry factor SAGE puts on the learning rate.

    ``r`` is the relative variation of the sensitivity. An entry whose sensitivity is large and
    steady (an important, settled weight) gets a small ``r``; one whose sensitivity is small next
    to its fluctuation gets a large ``r``: low-sensitivity entries take larger steps. ``eps`` is
    ``eps**2`` of the optimizer in the official code (1e-12 at
    its default eps=1e-6) and ``sage_eps`` in the paper preset.
    """
    # r = U / (Ibar + eps)
    return np.divide(U, np.add(Ibar, eps, out=work), out=out)


def multiplier_into(p: np.ndarray, g: np.ndarray, ibar: np.ndarray, beta3: float, eps: float, *,
                    out: np.ndarray, work: np.ndarray, correct_bias_at: int | None = None,
                    trace: dict | None = None) -> np.ndarray:
    """The SAGE block of a rule's update kernel: ``r`` from the four pieces, in place.

    ``ibar`` (the state's ``sensitivity_ema``) is updated in place; ``r`` is returned in ``out``;
    ``work`` (same shape) holds the temporaries. ``correct_bias_at=t`` bias-corrects the average
    at step ``t`` (the official ``adamw-sage`` with ``correct_bias``); else ``Ihat = Ibar``.
    ``trace``, when a dict, receives copies of I, Ibar, Ihat, U and r under the names of the
    rules' traces.
    """
    # I = |p * g|
    I = sensitivity(p, g, out=out)  # noqa: E741
    # Ibar = beta3 * Ibar + (1 - beta3) * I
    sensitivity_ema(ibar, I, beta3, out=ibar, work=work)
    # Ihat = Ibar / (1 - beta3^t)   where the rule bias-corrects, else Ihat = Ibar
    ihat = ibar if correct_bias_at is None else bias_correct(ibar, beta3, correct_bias_at,
                                                               out=work)
    _keep(trace, sensitivity=I, sensitivity_ema=ibar, sensitivity_ema_hat=ihat)
    # U = |I - Ihat|
    U = uncertainty(I, ihat, out=I)
    _keep(trace, uncertainty=U)
    # r = U / (Ihat + eps)           (Ihat + eps may overwrite Ihat: it is not needed after)
    r = lr_multiplier(U, ihat, eps, out=U, work=work)
    _keep(trace, lr_multiplier=r)
    return r


def _keep(trace: dict | None, **arrays: np.ndarray) -> None:
    """Copy ``arrays`` into ``trace`` (when it is a dict): the buffers are reused right after."""
    if trace is not None:
        for key, value in arrays.items():
            trace[key] = value.copy()
