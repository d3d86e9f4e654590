"""The statistics that compare runs over seeds and describe the recorder's measurements: means with
Student-t intervals, paired and Welch t-tests, Spearman's rank correlation.

Student's t comes from scipy.special (``stdtr``, ``stdtrit``: what ``scipy.stats.t`` itself
calls), and Spearman's correlation is the Pearson correlation of ranks: scipy.stats gives the same
numbers (the tests check), but importing it costs about a second, in each of the three processes
of ``minisage compare``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import stdtr, stdtrit


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    return float(stdtrit(df, q))


def sem(values, axis: int = 0) -> np.ndarray:
    """The standard error of the mean along ``axis``: sample standard deviation / sqrt(n)."""
    values = np.asarray(values, dtype=float)
    return values.std(axis=axis, ddof=1) / math.sqrt(values.shape[axis])


def ci_half_width(values, confidence: float = 0.95, axis: int = 0) -> np.ndarray:
    """The half-width of the Student-t confidence interval of the mean along ``axis`` (at least
    two values)."""
    values = np.asarray(values, dtype=float)
    return t_quantile(0.5 + confidence / 2, values.shape[axis] - 1) * sem(values, axis=axis)


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (nan for one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(ci_half_width(values, confidence))


def t_test_p(t: float, df: float) -> float:
    """The two-sided p-value of a t statistic: P(|T| >= |t|) with ``df`` degrees of freedom."""
    return float(2 * stdtr(df, -abs(t)))


def paired_p(a, b) -> float:
    """Two-sided p-value of the paired t-test of ``b - a`` (nan if it is undefined)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(d) < 2 or np.ptp(d) == 0:
        return float("nan")
    return t_test_p(d.mean() / sem(d), len(d) - 1)


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); nan if it is undefined."""
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return float("nan")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t_test_p((a.mean() - b.mean()) / math.sqrt(va + vb), df)


def ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x``; tied values share the mean of the ranks they span."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    starts = np.flatnonzero(np.r_[True, x[order][1:] != x[order][:-1]])  # of each tie run
    ends = np.r_[starts[1:], len(x)]
    out = np.empty(len(x))
    out[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return out


def spearman(x, y) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks (nan if either is
    constant)."""
    rx, ry = ranks(x), ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    scale = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry / scale) if scale else float("nan")
