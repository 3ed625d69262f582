"""Optimiser-state resets of a slice of one parameter (plasticity_rl.optim.state)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plasticity_rl.optim.adam import Adam
from plasticity_rl.optim.state import OPTIMIZER_STATE_RESETS, reset_optimizer_state
from plasticity_rl.registry import ConfigError

ROWS = torch.tensor([1, 3])


def _stepped(optimizer_class: type[torch.optim.Optimizer], **kwargs) -> tuple:
    """A 4x4 parameter after two steps with fixed non-zero gradients, and its optimiser."""
    p = nn.Parameter(torch.ones(4, 4))
    optimizer = optimizer_class([p], **kwargs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        p.grad = torch.rand(4, 4, generator=gen) + 0.5
        optimizer.step()
    return p, optimizer


def _snapshot(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, torch.Tensor)}


def _sliced(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.index_select(dim, ROWS)


def _others(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.index_select(dim, torch.tensor([0, 2]))


@pytest.mark.parametrize("dim", [0, 1])
def test_our_adam_modes_touch_exactly_the_slice(dim: int):
    for mode in OPTIMIZER_STATE_RESETS:
        p, optimizer = _stepped(Adam, lr=0.1)
        before = _snapshot(optimizer, p)
        assert set(before) == {"exp_avg", "exp_avg_sq", "step"}
        assert optimizer.state[p]["uniform_step"] == 2
        assert torch.all(before["step"] == 2) and torch.all(before["exp_avg"] != 0)
        reset_optimizer_state(optimizer, p, ROWS, dim, mode)
        after = optimizer.state[p]
        for key in before:
            # entries outside the slice never change
            assert torch.equal(_others(after[key], dim), _others(before[key], dim)), (mode, key)
        moments_zeroed = mode != "keep"
        step_zeroed = mode == "zero_moments_and_step"
        for key in ("exp_avg", "exp_avg_sq"):
            expected = torch.zeros_like if moments_zeroed else torch.clone
            assert torch.equal(_sliced(after[key], dim), expected(_sliced(before[key], dim)))
        expected_step = 0.0 if step_zeroed else 2.0
        assert torch.all(_sliced(after["step"], dim) == expected_step), mode
        assert after["uniform_step"] == (None if step_zeroed else 2), mode


def test_torch_adam_keeps_a_scalar_step_so_zeroing_it_is_a_config_error():
    p, optimizer = _stepped(torch.optim.Adam, lr=0.1)
    with pytest.raises(ConfigError, match="keep or zero_moments for Adam") as err:
        reset_optimizer_state(optimizer, p, ROWS, 0, "zero_moments_and_step")
    assert err.value.key == "optimizer_state" and err.value.value == "zero_moments_and_step"
    # zero_moments works and leaves the scalar step alone
    reset_optimizer_state(optimizer, p, ROWS, 0, "zero_moments")
    state = optimizer.state[p]
    assert torch.all(state["exp_avg"][ROWS] == 0) and torch.all(state["exp_avg"][[0, 2]] != 0)
    assert torch.all(state["exp_avg_sq"][ROWS] == 0)
    assert float(state["step"]) == 2.0


def test_adagrad_sum_goes_back_to_the_initial_accumulator_value():
    # sum starts at 0.25 and gains g^2 each step, so it is > 0.25 before the reset
    p, optimizer = _stepped(torch.optim.Adagrad, lr=0.1, initial_accumulator_value=0.25)
    reset_optimizer_state(optimizer, p, ROWS, 1, "zero_moments")
    total = optimizer.state[p]["sum"]
    assert torch.all(total[:, ROWS] == 0.25)
    assert torch.all(total[:, [0, 2]] > 0.25)
    assert float(optimizer.state[p]["step"]) == 2.0


@pytest.mark.parametrize(
    "optimizer_class, kwargs, keys",
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, ["momentum_buffer"]),
        (
            torch.optim.RMSprop,
            {"lr": 0.1, "momentum": 0.9, "centered": True},
            ["square_avg", "grad_avg", "momentum_buffer"],
        ),
        (
            torch.optim.Adam,
            {"lr": 0.1, "amsgrad": True},
            ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
        ),
    ],
)
def test_every_moment_shaped_like_the_parameter_is_zeroed(optimizer_class, kwargs, keys):
    p, optimizer = _stepped(optimizer_class, **kwargs)
    reset_optimizer_state(optimizer, p, ROWS, 0, "zero_moments")
    for key in keys:
        value = optimizer.state[p][key]
        assert torch.all(value[ROWS] == 0), key
        assert torch.all(value[[0, 2]] != 0), key


def test_parameter_without_state_is_left_alone_and_bad_modes_are_config_errors():
    p = nn.Parameter(torch.ones(4, 4))
    optimizer = torch.optim.Adam([p])
    reset_optimizer_state(optimizer, p, ROWS, 0, "zero_moments_and_step")  # no state yet
    assert p not in optimizer.state
    with pytest.raises(ConfigError, match="optimizer_state: got 'zero'") as err:
        reset_optimizer_state(optimizer, p, ROWS, 0, "zero")
    assert "zero_moments_and_step" in err.value.allowed
