"""Plasticity injection: the output is unchanged at injection, only the new copy learns, the
optimiser and the checkpoints see the grown network."""

from __future__ import annotations

import copy

import pytest
import torch
from stand_ins import assert_composes_and_resumes, train_steps
from torch import nn

from plasticity_rl.methods import PlasticityInjection, make_method
from plasticity_rl.nn import build_mlp, build_runs
from plasticity_rl.registry import ConfigError


def injected_net(at: list[int], weight_decay: float = 0.0):
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=weight_decay)
    method = PlasticityInjection(at_optimizer_steps=at)
    method.attach(net, optimizer)
    return net, optimizer, method


def test_the_output_is_unchanged_at_injection_and_the_copy_joins_the_optimizer():
    net, optimizer, method = injected_net([2], weight_decay=1e-3)
    train_steps(net, optimizer, 1)
    x = torch.randn(6, 3)
    before = net(x)
    train_steps(net, optimizer, 1)  # step 2: update, then inject
    head = net.output
    updated = copy.deepcopy(net)
    for name in ("injection1", "injection1_initial"):
        delattr(updated.output, name)
    # h(x) = h_theta(x) + h_theta'(x) - h_theta'_0(x) with theta' = theta'_0 at injection
    torch.testing.assert_close(net(x), updated(x), rtol=0, atol=1e-6)
    assert not torch.equal(net(x), before)  # (step 2's update did change it)
    assert not head.weight.requires_grad and not head.bias.requires_grad
    assert head.injection1.weight.requires_grad
    assert not head.injection1_initial.weight.requires_grad
    assert torch.equal(head.injection1.weight, head.injection1_initial.weight)
    group = optimizer.param_groups[-1]
    assert group["params"] == [head.injection1.weight, head.injection1.bias]
    assert group["lr"] == 0.1 and group["weight_decay"] == 1e-3
    assert "output.injection1.weight" in net.state_dict()
    assert method.stats() == {"plasticity_injection/injections": 1.0}


def test_only_the_new_copy_learns_with_the_gradient_the_head_had():
    net, optimizer, _ = injected_net([1])
    train_steps(net, optimizer, 1)  # step 1, then inject
    head, hidden = net.output, net.hidden
    frozen, start = head.weight.detach().clone(), head.injection1.weight.detach().clone()
    # the gradient of the output layer of the plain network h_theta(x) (no injection): since
    # d h / d theta' = d h_theta / d theta, the copy gets exactly this gradient
    plain = copy.deepcopy(net)
    for name in ("injection1", "injection1_initial"):
        delattr(plain.output, name)
    plain.output.weight.requires_grad_(True)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
    nn.functional.mse_loss(plain(x), y).backward()
    initial = head.injection1_initial.weight.detach().clone()
    optimizer.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()
    torch.testing.assert_close(head.injection1.weight - start, -0.1 * plain.output.weight.grad)
    assert torch.equal(head.weight, frozen)
    assert torch.equal(head.injection1_initial.weight, initial)
    # the layers below still learn, with the gradient they had: (W + W' - W'_0)^T g = W^T g
    torch.testing.assert_close(hidden[0].weight.grad, plain.hidden[0].weight.grad)


def test_a_second_injection_freezes_the_first_copy():
    net, optimizer, method = injected_net([1, 3])
    train_steps(net, optimizer, 3)
    head = net.output
    assert method.injections == 2 and not head.injection1.weight.requires_grad
    assert head.injection2.weight.requires_grad and len(optimizer.param_groups) == 3


def test_loading_the_state_grows_a_fresh_network_to_the_saved_one():
    net, optimizer, method = injected_net([2])
    train_steps(net, optimizer, 4)
    saved = copy.deepcopy((method.state_dict(), net.state_dict(), optimizer.state_dict()))
    twin, twin_optimizer, twin_method = injected_net([2])
    twin_method.load_state_dict(saved[0])  # first: grows the network and the optimiser
    twin.load_state_dict(saved[1])
    twin_optimizer.load_state_dict(saved[2])
    train_steps(net, optimizer, 2, seed=1)
    train_steps(twin, twin_optimizer, 2, seed=1)
    for p, q in zip(net.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert twin_method.state_dict() == {"steps": 6, "injections": 1}


def test_composes_with_unit_resets_and_l2_and_resumes():
    methods = assert_composes_and_resumes({"plasticity_injection": {"at_optimizer_steps": [5]}})
    assert methods[0].injections == 1


def test_batched_runs_are_refused():
    gens = [torch.Generator().manual_seed(s) for s in range(2)]
    net = build_runs(lambda: build_mlp(3, [4], 2), gens)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="method.plasticity_injection: got 'batched runs'"):
        PlasticityInjection().attach(net, optimizer)


@pytest.mark.parametrize("value", [[], [0], [5, 5], [3, 2], "5", [1.5]])
def test_bad_steps_are_config_errors(value: object):
    with pytest.raises(ConfigError, match="plasticity_injection.at_optimizer_steps: got"):
        make_method("plasticity_injection", at_optimizer_steps=value)
