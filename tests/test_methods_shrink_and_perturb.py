"""Shrink and perturb: the update formula, its schedule, and the no-op case."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from plasticity_rl.methods import ShrinkAndPerturb
from plasticity_rl.nn import build_mlp, layer_parameter, sample_weight


def _step(net: nn.Module, optimizer: torch.optim.Optimizer, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)
    optimizer.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("noise", ["gaussian", "init"])
def test_one_step_shrinks_the_sgd_result_and_adds_scaled_noise(noise: str):
    # p <- 0.9 p_sgd + 0.01 n, with n drawn after the step from the global RNG, layer by layer
    # (weight: N(0, 1) or a fresh init draw; bias: N(0, 1)).
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2)
    plain = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    ShrinkAndPerturb(shrink=0.1, noise_std=0.01, noise=noise).attach(net, optimizer)
    _step(plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    torch.manual_seed(7)
    _step(net, optimizer)

    torch.manual_seed(7)
    for layer, plain_layer in [
        (net.hidden[0], plain.hidden[0]),
        (net.hidden[2], plain.hidden[2]),
        (net.output, plain.output),
    ]:
        weight_noise = (
            torch.randn(layer.weight.shape) if noise == "gaussian" else sample_weight(layer)
        )
        bias_noise = torch.randn(layer.bias.shape)
        assert torch.allclose(
            layer.weight, 0.9 * plain_layer.weight + 0.01 * weight_noise, atol=1e-7
        )
        assert torch.allclose(layer.bias, 0.9 * plain_layer.bias + 0.01 * bias_noise, atol=1e-7)


def test_zero_shrink_and_noise_is_bit_identical_to_no_method():
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2)
    plain = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    ShrinkAndPerturb(shrink=0.0, noise_std=0.0).attach(net, optimizer)
    rng = torch.get_rng_state()
    for seed in range(5):
        _step(net, optimizer, seed)
        _step(plain, plain_optimizer, seed)
    assert torch.equal(torch.get_rng_state(), rng)  # no noise drawn either
    for p, q in zip(net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_acts_every_n_optimizer_steps_on_stored_trainable_parameters():
    # lr = 0, shrink 0.5, no noise, every 3 steps: p = p0 after steps 1-2, 0.5 p0 after step 3,
    # 0.25 p0 after step 6. Powerprop layers shrink the stored v (not w = v |v|); the frozen
    # output bias is left alone.
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2, powerprop_alpha=2.0)
    net.output.bias.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0)
    ShrinkAndPerturb(shrink=0.5, noise_std=0.0, every_optimizer_steps=3).attach(net, optimizer)
    v0 = layer_parameter(net.hidden[0]).detach().clone()
    b0, frozen = net.hidden[0].bias.detach().clone(), net.output.bias.detach().clone()
    factors = []
    for _ in range(6):
        _step(net, optimizer)
        factors.append((layer_parameter(net.hidden[0]) / v0).mean().item())
    assert factors == pytest.approx([1, 1, 0.5, 0.5, 0.5, 0.25])
    assert torch.allclose(net.hidden[0].bias, 0.25 * b0)
    assert torch.equal(net.output.bias, frozen)
