"""The moment estimates the rules share, as in-place pieces of their update kernels.

Each writes into its first argument (a state array) and uses ``out`` (a scratch buffer of the same
shape) for its one temporary. torch and the official code write the first moment differently
(torch's lerp form rounds differently), so both forms are here.
"""

from __future__ import annotations

import numpy as np


def first_moment_into(m: np.ndarray, g: np.ndarray, beta1: float, *, out: np.ndarray) -> None:
    """The official code's first moment, ``m = beta1 * m + (1 - beta1) * g``, in place."""
    # m = beta1 * m + (1 - beta1) * g
    m *= beta1
    m += np.multiply(1 - beta1, g, out=out)


def lerp_moment_into(m: np.ndarray, g: np.ndarray, beta1: float, *, out: np.ndarray) -> None:
    """torch's first moment, ``m = m + (1 - beta1) * (g - m)`` (its ``lerp``), in place."""
    # m = m + (1 - beta1) * (g - m)
    step = np.subtract(g, m, out=out)
    step *= 1 - beta1
    m += step


def second_moment_into(v: np.ndarray, g: np.ndarray, beta2: float, *, out: np.ndarray) -> None:
    """``v = beta2 * v + (1 - beta2) * g * g``, in place."""
    # v = beta2 * v + (1 - beta2) * g * g
    v *= beta2
    gg = np.multiply(1 - beta2, g, out=out)
    gg *= g
    v += gg


def infinity_moment_into(u: np.ndarray, g: np.ndarray, beta2: float, eps: float, *,
                         out: np.ndarray) -> None:
    """Adamax's ``u = max(beta2 * u, |g| + eps)``, in place."""
    # u = max(beta2 * u, |g| + eps)
    u *= beta2
    np.maximum(u, np.add(np.abs(g, out=out), eps, out=out), out=u)


def adam_denominator(v: np.ndarray, beta2: float, t: int, eps: float, *,
                     out: np.ndarray) -> np.ndarray:
    """torch's Adam denominator ``sqrt(v) / sqrt(1 - beta2^t) + eps``, written into ``out``."""
    # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
    denom = np.sqrt(v, out=out)
    denom /= (1 - beta2**t) ** 0.5
    denom += eps
    return denom
