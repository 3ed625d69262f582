"""L2 Init: the penalty and its gradient on a case worked by hand, state, and refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from plasticity_rl.methods import L2Init, make_method
from plasticity_rl.nn import build_mlp, build_runs
from plasticity_rl.optim.runs import make_run_optimizer
from plasticity_rl.registry import ConfigError


def test_one_step_pulls_every_parameter_toward_its_value_at_attach():
    # theta_0 = (w: [1, -1], b: 0); moved to (w: [2, 0], b: 1). lambda = 0.25:
    # R = 0.25 * (1 + 1 + 1) = 0.75, dR/dtheta = 2 * 0.25 * (theta - theta_0) = 0.5 * [1, 1 | 1].
    # Task gradient g = (w: [1, 2], b: 3); SGD lr 0.5: theta - 0.5 (g + dR).
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0]]))
        layer.bias.zero_()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    method = make_method("l2_init", coefficient=0.25)
    method.attach(layer, optimizer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, 0.0]]))
        layer.bias.fill_(1.0)
    assert method.stats() == {"l2_init/penalty": pytest.approx(0.75)}
    layer.weight.grad = torch.tensor([[1.0, 2.0]])
    layer.bias.grad = torch.tensor([3.0])
    optimizer.step()
    assert layer.weight.flatten().tolist() == pytest.approx([2.0 - 0.5 * 1.5, 0.0 - 0.5 * 2.5])
    assert layer.bias.tolist() == pytest.approx([1.0 - 0.5 * 3.5])


def test_without_a_task_gradient_the_penalty_gradient_alone_steps():
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(0.0), layer.bias.fill_(0.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    L2Init(coefficient=0.1).attach(layer, optimizer)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    optimizer.step()  # no .grad: w <- 2 - 2 * 0.1 * 2 = 1.6, b stays 0
    assert layer.weight.item() == pytest.approx(1.6) and layer.bias.item() == 0.0


def test_zero_coefficient_is_bit_identical_and_the_state_round_trips():
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    plain = copy.deepcopy(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=0.1)
    method = L2Init(coefficient=0.0)
    method.attach(net, optimizer)
    x = torch.randn(5, 3)
    for model, opt in ((net, optimizer), (plain, plain_optimizer)):
        for _ in range(3):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), plain.parameters(), strict=True))
    fresh = L2Init(coefficient=0.0)
    fresh.attach(copy.deepcopy(net), torch.optim.SGD(net.parameters(), lr=0.1))
    fresh.load_state_dict(method.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.anchor, method.anchor, strict=True))


def test_batched_runs_keep_each_runs_anchor_and_refuse_per_run_learning_rates():
    generators = [torch.Generator().manual_seed(s) for s in range(3)]
    batched = build_runs(lambda: build_mlp(3, [4], 2), generators)
    optimizer = torch.optim.SGD(batched.parameters(), lr=0.1)
    method = L2Init()
    method.attach(batched, optimizer)
    first = next(batched.parameters())
    assert method.run_state_dict(1)["anchor"][0].shape == first.shape[1:]
    assert torch.equal(method.run_state_dict(1)["anchor"][0], first[1])
    stacked = L2Init()
    stacked.attach(batched, optimizer)
    stacked.load_run_state_dicts([method.run_state_dict(s) for s in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(stacked.anchor, method.anchor, strict=True))
    per_run = make_run_optimizer(batched, {"name": "sgd", "lr": 0.1}, 3, [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match=r"optimizer\.lr: got \[0\.1, 0\.2, 0\.3\].*l2_init"):
        L2Init().attach(batched, per_run)


def test_bad_coefficient_is_a_config_error():
    with pytest.raises(ConfigError, match="l2_init.coefficient: got -1"):
        make_method("l2_init", coefficient=-1)
