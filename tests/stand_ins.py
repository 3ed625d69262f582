"""Small stand-ins shared by the continual-learning method tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class StandInTask:
    """The attributes of ``supervised.streams.Task`` that the methods use."""

    train_x: Tensor
    train_y: Tensor
    classes: list[int] = field(default_factory=list)
    active_classes: list[int] = field(default_factory=list)


def linear_with(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    """An ``nn.Linear`` holding the given weight and bias (for cases worked by hand)."""
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def train_steps(
    net: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0
) -> None:
    """``steps`` optimiser steps of MSE regression on a fixed seeded batch (3 inputs, 2 outputs)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()


COMPANIONS = {
    "continual_backprop": {"replacement_rate": 0.2, "maturity_threshold": 2},
    "redo": {"tau": 0.5, "period": 5},
    "shrink_and_perturb": {"shrink": 1e-3, "noise_std": 1e-3},
}
"""The unit-reset and weight methods every new method must compose with (with Adam's L2)."""


def assert_composes_and_resumes(spec: dict[str, dict], steps: int = 12) -> list:
    """Train a 3 -> 4 -> 4 -> 2 MLP with the methods of ``spec`` plus :data:`COMPANIONS` and
    Adam with weight decay; a copy resumed from the states after ``steps`` steps (methods
    loaded first, as the checkpoints do) must continue bit-identically. Returns the methods."""
    from plasticity_rl.methods import attach_methods, make_methods
    from plasticity_rl.nn import build_mlp

    def build() -> tuple[nn.Module, torch.optim.Optimizer, list]:
        torch.manual_seed(0)
        net = build_mlp(3, [4, 4], 2)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=1e-3)
        methods = make_methods({**spec, **COMPANIONS})
        attach_methods(methods, net, optimizer)
        return net, optimizer, methods

    net, optimizer, methods = build()
    train_steps(net, optimizer, steps)
    # copies: a loaded torch optimiser would share the saved state tensors
    saved = copy.deepcopy(
        ([m.state_dict() for m in methods], net.state_dict(), optimizer.state_dict())
    )
    copy_net, copy_optimizer, copy_methods = build()
    for method, state in zip(copy_methods, saved[0], strict=True):
        method.load_state_dict(state)
    copy_net.load_state_dict(saved[1])
    copy_optimizer.load_state_dict(saved[2])
    for a, b in ((net, optimizer), (copy_net, copy_optimizer)):
        torch.manual_seed(7)
        train_steps(a, b, steps, seed=1)
    for (key, p), q in zip(net.state_dict().items(), copy_net.state_dict().values(), strict=True):
        assert torch.isfinite(p).all() and torch.equal(p, q), key
    return methods
