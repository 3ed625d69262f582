"""Mean and 95% confidence interval across seeds."""

import math

import pytest

from plasticity_rl.metrics.summary import mean_ci95


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
