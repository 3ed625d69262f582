"""Epoch boundaries inside a task: learning-rate drops, per-epoch evaluation, early stopping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from plasticity_rl.supervised.epochs import EpochSchedule, epoch_learning_rate_factor, epoch_results
from plasticity_rl.supervised.streams import Task


@pytest.mark.parametrize(
    ("epoch", "lr"),
    [
        (0, 0.1),
        (59, 0.1),
        (60, 0.02),
        (119, 0.02),
        (120, 0.004),
        (160, 0.0008),
        (199, 0.0008),
    ],  # fmt: skip
)
def test_learning_rate_drops_as_dohare_et_al_cifar_schedule(epoch: int, lr: float):
    # their set_lr: 0.1, then round(0.1 * 0.2, 5) = 0.02 at 60, 0.004 at 120, 0.0008 at 160
    assert 0.1 * epoch_learning_rate_factor(epoch, [60, 120, 160], 0.2) == pytest.approx(lr)


def test_results_report_each_tasks_best_epoch():
    progress = {"epochs": {"test": [[10.0, 30.0, 20.0], [5.0, 4.0]], "validation": [[1.0], [2.0]]}}
    assert epoch_results(progress)["best_epoch_test_accuracy"] == [30.0, 5.0]
    assert epoch_results({}) == {}


class _Writer:
    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))


def test_early_stopping_goes_back_to_the_best_validation_epoch():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    learner = SimpleNamespace(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), batched=False,
                              model=model, run_model=lambda run: model)  # fmt: skip
    train = SimpleNamespace(lr_drop_epochs=[1], lr_drop_factor=0.5, evaluate_every_epoch=True,
                            early_stopping=True)  # fmt: skip
    progress = {"step": 0}
    schedule = EpochSchedule(learner, train, [progress])
    x = torch.eye(2)
    task = Task("t", x, torch.arange(2), x, torch.arange(2), [0, 1], [0, 1], x, torch.arange(2))
    writer = _Writer()
    right, wrong, half = torch.eye(2), torch.eye(2).flip(0), torch.tensor([[1.0, 0], [1, 0]])
    for epoch, weight in enumerate([half, right, wrong]):
        schedule.start_epoch(epoch)
        assert learner.optimizer.param_groups[0]["lr"] == (0.1 if epoch == 0 else 0.05)
        with torch.no_grad():
            model.weight.copy_(weight)
            model.bias.zero_()
        progress["step"] += 1
        schedule.end_epoch([task], 0, None, [writer])
    assert progress["epochs"]["validation"] == [[50.0, 100.0, 0.0]]
    assert progress["epochs"]["test"] == [[50.0, 100.0, 0.0]]
    schedule.end_task()
    assert torch.equal(model.weight, right) and "best" not in progress
    assert ("cl/epoch/validation_accuracy", 100.0, 2) in writer.scalars
