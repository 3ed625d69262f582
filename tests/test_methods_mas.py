"""MAS: the importance formula on a linear model by hand, the penalty and its gradient."""

from __future__ import annotations

import pytest
import torch
from stand_ins import StandInTask, linear_with
from torch import nn

from plasticity_rl.methods import MAS, make_method
from plasticity_rl.registry import ConfigError

# f(x) = W x + b with W = [[1, 0], [0, 2]], b = 0; ||f||^2 = sum_k f_k^2, so
# d||f||^2 / d W_kj = 2 f_k x_j and d||f||^2 / d b_k = 2 f_k.
# x1 = (1, 1): f = (1, 2) -> dW = [[2, 2], [4, 4]],   db = (2, 4)
# x2 = (2, -1): f = (2, -2) -> dW = [[8, -4], [-8, 4]], db = (4, -4)
# Omega = mean |.|: W -> [[5, 3], [6, 4]], b -> (3, 4). Labels are not used.
TASK = StandInTask(torch.tensor([[1.0, 1.0], [2.0, -1.0]]), torch.tensor([0, 1]))
OMEGA_W = torch.tensor([[5.0, 3.0], [6.0, 4.0]])
OMEGA_B = torch.tensor([3.0, 4.0])


def _attached_mas(model: nn.Module, **kwargs) -> tuple[MAS, torch.optim.Optimizer]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mas = MAS(samples=None, **kwargs)
    mas.attach(model, optimizer)
    return mas, optimizer


def test_importance_by_hand():
    model = linear_with([[1.0, 0.0], [0.0, 2.0]], [0.0, 0.0])
    mas, _ = _attached_mas(model)
    mas.on_task_end(TASK, model)
    assert torch.allclose(mas.importance[0], OMEGA_W)
    assert torch.allclose(mas.importance[1], OMEGA_B)


def test_only_the_active_outputs_count():
    # A third output unit (row 1 here) outside active_classes [0, 2] gets importance 0; rows 0
    # and 2 are the rows of the model above, so their importances are unchanged.
    model = linear_with([[1.0, 0.0], [5.0, 5.0], [0.0, 2.0]], [0.0, 1.0, 0.0])
    mas, _ = _attached_mas(model)
    task = StandInTask(TASK.train_x, torch.tensor([0, 2]), active_classes=[0, 2])
    mas.on_task_end(task, model)
    assert torch.allclose(mas.importance[0][[0, 2]], OMEGA_W)
    assert torch.allclose(mas.importance[1][[0, 2]], OMEGA_B)
    assert mas.importance[0][1].abs().max() == 0 and mas.importance[1][1] == 0


def test_penalty_and_its_gradient_use_the_paper_form():
    # lambda = 2: penalty = lambda * sum Omega (theta - theta*)^2. Moving every weight by 0.1:
    # 2 * 0.01 * (5 + 3 + 6 + 4) = 0.36; gradient 2 lambda Omega delta = 0.4 * Omega_W (bias 0).
    model = linear_with([[1.0, 0.0], [0.0, 2.0]], [0.0, 0.0])
    mas, optimizer = _attached_mas(model, coefficient=2.0)
    mas.on_task_end(TASK, model)
    with torch.no_grad():
        model.weight.add_(0.1)
    assert mas.penalty() == pytest.approx(0.36)
    optimizer.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # a zero task-loss gradient
    optimizer.step()
    assert torch.allclose(model.weight.grad, 0.4 * OMEGA_W)
    assert torch.equal(model.bias.grad, torch.zeros(2))


def test_accumulate_sum_adds_and_replace_keeps_the_latest():
    # Second task end on the same data and weights: sum -> 2 Omega, replace -> Omega.
    for accumulate, factor in (("sum", 2.0), ("replace", 1.0)):
        model = linear_with([[1.0, 0.0], [0.0, 2.0]], [0.0, 0.0])
        mas, _ = _attached_mas(model, accumulate=accumulate)
        mas.on_task_end(TASK, model)
        mas.on_task_end(TASK, model)
        assert torch.allclose(mas.importance[0], factor * OMEGA_W)


def test_registered_and_flags_task_boundaries():
    mas = make_method("mas", coefficient=3.0, samples=50)
    assert isinstance(mas, MAS) and mas.uses_task_boundaries
    assert mas.strength == 6.0 and mas.samples == 50


@pytest.mark.parametrize(
    "key, value",
    [("coefficient", -1.0), ("coefficient", "big"), ("samples", 0), ("accumulate", "max")],
)
def test_bad_values_name_key_and_value(key: str, value: object):
    with pytest.raises(ConfigError) as err:
        make_method("mas", **{key: value})
    assert err.value.key == f"mas.{key}" and err.value.value == value
