"""The hand-written MLP backward gives autograd's gradients, for plain and batched networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plasticity_rl.nn import build_mlp, build_runs
from plasticity_rl.nn.backprop import HandBackprop
from plasticity_rl.supervised.trainer import LOSSES, loss_and_gradient, run_losses


def _net(activation: str, runs: int | None) -> nn.Module:
    def build() -> nn.Module:
        return build_mlp(4, [6, 5], 3, activation, init="lecun_uniform")

    if runs is None:
        torch.manual_seed(0)
        return build()
    return build_runs(build, [torch.Generator().manual_seed(s) for s in range(runs)])


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu", "identity"])
@pytest.mark.parametrize("runs", [None, 3])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gradients_equal_autograd(activation: str, runs: int | None, loss: str):
    net = _net(activation, runs)
    batched = runs is not None
    lead = (runs, 7) if batched else (7,)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*lead, 4, generator=gen)
    y = torch.randn(*lead, 3, generator=gen) if loss == "mse" else torch.randint(3, lead)
    mask = torch.tensor([0.0, float("-inf"), 0.0]) if loss == "cross_entropy" else 0.0
    losses = run_losses(LOSSES[loss], net(x) + mask, y, batched)
    (losses.sum() if batched else losses).backward()
    expected = [p.grad.clone() for p in net.parameters()]
    backprop = HandBackprop(net)
    output, cache = backprop.forward(x)
    hand_losses, grad = loss_and_gradient(loss, output + mask, y, batched)
    torch.testing.assert_close(hand_losses, losses.detach())
    backprop.backward(cache, grad)
    for p, g in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_forward_hooks_see_a_training_forward_and_unsupported_models_are_named():
    net = _net("relu", None)
    seen = []
    net.hidden[1].register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    HandBackprop(net).forward(torch.randn(2, 4))
    assert seen == [True]
    for model in [
        build_mlp(4, [5], 2, "hard_ash"),  # no hand derivative: autograd
        build_mlp(4, [5], 2, powerprop_alpha=2.0),  # parametrized weight
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)),
    ]:
        assert not HandBackprop.supports(model)
        with pytest.raises(ValueError, match="does not support"):
            HandBackprop(model)
    assert HandBackprop.supports(nn.Sequential(nn.Flatten(), build_mlp(4, [5], 2)))
