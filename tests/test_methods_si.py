"""SI: the path integral and the consolidation on a one-parameter problem worked by hand."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from stand_ins import train_steps
from torch import nn

from plasticity_rl.methods import SI, make_method
from plasticity_rl.nn import build_mlp
from plasticity_rl.registry import ConfigError


class Scalar(nn.Module):
    """One trainable number theta."""

    def __init__(self, value: float):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(value, dtype=torch.float64))


def _sgd_steps(model: Scalar, optimizer: torch.optim.Optimizer, target: float, steps: int):
    """SGD on the task loss (theta - target)^2."""
    for _ in range(steps):
        optimizer.zero_grad()
        (model.theta - target).square().backward()
        optimizer.step()


def test_two_tasks_by_hand():
    # Task 1: loss (theta - 3)^2, theta = 1, SGD lr 0.1, xi = 0.1, c = 1 (strength 2).
    #   step 1: g = 2 (1 - 3) = -4,     delta = 0.4  -> theta = 1.4,  omega = 4 * 0.4 = 1.6
    #   step 2: g = 2 (1.4 - 3) = -3.2, delta = 0.32 -> theta = 1.72, omega = 1.6 + 1.024 = 2.624
    # Task end: Omega = 2.624 / ((1.72 - 1)^2 + 0.1) = 2.624 / 0.6184 = 4.243208...
    model = Scalar(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    si = SI(coefficient=1.0, damping=0.1)
    si.attach(model, optimizer)
    _sgd_steps(model, optimizer, target=3.0, steps=1)
    assert si.omega[0].item() == pytest.approx(1.6)
    _sgd_steps(model, optimizer, target=3.0, steps=1)
    assert model.theta.item() == pytest.approx(1.72)
    assert si.omega[0].item() == pytest.approx(2.624)
    assert si.penalty() == 0.0  # nothing consolidated yet
    si.on_task_end(None, model)
    omega_task1 = 2.624 / 0.6184
    assert si.importance[0].item() == pytest.approx(omega_task1)
    assert si.omega[0].item() == 0.0 and si.anchor[0].item() == pytest.approx(1.72)

    # Task 2: loss theta^2; the penalty gradient is 2 c Omega (theta - 1.72).
    #   step 1: g_task = 3.44, penalty grad 0 -> delta = -0.344, theta = 1.376,
    #           omega = -3.44 * -0.344 = 1.18336
    #   step 2: g_task = 2.752, penalty grad = 2 * 4.243208 * (1.376 - 1.72) = -2.919327,
    #           total -0.167327 -> delta = +0.0167327, theta = 1.3927327;
    #           omega += -2.752 * 0.0167327 (the TASK gradient, not the total) -> 1.1373116
    _sgd_steps(model, optimizer, target=0.0, steps=1)
    assert model.theta.item() == pytest.approx(1.376)
    assert si.omega[0].item() == pytest.approx(1.18336)
    _sgd_steps(model, optimizer, target=0.0, steps=1)
    penalty_grad = 2 * omega_task1 * (1.376 - 1.72)
    assert model.theta.grad.item() == pytest.approx(2 * 1.376 + penalty_grad)  # grad incl. penalty
    delta = -0.1 * (2 * 1.376 + penalty_grad)
    assert model.theta.item() == pytest.approx(1.376 + delta)
    assert si.omega[0].item() == pytest.approx(1.18336 - 2.752 * delta)
    # penalty = c Omega (theta - theta*)^2
    assert si.penalty() == pytest.approx(omega_task1 * (1.376 + delta - 1.72) ** 2)

    # Task end 2: Omega += omega / ((theta - 1.72)^2 + xi)
    omega_task2 = (1.18336 - 2.752 * delta) / ((1.376 + delta - 1.72) ** 2 + 0.1)
    si.on_task_end(None, model)
    assert si.importance[0].item() == pytest.approx(omega_task1 + omega_task2)


def test_penalty_pulls_toward_the_anchor():
    # After task 1 the next task pulls theta from 1.72 toward 0; with c = 1 it stays closer.
    ends = {}
    for coefficient in (0.0, 1.0):
        model = Scalar(1.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        si = SI(coefficient=coefficient, damping=0.1)
        si.attach(model, optimizer)
        _sgd_steps(model, optimizer, target=3.0, steps=2)
        si.on_task_end(None, model)
        _sgd_steps(model, optimizer, target=0.0, steps=30)
        ends[coefficient] = model.theta.item()
    assert ends[0.0] == pytest.approx(0.0, abs=1e-2)
    # c = 1: the minimum of theta^2 + Omega (theta - 1.72)^2 is 1.72 Omega / (1 + Omega) ~ 1.39
    assert ends[1.0] == pytest.approx(1.72 * 4.243208 / 5.243208, abs=1e-2)


def test_coefficient_zero_is_bit_identical_to_no_method():
    torch.manual_seed(0)
    net = build_mlp(3, [8], 2)
    plain = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    si = SI(coefficient=0.0)
    si.attach(net, optimizer)
    for task_index in range(3):
        train_steps(net, optimizer, 3, seed=task_index)
        si.on_task_end(None, net)
        train_steps(plain, plain_optimizer, 3, seed=task_index)
    assert any(omega.abs().sum() > 0 for omega in si.importance)
    for p, q in zip(net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dict_round_trip_mid_task_resumes_identically():
    torch.manual_seed(0)
    net = build_mlp(3, [8], 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    si = SI(coefficient=0.5)
    si.attach(net, optimizer)
    train_steps(net, optimizer, 3)
    si.on_task_end(None, net)
    train_steps(net, optimizer, 2, seed=1)  # omega is non-zero mid task

    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "si": si.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = build_mlp(3, [8], 2)
    twin.load_state_dict(saved["net"])
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    resumed = SI(coefficient=0.5)
    resumed.attach(twin, twin_optimizer)
    resumed.load_state_dict(saved["si"])

    for method, model, opt in ((si, net, optimizer), (resumed, twin, twin_optimizer)):
        train_steps(model, opt, 2, seed=2)
        method.on_task_end(None, model)
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    for a, b in zip(si.importance, resumed.importance, strict=True):
        assert torch.equal(a, b)


def test_registered_and_flags_task_boundaries():
    si = make_method("si", coefficient=0.2, damping=0.01)
    assert isinstance(si, SI) and si.uses_task_boundaries
    assert si.strength == pytest.approx(0.4) and si.damping == 0.01


@pytest.mark.parametrize("key, value", [("coefficient", -0.1), ("damping", 0.0), ("damping", "x")])
def test_bad_values_name_key_and_value(key: str, value: object):
    with pytest.raises(ConfigError) as err:
        make_method("si", **{key: value})
    assert err.value.key == f"si.{key}" and err.value.value == value
