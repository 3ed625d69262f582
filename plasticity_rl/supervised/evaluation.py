"""Evaluation of supervised runs: test accuracy, continual evaluation, plasticity, results.

TensorBoard tags: ``cl/accuracy/task<j>``, ``cl/eval/task<j>``, ``cl/average_accuracy_seen``,
``plasticity/net/<layer>/<metric>``, ``plasticity/net/<metric>`` (:func:`log_plasticity`) and
``plasticity/net/probe_task`` (the task whose examples the metrics were measured on, see
:data:`PROBE_TIMINGS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from plasticity_rl.methods import Method
from plasticity_rl.metrics import OutputChurn, hidden_layer_health, weight_magnitude
from plasticity_rl.metrics.continual import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting,
    stability_gap,
)
from plasticity_rl.supervised.steps import class_mask
from plasticity_rl.supervised.streams import TaskStream

EVAL_BATCH = 4096


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor | None) -> float:
    """Accuracy in % of ``model`` on (x, y), evaluated in eval mode in batches."""
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])
        if mask is not None:
            logits = logits + mask
        correct += int((logits.argmax(dim=1) == y[i : i + EVAL_BATCH]).sum())
    model.train(was_training)
    return 100.0 * correct / len(y)


def task_accuracy(model: nn.Module, methods: dict[str, Method], task: int, x: Tensor, y: Tensor,
                  mask: Tensor | None) -> float:  # fmt: skip
    """:func:`accuracy` on task ``task``'s data with the network each method gives for that task
    (:meth:`~plasticity_rl.methods.Method.evaluating_task`, e.g. EfficientPackNet's masks)."""
    with contextlib.ExitStack() as stack:
        for method in methods.values():
            stack.enter_context(method.evaluating_task(task))
        return accuracy(model, x, y, mask)


def log_plasticity(writer: SummaryWriter, model: nn.Module, probe: Tensor, step: int,
                   gradient_metrics: dict[str, float] | None = None,
                   churn: OutputChurn | None = None) -> dict:  # fmt: skip
    """``plasticity/net/<layer>/<metric>`` (:func:`~plasticity_rl.metrics.hidden_layer_health`),
    ``plasticity/net/weight_magnitude``, and, when known, the ``gradient_metrics`` (gradient
    norm and GraMa dormancy of the last step's gradients, measured by the caller, which holds
    the gradients: :func:`~plasticity_rl.metrics.run_gradient_metrics`) and
    ``plasticity/net/output_churn`` (``churn``'s measurement: the change since its previous
    one on its fixed reference batch) at ``step``."""
    values: dict[str, float] = {"weight_magnitude": weight_magnitude(model)}
    values.update(hidden_layer_health(model, probe))
    values.update(gradient_metrics or {})
    if churn is not None and (change := churn.measure(model, probe)) is not None:
        values["output_churn"] = change
    for key, value in values.items():
        writer.add_scalar(f"plasticity/net/{key}", value, step)
    return values


PROBE_TIMINGS = {
    "before_task": "the first {size} training examples of task {task}, before training on it",
    "after_task": "{size} random training examples of task {task}, after training on it",
}
"""When and on what the supervised loops measure the plasticity metrics: online streams before
each task on the examples the learner is about to see (Dohare et al. 2024's Online Permuted
MNIST code), the other task streams after each task on the task just learned."""


def record_plasticity(writer: SummaryWriter, model: nn.Module, probe: Tensor,
                      progress: dict[str, Any], task: int, timing: str,
                      gradient_metrics: dict[str, float] | None = None,
                      churn: OutputChurn | None = None) -> None:  # fmt: skip
    """Log the plasticity metrics on ``probe`` at the run's current step and keep them
    (:func:`log_plasticity`, with ``gradient_metrics`` and ``churn``).

    Appends ``{"task", "timing", "probe", "step", "metrics"}`` to ``progress["plasticity"]``
    (``timing`` a key of :data:`PROBE_TIMINGS`, ``probe`` its sentence) and logs
    ``plasticity/net/probe_task`` = ``task`` at the same step, so both results.json and
    TensorBoard say which task the probe came from.
    """
    step = progress["step"]
    metrics = log_plasticity(writer, model, probe, step, gradient_metrics, churn)
    writer.add_scalar("plasticity/net/probe_task", task, step)
    progress["plasticity"].append(
        {
            "task": task,
            "timing": timing,
            "probe": PROBE_TIMINGS[timing].format(size=len(probe), task=task),
            "step": step,
            "metrics": metrics,
        }
    )


def log_method_stats(writers: Sequence[SummaryWriter], methods: dict[str, Method],
                     step: int) -> None:  # fmt: skip
    """Each run's method counters (:meth:`Method.run_stats`) to that run's writer."""
    for method in methods.values():
        for writer, stats in zip(writers, method.run_stats(len(writers)), strict=True):
            for key, value in stats.items():
                writer.add_scalar(f"plasticity/net/{key}", value, step)


def task_end_evaluation(stream: TaskStream, model: nn.Module, methods: dict[str, Method],
                         t: int, test_sets: dict[int, tuple[Tensor, Tensor, Tensor | None]],
                         writer: SummaryWriter, progress: dict[str, Any],
                         evaluate_tasks: str = "all") -> None:  # fmt: skip
    """Task-end hooks of the methods, then the row of the accuracy matrix after task ``t``
    (``evaluate_tasks="all"``), or only the accuracy on task ``t``'s test data, kept in
    ``progress["task_accuracy"]`` and logged as ``cl/task_accuracy`` (``"current"``: streams
    of thousands of tasks, Dohare et al.'s Continual ImageNet; no test set is cached)."""
    task = stream.tasks[t]
    for method in methods.values():
        method.on_task_end(task, model)
    if evaluate_tasks == "current":
        mask = class_mask(task, stream.num_classes)
        value = task_accuracy(model, methods, t, task.test_x, task.test_y, mask)
        progress.setdefault("task_accuracy", []).append(value)
        writer.add_scalar("cl/task_accuracy", value, progress["step"])
        return
    row = [task_accuracy(model, methods, j, *test_set(stream, j, test_sets))
           for j in range(len(stream.tasks))]  # fmt: skip
    progress["accuracy_matrix"].append(row)
    for j, value in enumerate(row[: t + 1]):
        writer.add_scalar(f"cl/accuracy/task{j}", value, progress["step"])
    writer.add_scalar("cl/average_accuracy_seen", float(np.mean(row[: t + 1])), progress["step"])


def test_set(
    stream: TaskStream, j: int, cache: dict[int, tuple[Tensor, Tensor, Tensor | None]]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Task ``j``'s test inputs, labels and class mask, built once (tasks are built lazily)."""
    if j not in cache:
        task = stream.tasks[j]
        cache[j] = (task.test_x, task.test_y, class_mask(task, stream.num_classes))
    return cache[j]


def continual_eval(stream: TaskStream, model: nn.Module, methods: dict[str, Method], current: int,
                   cache: dict[int, tuple[Tensor, Tensor, Tensor | None]], tc: Any,
                   writer: SummaryWriter, step: int, progress: dict[str, Any]) -> None:  # fmt: skip
    """Accuracy on a fixed test subset of every task seen so far (De Lange et al. 2023),
    with the current task's class mask (the output units the learner has at this point) and
    each task's network (:func:`task_accuracy`)."""
    mask = test_set(stream, current, cache)[2]
    n = tc.eval_examples_per_task
    for j in range(current + 1):
        x, y, _ = test_set(stream, j, cache)
        value = task_accuracy(model, methods, j, x[:n], y[:n], mask)
        progress["curves"].setdefault(str(j), []).append([step, value])
        writer.add_scalar(f"cl/eval/task{j}", value, step)


def classification_results(stream: TaskStream, progress: dict[str, Any], tc: Any) -> dict:
    """Final numbers: accuracy matrix, average accuracy, forgetting, BWT, stability gaps."""
    results: dict[str, Any] = {"task_end_steps": progress["task_end_steps"]}
    if stream.online:
        results["online_accuracy"] = progress["online_accuracy"]
        return results
    if "task_accuracy" in progress:
        accuracies = progress["task_accuracy"]
        results.update(task_accuracy=accuracies, average_accuracy=float(np.mean(accuracies)))
        return results
    matrix = torch.tensor(progress["accuracy_matrix"])
    results.update(
        accuracy_matrix=progress["accuracy_matrix"],
        average_accuracy=average_accuracy(matrix),
        forgetting=forgetting(matrix),
        average_forgetting=average_forgetting(matrix),
        backward_transfer=backward_transfer(matrix),
    )
    if progress["curves"]:
        ends = progress["task_end_steps"]
        gaps = {}
        for j, curve in progress["curves"].items():
            steps, values = zip(*curve, strict=True)
            for t in range(int(j) + 1, len(ends)):
                switch, length = ends[t - 1], ends[t] - ends[t - 1]
                gap = stability_gap(list(steps), list(values), switch, length)
                gaps[f"task{j}_during_task{t}"] = gap
        results["stability_gap"] = gaps
    return results
