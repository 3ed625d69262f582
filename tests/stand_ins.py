"""Small stand-ins shared by the continual-learning method tests."""

from __future__ import annotations

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
