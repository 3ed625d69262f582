"""Neuronal decay: its gradient hook equals the activation penalty in the loss."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from plasticity_rl.methods import NeuronalDecay
from plasticity_rl.nn import build_mlp


def _grads(net: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in net.parameters()]


def test_hand_worked_single_unit():
    # 1 -> 1 -> 1, all weights 1, biases 0, x = 2, loss = output = relu(w1 x):
    # dL/dh = 1 plus the penalty's 0.5 * 2 h / 1 = 2 (h = 2), so dL/dw1 = 3 * x = 6 (2 without).
    net = build_mlp(1, [1], 1)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0 if p.dim() == 2 else 0.0)
    decay = NeuronalDecay(coefficient=0.5)
    decay.attach(net, torch.optim.SGD(net.parameters(), lr=0.1))
    net(torch.tensor([[2.0]])).sum().backward()
    assert net.hidden[0].weight.grad.item() == 6.0
    assert decay.last_penalty == 2.0  # 0.5 * mean(h^2) = 0.5 * 4


def test_gradients_equal_those_of_the_explicit_penalty():
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2)
    explicit = copy.deepcopy(net)
    decay = NeuronalDecay(coefficient=0.1)
    decay.attach(net, torch.optim.SGD(net.parameters(), lr=0.1))
    x, y = torch.randn(8, 3), torch.randn(8, 2)

    out = net(x)
    nn.functional.mse_loss(out, y).backward()
    h1 = explicit.hidden[:2](x)
    h2 = explicit.hidden[2:](h1)
    explicit_out = explicit.output(h2)
    penalty = 0.1 * (h1.square().mean() + h2.square().mean())
    (nn.functional.mse_loss(explicit_out, y) + penalty).backward()

    assert torch.equal(out, explicit_out)  # forward values untouched
    for g, e in zip(_grads(net), _grads(explicit), strict=True):
        assert torch.allclose(g, e, atol=1e-7)
    assert decay.last_penalty == pytest.approx(penalty.item())
    stats = decay.stats()
    assert set(stats) == {
        "activation_penalty",
        "hidden1/activation_penalty",
        "hidden2/activation_penalty",
    }


def test_no_effect_in_eval_mode_or_without_grad():
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2)
    plain = copy.deepcopy(net)
    decay = NeuronalDecay(coefficient=0.1)
    decay.attach(net, torch.optim.SGD(net.parameters(), lr=0.1))
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    with torch.no_grad():
        net(x)
    assert decay.last_penalty == 0.0
    net.eval()
    nn.functional.mse_loss(net(x), y).backward()
    nn.functional.mse_loss(plain(x), y).backward()
    for g, e in zip(_grads(net), _grads(plain), strict=True):
        assert torch.equal(g, e)
    assert decay.last_penalty == 0.0
