"""What happens at the epoch boundaries inside a task: learning-rate drops, per-epoch
evaluation and early stopping (Dohare et al. 2024's class-incremental CIFAR-100 protocol,
``lop/incremental_cifar/incremental_cifar_experiment.py``).

- ``train.lr_drop_epochs`` / ``train.lr_drop_factor``: at the start of epoch e of every task
  (counted from 0 in each task) each parameter group's learning rate is its initial value times
  ``lr_drop_factor ** (number of drop epochs <= e)`` (theirs: 0.1, then 0.02 from epoch 60,
  0.004 from 120, 0.0008 from 160, restarting at every new task).
- ``train.evaluate_every_epoch``: after every epoch, the accuracy on the task's validation data
  (if the stream holds some out) and test data, with the task's class mask, is logged as
  ``cl/epoch/validation_accuracy`` and ``cl/epoch/test_accuracy`` and kept per task; the
  results get the best test accuracy of each task's epochs (``best_epoch_test_accuracy``, the
  number their plots report: the maximum over each task's 200 epochs).
- ``train.early_stopping``: after every epoch, a network with a validation accuracy above the
  task's best so far is kept (its parameters and buffers); at the task's end the network is
  set back to the best one before the task-end evaluation. As in their code, only the
  network goes back: the optimiser's and the methods' state stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from plasticity_rl.supervised.evaluation import accuracy
from plasticity_rl.supervised.learner import Learner
from plasticity_rl.supervised.steps import class_mask_of_run
from plasticity_rl.supervised.streams import Task


def epoch_learning_rate_factor(epoch: int, drop_epochs: list[int], factor: float) -> float:
    """``factor ** (number of drop epochs <= epoch)``: the learning-rate multiplier of an epoch."""
    return factor ** sum(1 for e in drop_epochs if e <= epoch)


class EpochSchedule:
    """The epoch-boundary steps of one task for every run (module docstring).

    Args:
        learner: the runs (their optimiser's groups get an ``initial_lr`` once).
        train: the runs' ``TrainConfig``.
        progresses: each run's progress record, where per-epoch accuracies and the best
            network so far are kept (so checkpoints carry them).
    """

    def __init__(self, learner: Learner, train: Any, progresses: list[dict]):
        self.learner, self.train, self.progresses = learner, train, progresses
        for group in learner.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @property
    def evaluates(self) -> bool:
        return bool(self.train.evaluate_every_epoch or self.train.early_stopping)

    def start_epoch(self, epoch: int) -> None:
        """Set every group's learning rate for ``epoch`` of the task."""
        if not self.train.lr_drop_epochs:
            return
        scale = epoch_learning_rate_factor(epoch, self.train.lr_drop_epochs,
                                           self.train.lr_drop_factor)  # fmt: skip
        for group in self.learner.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * scale

    def end_epoch(self, tasks: Sequence[Task], t: int, mask: Tensor | None,
                  writers: Sequence[Any]) -> None:  # fmt: skip
        """Evaluate each run's network after an epoch of task ``t`` (``tasks``: each run's;
        ``mask``: :func:`~plasticity_rl.supervised.steps.run_class_mask`'s); keep it if it is
        the task's best on validation data (early stopping)."""
        if not self.evaluates:
            return
        for run, (task, writer) in enumerate(zip(tasks, writers, strict=True)):
            run_mask = class_mask_of_run(mask, run, self.learner.batched)
            self._evaluate(run, self.learner.run_model(run), task, t, run_mask, writer)

    def _evaluate(self, run: int, model: nn.Module, task: Task, t: int, mask: Tensor | None,
                  writer: Any) -> None:  # fmt: skip
        progress = self.progresses[run]
        record = progress.setdefault("epochs", {"validation": [], "test": []})
        for key in ("validation", "test"):
            while len(record[key]) <= t:
                record[key].append([])
        values = {"test": accuracy(model, task.test_x, task.test_y, mask)}
        if task.val_x is not None:
            values["validation"] = accuracy(model, task.val_x, task.val_y, mask)
        for key, value in values.items():
            record[key][t].append(value)
            writer.add_scalar(f"cl/epoch/{key}_accuracy", value, progress["step"])
        if self.train.early_stopping and values["validation"] > progress.get("best", {}).get(
            "validation_accuracy", -1.0
        ):
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            progress["best"] = {"validation_accuracy": values["validation"], "network": state}

    def end_task(self) -> None:
        """Early stopping: set the network back to the task's best and forget it (a single
        run: batched runs refuse early stopping)."""
        best = self.progresses[0].pop("best", None)
        if best is not None:
            self.learner.model.load_state_dict(best["network"])


def epoch_results(progress: dict[str, Any]) -> dict[str, Any]:
    """Per-epoch accuracies of every task and each task's best test accuracy over its epochs
    (empty without per-epoch evaluation)."""
    record = progress.get("epochs")
    if not record:
        return {}
    return {
        "epoch_test_accuracy": record["test"],
        "epoch_validation_accuracy": record["validation"],
        "best_epoch_test_accuracy": [max(values) for values in record["test"] if values],
    }
