"""Continual-learning metrics on accuracy matrices and curves worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plasticity_rl.metrics import (
    accuracy_matrix,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    binned_mean,
    forgetting,
    online_accuracy,
    sample_weighted_accuracy,
    stability_gap,
)
from plasticity_rl.registry import ConfigError

NAN = math.nan


def test_two_tasks():
    # R = [[90, 10], [60, 95]]: average (60 + 95) / 2 = 77.5; forgetting of task 0 = 90 - 60 = 30;
    # BWT = 60 - 90 = -30.
    R = [[90.0, 10.0], [60.0, 95.0]]
    assert average_accuracy(R) == 77.5
    assert forgetting(R) == [30.0]
    assert average_forgetting(R) == 30.0
    assert backward_transfer(R) == -30.0


@pytest.mark.parametrize("as_type", [list, np.array, torch.tensor])
def test_three_tasks_use_only_the_lower_triangle(as_type):
    # R = [[80, ., .], [85, 90, .], [75, 60, 85]] with NaN above the diagonal.
    # average = (75 + 60 + 85) / 3 = 73.33...
    # forgetting: task 0: max(80, 85) - 75 = 10 (the best earlier value is not the diagonal);
    #             task 1: max(90) - 60 = 30; mean 20.
    # BWT = ((75 - 80) + (60 - 90)) / 2 = -17.5 (differs from -forgetting: uses R[j, j] only).
    R = as_type([[80.0, NAN, NAN], [85.0, 90.0, NAN], [75.0, 60.0, 85.0]])
    assert average_accuracy(R) == pytest.approx(220.0 / 3.0)
    assert forgetting(R) == [10.0, 30.0]
    assert average_forgetting(R) == 20.0
    assert backward_transfer(R) == -17.5


def test_forgetting_can_be_negative_and_one_task_has_none():
    # R = [[50, .], [70, 90]]: task 0 improved from 50 to 70 -> forgetting -20, BWT +20.
    assert forgetting([[50.0, 0.0], [70.0, 90.0]]) == [-20.0]
    assert backward_transfer([[50.0, 0.0], [70.0, 90.0]]) == 20.0
    assert forgetting([[70.0]]) == []
    assert math.isnan(average_forgetting([[70.0]])) and math.isnan(backward_transfer([[70.0]]))
    assert average_accuracy([[70.0]]) == 70.0


@pytest.mark.parametrize("bad", [[1.0, 2.0], [[1.0, 2.0]], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
def test_accuracy_matrix_must_be_square(bad):
    with pytest.raises(ConfigError, match="accuracy matrix shape"):
        accuracy_matrix(bad)


def test_online_accuracy_by_lengths_and_by_ids():
    # Task 0: 3 predictions, 2 right -> 2/3; task 1: 2 predictions, 0 right -> 0; task 2: 1/1.
    correct = torch.tensor([1, 0, 1, 0, 0, 1])
    by_lengths = online_accuracy(correct, task_lengths=[3, 2, 1])
    assert by_lengths == pytest.approx([2 / 3, 0.0, 1.0])
    assert online_accuracy(correct, task_ids=torch.tensor([0, 0, 0, 1, 1, 2])) == by_lengths
    # Ids need not be contiguous in the stream; an id with no example gives NaN.
    out = online_accuracy(correct, task_ids=torch.tensor([2, 0, 2, 0, 2, 2]))
    assert out[0] == 0.0 and math.isnan(out[1]) and out[2] == 0.75


def test_online_accuracy_errors():
    correct = torch.tensor([1, 0, 1])
    with pytest.raises(ConfigError, match="exactly one of"):
        online_accuracy(correct)
    with pytest.raises(ConfigError, match="task_lengths: got \\[2, 2\\]"):
        online_accuracy(correct, task_lengths=[2, 2])


def test_stability_gap_dip_and_recovery():
    # Evaluated every 10 steps; switch at step 100, next task 100 steps long (window (100, 200]).
    # Pre-switch level: the value at step 100 = 90. Minimum in the window: 40 at step 120
    # -> GD = 90 - 40 = 50. First evaluation after it with accuracy >= 90: step 150 (92)
    # -> TTR = (150 - 100) / 100 = 50 % of the task length.
    steps = torch.arange(0, 201, 10)
    acc = torch.full((21,), 92.0)
    acc[:11] = torch.tensor([10.0, 30, 50, 60, 70, 80, 85, 88, 89, 90, 90])
    acc[11:16] = torch.tensor([60.0, 40, 70, 85, 92])
    out = stability_gap(steps, acc, switch_step=100, task_length=100)
    assert out == {
        "gap_depth": 50.0,
        "time_to_recover": 50.0,
        "pre_switch_accuracy": 90.0,
        "minimum_step": 120.0,
    }


def test_stability_gap_without_recovery_and_without_switch_evaluation():
    # Evaluations at steps 0, 30, 60, 90, 120, 150; switch at 50 -> level = value at step 30
    # (the last evaluation at or before the switch) = 0.8. Window (50, 150]: 0.5, 0.3, 0.6,
    # 0.7 -> GD = 0.8 - 0.3 = 0.5 (unit: fractions, as the input); never back to 0.8 -> NaN.
    steps = [0, 30, 60, 90, 120, 150]
    acc = [0.7, 0.8, 0.5, 0.3, 0.6, 0.7]
    out = stability_gap(steps, acc, switch_step=50, task_length=100)
    assert out["gap_depth"] == pytest.approx(0.5) and math.isnan(out["time_to_recover"])
    assert out["minimum_step"] == 90.0
    # An evaluation after the window does not count (step 160 > 50 + 100).
    out = stability_gap(steps + [160], acc + [0.9], switch_step=50, task_length=100)
    assert math.isnan(out["time_to_recover"])


def test_stability_gap_is_negative_when_accuracy_only_rises():
    # Level 50 at step 0; window values 60, 70 -> minimum 60 at step 10 -> GD = -10 (reported
    # as is); the minimum itself is >= 50, so TTR = (10 - 0) / 20 = 50 %.
    out = stability_gap([0, 10, 20], [50.0, 60.0, 70.0], switch_step=0, task_length=20)
    assert out["gap_depth"] == -10.0 and out["time_to_recover"] == 50.0


def test_stability_gap_tie_at_the_minimum_uses_the_first():
    # Level 80; window 50 (step 1), 50 (step 2), 80 (step 3) -> GD 30, minimum at step 1,
    # recovered at step 3 -> TTR = 3 / 4 = 75 %.
    out = stability_gap([0, 1, 2, 3, 4], [80, 50, 50, 80, 80], switch_step=0, task_length=4)
    assert out["gap_depth"] == 30.0 and out["minimum_step"] == 1.0
    assert out["time_to_recover"] == 75.0


@pytest.mark.parametrize(
    "steps, acc, switch_step, match",
    [
        ([10, 20], [1.0, 2.0], 5, "switch_step"),  # nothing at or before the switch
        ([0, 200], [1.0, 2.0], 5, "switch_step"),  # nothing in the window (5, 105]
        ([0, 10], [1.0], 5, "steps"),  # lengths differ
        ([10, 0], [1.0, 2.0], 5, "steps"),  # not increasing
    ],
)
def test_stability_gap_errors(steps, acc, switch_step, match):
    with pytest.raises(ConfigError, match=match):
        stability_gap(steps, acc, switch_step=switch_step, task_length=100)


def test_binned_mean():
    # [1, 2, 3, 4, 5, 6, 7] in bins of 3: (1+2+3)/3 = 2, (4+5+6)/3 = 5, last bin [7] -> 7.
    out = binned_mean(torch.arange(1.0, 8.0), 3)
    assert torch.equal(out, torch.tensor([2.0, 5.0, 7.0]))
    assert torch.equal(binned_mean([1, 3, 5, 7], 2), torch.tensor([2.0, 6.0], dtype=torch.float64))
    with pytest.raises(ConfigError, match="bin_size: got 0"):
        binned_mean([1.0], 0)


def test_sample_weighted_accuracy_weighs_tasks_by_test_size() -> None:
    # 100% on a task of 1 test example, 0% on one of 3: 25%, where the task mean is 50%
    assert sample_weighted_accuracy([100.0, 0.0], [1, 3]) == pytest.approx(25.0)
    with pytest.raises(ConfigError):
        sample_weighted_accuracy([100.0], [1, 3])
