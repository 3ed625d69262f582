"""Mean and 95% confidence intervals across seeds (Student's t, bootstrap)."""

import math

import numpy as np
import pytest

from plasticity_rl.metrics.summary import bootstrap_ci, difference_ci95, mean_ci95


def test_mean_ci95_hand_worked():
    # values 1..5: mean 3, sample std sqrt(2.5) = 1.5811, t(0.975, 4) = 2.776
    # half-width = 2.776 * 1.5811 / sqrt(5) = 1.9629
    mean, half = mean_ci95([1, 2, 3, 4, 5])
    assert mean == 3 and half == pytest.approx(1.9629, abs=1e-4)
    assert mean_ci95([2.0, 2.0])[1] == 0.0
    assert math.isnan(mean_ci95([7.0])[1])
    # 41 values -> 40 degrees of freedom -> the normal 1.96
    assert mean_ci95([0.0, 1.0] * 20 + [0.5])[1] == pytest.approx(
        1.96 * math.sqrt(sum((v - 0.5) ** 2 for v in [0.0, 1.0] * 20) / 40) / math.sqrt(41)
    )
    with pytest.raises(ValueError):
        mean_ci95([])


def test_bootstrap_ci_hand_worked():
    # two seeds 0, 1: a resample's mean is 0 (prob. 1/4), 0.5 (1/2) or 1 (1/4); a quarter of
    # the 10,000 means are 0 and a quarter are 1, so the 2.5% and 97.5% quantiles are 0 and 1
    mean, low, high = bootstrap_ci([0.0, 1.0])
    assert (mean, low, high) == (0.5, 0.0, 1.0)
    # seeds 0, 0, 3: the mean is the count of draws of the 3, Binomial(3, 1/3): P(0) = 8/27,
    # P(3) = 1/27 = 3.7% > 2.5%, so the interval is [0, 3]. At 80% confidence (10% and 90%
    # quantiles): P(mean = 0) = 29.6% > 10%, P(mean <= 1) = 20/27 = 74.1% < 90% and
    # P(mean <= 2) = 26/27 = 96.3% > 90%, so the interval is [0, 2]
    assert bootstrap_ci([0.0, 0.0, 3.0])[1:] == (0.0, 3.0)
    assert bootstrap_ci([0.0, 0.0, 3.0], confidence=0.8)[1:] == (0.0, 2.0)
    # curves: each point on its own; a constant column has a zero-width interval
    mean, low, high = bootstrap_ci([[0.0, 5.0], [1.0, 5.0]])
    assert mean.tolist() == [0.5, 5.0] and low.tolist() == [0.0, 5.0] and high.tolist() == [1, 5]
    # one seed: no interval
    assert np.isnan(bootstrap_ci([7.0])[1]) and bootstrap_ci([7.0])[0] == 7.0
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], confidence=1.5)


def test_difference_ci95_brackets_the_difference_of_means() -> None:
    a, b = [3.0, 4.0, 5.0, 4.0], [1.0, 2.0, 1.5]
    diff, low, high = difference_ci95(a, b)
    assert diff == pytest.approx(4.0 - 1.5)
    assert low < diff < high
    # identical constant sides: the interval collapses onto 0
    assert difference_ci95([2.0, 2.0], [2.0, 2.0, 2.0]) == (0.0, 0.0, 0.0)
    # every resample of a keeps its values in [3, 5] and of b in [1, 2]: the bounds follow
    assert 1.0 <= low and high <= 4.0
