"""Continual-learning metrics: pure functions of an accuracy matrix or of accuracy curves.

The accuracy matrix R has shape (T, T): R[i, j] is the accuracy on task j's test set after
training on tasks 0..i. Every function reads only the entries it needs (the diagonal, the
lower triangle or the last row), so entries above the diagonal may hold any value, NaN
included. Results are in the unit of the input (fractions or percentages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.registry import require


def accuracy_matrix(values: Any) -> Tensor:
    """``values`` (nested lists, an array or a tensor) as a validated (T, T) float64 tensor."""
    matrix = torch.as_tensor(values, dtype=torch.float64)
    require(
        matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] and matrix.shape[0] >= 1,
        "accuracy matrix shape",
        tuple(matrix.shape),
        "(T, T) with T >= 1",
    )
    return matrix


def average_accuracy(R: Any) -> float:
    """(1/T) sum_j R[T-1, j]: the mean accuracy over all tasks after the last one."""
    return accuracy_matrix(R)[-1].mean().item()


def sample_weighted_accuracy(row: Sequence[float], test_sizes: Sequence[int]) -> float:
    """Accuracy (%) on the union of the tasks' test sets: sum_j a_j n_j / sum_j n_j.

    ``row`` holds the per-task accuracies a_j (one row of the accuracy matrix), ``test_sizes``
    the tasks' test-set sizes n_j. This is what Keskinen 2024's and Bricken et al. 2023's code
    report (accuracy on the whole test set); :func:`average_accuracy` weighs tasks equally.
    """
    require(len(row) == len(test_sizes) and sum(test_sizes) > 0, "test_sizes", list(test_sizes),
            f"{len(row)} test-set sizes, not all 0")  # fmt: skip
    return sum(a * n for a, n in zip(row, test_sizes, strict=True)) / sum(test_sizes)


def forgetting(R: Any) -> list[float]:
    """f_j = max_{i in [j, T-2]} R[i, j] - R[T-1, j] for every task j < T-1.

    Chaudhry et al. 2018 ("Riemannian Walk for Incremental Learning"): the drop from the best
    accuracy a task had before the last task to its final accuracy. Empty for T = 1.
    """
    matrix = accuracy_matrix(R)
    if matrix.shape[0] == 1:
        return []
    earlier = matrix[:-1, :-1]  # rows i <= T-2, columns j <= T-2
    index = torch.arange(earlier.shape[0])
    on_or_after_j = index.unsqueeze(1) >= index.unsqueeze(0)  # i >= j
    best = torch.where(on_or_after_j, earlier, -math.inf).amax(dim=0)
    return (best - matrix[-1, :-1]).tolist()


def average_forgetting(R: Any) -> float:
    """The mean of :func:`forgetting` over tasks 0..T-2; NaN for T = 1."""
    per_task = forgetting(R)
    return sum(per_task) / len(per_task) if per_task else math.nan


def backward_transfer(R: Any) -> float:
    """BWT = 1/(T-1) sum_{j < T-1} (R[T-1, j] - R[j, j]); NaN for T = 1.

    Lopez-Paz & Ranzato 2017 ("Gradient Episodic Memory for Continual Learning"). Negative
    values mean forgetting.
    """
    matrix = accuracy_matrix(R)
    if matrix.shape[0] == 1:
        return math.nan
    return (matrix[-1, :-1] - matrix.diagonal()[:-1]).mean().item()


def online_accuracy(
    correct: Tensor,
    task_lengths: Sequence[int] | None = None,
    task_ids: Tensor | None = None,
) -> list[float]:
    """Fraction of correct predictions per task in a one-pass (online) stream.

    Dohare et al. 2024 (Online Permuted MNIST): ``correct[n]`` is 1 if the prediction for
    example n, made BEFORE the update on it, was right. Tasks are given either by consecutive
    ``task_lengths`` (summing to ``len(correct)``) or by one ``task_ids`` entry per example;
    the result has one entry per task 0..max id (NaN for an id with no example).
    """
    require(
        (task_lengths is None) != (task_ids is None),
        "online_accuracy tasks",
        {"task_lengths": task_lengths, "task_ids": task_ids},
        "exactly one of task_lengths and task_ids",
    )
    correct = torch.as_tensor(correct, dtype=torch.float64).flatten()
    if task_lengths is not None:
        lengths = torch.as_tensor(task_lengths, dtype=torch.long)
        require(
            int(lengths.sum()) == correct.numel() and bool((lengths >= 0).all()),
            "online_accuracy task_lengths",
            list(task_lengths),
            f"non-negative lengths summing to the number of predictions ({correct.numel()})",
        )
        task_ids = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    ids = torch.as_tensor(task_ids, dtype=torch.long).flatten()
    require(
        ids.numel() == correct.numel(),
        "online_accuracy task_ids",
        f"{ids.numel()} ids",
        f"one id per prediction ({correct.numel()})",
    )
    counts = torch.bincount(ids).to(torch.float64)
    hits = torch.bincount(ids, weights=correct)
    return (hits / counts).tolist()  # 0 / 0 = NaN for an id with no example


def stability_gap(
    steps: Any, accuracy: Any, switch_step: float, task_length: float
) -> dict[str, float]:
    """Gap depth and time to recover of one earlier task's accuracy curve after a task switch.

    De Lange et al. 2023 ("Continual evaluation for lifelong learning: identifying the
    stability gap"). ``accuracy[k]`` is the task's accuracy evaluated at ``steps[k]``
    (increasing, e.g. every ``eval_every`` optimiser steps); the new task is trained on steps
    (switch_step, switch_step + task_length], the window.

    - pre-switch level A = the accuracy at the last evaluation at or before ``switch_step``;
    - gap depth GD = A - min of the accuracies evaluated in the window, in the unit of
      ``accuracy`` (percentage points for accuracies in %). GD is reported as is: it is
      negative when the accuracy never drops below A (no gap), 0 when its minimum equals A;
    - time to recover TTR = (s_r - switch_step) / task_length * 100, in % of the task length,
      where s_r is the first evaluation step in the window, at or after the (first) minimum,
      with accuracy >= A. For GD > 0 that is the first evaluation after the minimum; for
      GD <= 0 it is the step of the minimum itself. NaN if the accuracy does not get back to A
      within the window.

    Returns:
        ``{"gap_depth", "time_to_recover", "pre_switch_accuracy", "minimum_step"}``.

    Raises:
        ValueError: if there is no evaluation at or before ``switch_step`` or in the window,
            or the inputs do not match.
    """
    steps_t = torch.as_tensor(steps, dtype=torch.float64).flatten()
    acc = torch.as_tensor(accuracy, dtype=torch.float64).flatten()
    require(
        steps_t.numel() == acc.numel() and bool((steps_t.diff() > 0).all()),
        "stability_gap steps",
        f"{steps_t.numel()} steps for {acc.numel()} accuracies",
        "strictly increasing steps, one per accuracy",
    )
    require(task_length > 0, "stability_gap task_length", task_length, "a number > 0")
    before = torch.nonzero(steps_t <= switch_step).flatten()
    window = torch.nonzero((steps_t > switch_step) & (steps_t <= switch_step + task_length))
    window = window.flatten()
    require(
        before.numel() > 0 and window.numel() > 0,
        "stability_gap switch_step",
        switch_step,
        "a step with an evaluation at or before it and one in (switch_step, + task_length]",
    )
    level = acc[before[-1]]
    in_window = acc[window]
    lowest = int(torch.argmin(in_window))  # first occurrence of the minimum
    recovered = torch.nonzero(in_window[lowest:] >= level).flatten()
    if recovered.numel() > 0:
        recovery_step = steps_t[window[lowest + int(recovered[0])]]
        time_to_recover = ((recovery_step - switch_step) / task_length * 100.0).item()
    else:
        time_to_recover = math.nan
    return {
        "gap_depth": (level - in_window[lowest]).item(),
        "time_to_recover": time_to_recover,
        "pre_switch_accuracy": level.item(),
        "minimum_step": steps_t[window[lowest]].item(),
    }


def binned_mean(values: Any, bin_size: int) -> Tensor:
    """Means of consecutive bins of ``bin_size`` values (a last, shorter bin is its own mean).

    E.g. the per-example squared error of the slowly-changing regression problem reported in
    bins of 20,000 examples (Dohare et al. 2024).
    """
    require(
        isinstance(bin_size, int) and not isinstance(bin_size, bool) and bin_size >= 1,
        "binned_mean bin_size",
        bin_size,
        "an integer >= 1",
    )
    flat = torch.as_tensor(values).flatten()
    flat = flat if flat.is_floating_point() else flat.to(torch.float64)
    bins = torch.arange(flat.numel(), device=flat.device) // bin_size
    sums = torch.zeros(-(-flat.numel() // bin_size), dtype=flat.dtype, device=flat.device)
    sums.index_add_(0, bins, flat)
    counts = torch.bincount(bins, minlength=sums.numel()).to(flat.dtype)
    return sums / counts
