"""EfficientPackNet: the sparsity search by hand, frozen weights, per-task evaluation, state."""

from __future__ import annotations

import pytest
import torch
from stand_ins import StandInTask, linear_with
from torch import nn

from plasticity_rl.methods import EfficientPackNet, make_method
from plasticity_rl.nn import build_mlp
from plasticity_rl.nn.layers import layer_parameter
from plasticity_rl.registry import ConfigError


def _separable_task() -> StandInTask:
    # Class = sign of x0: only the weights reading x0 matter.
    x = torch.tensor([[1.0, 0.3], [2.0, -0.5], [-1.0, 0.2], [-3.0, 0.4]])
    return StandInTask(x, torch.tensor([0, 0, 1, 1]), classes=[0, 1], active_classes=[0, 1])


def test_search_keeps_the_largest_sparsity_within_the_tolerance_and_redraws_the_rest():
    # Logits = W x with W = [[2, 0.1], [-2, -0.01]]; the free magnitudes are 0.01, 0.1, 2, 2.
    # Sparsity 0.75: the 3rd smallest magnitude is 2, every weight is pruned (all logits 0:
    # accuracy 50%); 0.5: threshold 0.1 (the 2nd), the weights on x1 go and accuracy stays 100%.
    layer = linear_with([[2.0, 0.1], [-2.0, -0.01]], [0.0, 0.0])
    method = EfficientPackNet(sparsities=[0.75, 0.5, 0.25], max_accuracy_drop=0.0)
    method.attach(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    torch.manual_seed(0)
    method.on_task_end(_separable_task(), layer)
    assert method.chosen_sparsities == [0.5]
    assert method.owners[0].tolist() == [[0, -1], [0, -1]]
    # the two pruned weights were redrawn (U(-1/sqrt 2, 1/sqrt 2), PyTorch's default scheme)
    redrawn = layer.weight[:, 1].detach()
    assert not torch.equal(redrawn, torch.tensor([0.1, -0.01]))
    assert redrawn.abs().max() <= 2**-0.5
    assert layer.weight[:, 0].tolist() == [2.0, -2.0]


def test_owned_weights_and_biases_stay_frozen_and_evaluation_masks_later_tasks():
    torch.manual_seed(0)
    net = build_mlp(2, [8], 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    method = make_method("efficient_packnet", sparsities=[0.5], max_accuracy_drop=100.0)
    method.attach(net, optimizer)
    task = _separable_task()
    method.on_task_end(task, net)  # task 0 owns half the weights
    owned = [layer_parameter(layer).detach().clone() for layer in method.layers]
    biases = [layer.bias.detach().clone() for layer in method.layers]
    for _ in range(20):  # train "task 1"
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(task.train_x), 1 - task.train_y).backward()
        optimizer.step()
    for layer, owner, before, bias in zip(method.layers, method.owners, owned, biases,
                                          strict=True):  # fmt: skip
        now = layer_parameter(layer).detach()
        assert torch.equal(now[owner == 0], before[owner == 0])
        assert not torch.equal(now[owner == -1], before[owner == -1])  # free weights learned
        assert torch.equal(layer.bias.detach(), bias)
    method.on_task_end(task, net)  # task 1 takes (half of) the rest
    full = net(task.train_x)
    with method.evaluating_task(0):
        masked = net(task.train_x)
        for layer, owner in zip(method.layers, method.owners, strict=True):
            assert (layer_parameter(layer)[owner != 0] == 0).all()
    assert torch.equal(net(task.train_x), full)  # restored after the block
    assert not torch.equal(masked, full)
    assert set(method.stats()) == {"packnet_free_fraction", "packnet_sparsity"}


def test_state_round_trip():
    torch.manual_seed(0)
    net = build_mlp(2, [4], 2)
    method = EfficientPackNet(sparsities=[0.5], max_accuracy_drop=100.0)
    method.attach(net, torch.optim.SGD(net.parameters(), lr=0.1))
    method.on_task_end(_separable_task(), net)
    other = EfficientPackNet(sparsities=[0.5], max_accuracy_drop=100.0)
    other.attach(net, torch.optim.SGD(net.parameters(), lr=0.1))
    other.load_state_dict(method.state_dict())
    assert other.tasks_done == 1 and other.chosen_sparsities == [0.5]
    for a, b in zip(method.owners, other.owners, strict=True):
        assert torch.equal(a, b)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="efficient_packnet.sparsities"):
        EfficientPackNet(sparsities=[1.0])
    with pytest.raises(ConfigError, match="efficient_packnet.max_accuracy_drop"):
        EfficientPackNet(max_accuracy_drop=-1)
