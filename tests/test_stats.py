"""minisage.stats against scipy.stats (which minisage does not import, for its start-up time): the
Student-t intervals and tests, ranks with ties, Spearman's correlation."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from minisage import stats

SAMPLES = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=12)
# few distinct values: ties everywhere
TIED = st.lists(st.integers(-3, 3), min_size=2, max_size=40)


@given(values=SAMPLES, confidence=st.sampled_from([0.9, 0.95, 0.99]))
def test_mean_ci_is_the_student_t_interval(values, confidence):
    mean, half = stats.mean_ci(values, confidence)
    assert mean == pytest.approx(np.mean(values), rel=1e-12, abs=1e-9)
    if np.ptp(values) == 0:
        assert half == 0
    else:
        low, high = scipy_stats.t.interval(confidence, len(values) - 1, loc=np.mean(values),
                                           scale=scipy_stats.sem(values))
        assert half == pytest.approx((high - low) / 2, rel=1e-10)


@given(a=SAMPLES, shift=st.floats(-10, 10), noise=SAMPLES)
def test_paired_and_welch_p_are_scipys(a, shift, noise):
    b = (np.asarray(a) + shift + np.resize(noise, len(a)) / 100).tolist()
    d = np.subtract(b, a)
    if np.ptp(d) > 1e-9 * max(1.0, np.abs(d).max()):  # scipy's own rounding decides below
        want = scipy_stats.ttest_rel(b, a).pvalue
        assert stats.paired_p(a, b) == pytest.approx(want, rel=1e-8, abs=1e-14)
    if np.ptp(a) > 1e-6 and np.ptp(noise) > 1e-6:
        want = scipy_stats.ttest_ind(a, noise, equal_var=False).pvalue
        assert stats.welch_p(a, noise) == pytest.approx(want, rel=1e-8, abs=1e-14)


def test_undefined_tests_are_nan():
    assert math.isnan(stats.paired_p([1.0, 2.0], [2.0, 3.0]))  # every difference equal
    assert math.isnan(stats.paired_p([1.0], [2.0]))
    assert math.isnan(stats.welch_p([1, 1], [2, 2])) and math.isnan(stats.welch_p([1], [2, 3]))
    assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(stats.mean_ci([5.0])[1])


@given(x=TIED)
def test_ranks_average_ties(x):
    np.testing.assert_array_equal(stats.ranks(x), scipy_stats.rankdata(x))


@given(x=TIED, y=TIED)
def test_spearman_is_scipys(x, y):
    n = min(len(x), len(y))
    x, y = np.asarray(x[:n], float), np.asarray(y[:n], float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert math.isnan(stats.spearman(x, y))
    else:
        assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic,
                                                     rel=1e-12, abs=1e-12)


def test_spearman_of_float32_measurements():
    rng = np.random.default_rng(0)
    x = rng.random(5000).astype(np.float32)
    y = (x + rng.normal(0, 0.5, 5000)).astype(np.float32)
    x[:100] = 0  # ties, as entries with a zero sensitivity make
    assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic,
                                                 rel=1e-12)


def test_ci_half_width_along_an_axis_is_each_columns_interval():
    values = np.random.default_rng(1).normal(size=(5, 3))  # seeds x points, as the figures
    half = stats.ci_half_width(values, 0.95, axis=0)
    for j in range(3):
        low, high = scipy_stats.t.interval(0.95, 4, loc=values[:, j].mean(),
                                           scale=scipy_stats.sem(values[:, j]))
        assert half[j] == pytest.approx((high - low) / 2, rel=1e-12)
