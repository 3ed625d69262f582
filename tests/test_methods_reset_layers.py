"""Reset layers: which layers are re-initialised, when, and with what optimiser state."""

from __future__ import annotations

import copy

import pytest
import torch
from stand_ins import assert_composes_and_resumes, train_steps

from plasticity_rl.methods import ResetLayers, make_method
from plasticity_rl.nn import build_mlp
from plasticity_rl.registry import ConfigError


def test_the_output_layer_gets_a_fresh_default_init_draw_every_period():
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)  # output layer: fan_in 4
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    ResetLayers(every_optimizer_steps=2).attach(net, optimizer)
    before = copy.deepcopy(net)
    train_steps(net, optimizer, 1)
    unchanged = zip(net.parameters(), before.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in unchanged)
    torch.manual_seed(5)
    train_steps(net, optimizer, 1)  # step 2: reset
    # torch's nn.Linear init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = U(-0.5, 0.5),
    # drawn weight first, from the global RNG
    torch.manual_seed(5)
    weight = torch.empty(2, 4).uniform_(-0.5, 0.5)
    bias = torch.empty(2).uniform_(-0.5, 0.5)
    assert torch.equal(net.output.weight, weight) and torch.equal(net.output.bias, bias)
    assert torch.equal(net.hidden[0].weight, before.hidden[0].weight)


def test_last_layers_of_each_network_and_their_moments_are_reset():
    torch.manual_seed(0)
    nets = {"pi": build_mlp(3, [4, 4], 2), "vf": build_mlp(3, [4, 4], 1, init="lecun_uniform")}
    params = [p for net in nets.values() for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.01)
    method = ResetLayers(last_layers=2, every_optimizer_steps=3)
    method.attach(nets, optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        sum(net(torch.randn(5, 3)).square().sum() for net in nets.values()).backward()
        optimizer.step()
    assert method.stats() == {"reset_layers/resets": 1.0}
    for net in nets.values():
        first, second = net.hidden[0], net.hidden[2]
        assert optimizer.state[first.weight]["exp_avg"].abs().sum() > 0  # kept
        for layer in (second, net.output):
            assert optimizer.state[layer.weight]["exp_avg"].abs().sum() == 0
            assert optimizer.state[layer.bias]["exp_avg_sq"].abs().sum() == 0
    assert torch.all(nets["vf"].output.bias == 0)  # lecun_uniform: biases start at 0


def test_composes_with_unit_resets_and_l2_and_resumes():
    methods = assert_composes_and_resumes({"reset_layers": {"every_optimizer_steps": 5}})
    assert methods[0].state_dict() == {"steps": 24}


@pytest.mark.parametrize(
    "key, value",
    [("last_layers", 0), ("every_optimizer_steps", 0), ("optimizer_state", "zero")],
)
def test_bad_values_are_config_errors(key: str, value: object):
    with pytest.raises(ConfigError, match=f"reset_layers.{key}: got"):
        make_method("reset_layers", **{key: value})


def test_at_task_starts_the_head_is_set_to_zero_and_momentum_kept():
    # Dohare et al.'s Continual ImageNet: the output layer times 0 before every task
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    reset = make_method("reset_layers", every_optimizer_steps=None, at_task_starts=True,
                        values="zero", optimizer_state="keep")  # fmt: skip
    reset.attach(net, optimizer)
    assert reset.uses_task_boundaries
    hidden = net.hidden[0].weight.detach().clone()
    train_steps(net, optimizer, 3)  # no reset by steps
    assert net.output.weight.abs().sum() > 0
    momentum = optimizer.state[net.output.weight]["momentum_buffer"].clone()
    reset.on_task_start(None, net)
    assert torch.all(net.output.weight == 0) and torch.all(net.output.bias == 0)
    assert torch.equal(optimizer.state[net.output.weight]["momentum_buffer"], momentum)
    assert not torch.equal(net.hidden[0].weight, hidden)  # trained, not reset
    assert reset.stats() == {"reset_layers/resets": 1.0}
    with pytest.raises(ConfigError, match="reset_layers.values: got 'ones'"):
        make_method("reset_layers", values="ones")
