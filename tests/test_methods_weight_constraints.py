"""Weight clipping and normalize-and-project's projection on cases worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plasticity_rl.methods import NormalizeAndProject, WeightClipping, make_method
from plasticity_rl.nn import build_mlp, build_runs
from plasticity_rl.nn.layers import init_bound, make_linear
from plasticity_rl.registry import ConfigError


def zero_step(model: nn.Module) -> torch.optim.Optimizer:
    """An optimiser that changes nothing itself (lr 0): only the post-step hooks act."""
    return torch.optim.SGD(model.parameters(), lr=0.0)


@pytest.mark.parametrize(
    ("init", "bound"),
    [("default", 0.5), ("lecun_uniform", math.sqrt(3 / 4)), ("kaiming_uniform", math.sqrt(6 / 4)),
     ("xavier_uniform", math.sqrt(6 / 6))],
)  # fmt: skip
def test_init_bound_is_the_bound_of_the_uniform_init_and_holds_at_init(init, bound):
    layer = make_linear(4, 2, init=init, init_scale=2.0)  # fan_in 4, fan_out 2
    assert init_bound(layer) == pytest.approx(2.0 * bound)
    big = make_linear(400, 300, init=init)
    b = init_bound(big)
    assert b is not None and 0.99 * b < big.weight.abs().max().item() <= b


@pytest.mark.parametrize(("bound", "limit"), [("init", 2 * math.sqrt(3 / 4)), ("fan_in", 1.0)])
def test_clipping_to_kappa_times_the_bound_after_each_step(bound, limit):
    # LeCun-uniform layer with fan_in 4: b = sqrt(3/4) (init) or 1/sqrt(4) (fan_in); kappa 2
    layer = make_linear(4, 2, init="lecun_uniform")
    optimizer = zero_step(layer)
    make_method("weight_clipping", kappa=2.0, bound=bound).attach(layer, optimizer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, -3.0, 0.5, 0.0], [-0.1, 0.2, 1.0, -1.0]]))
        layer.bias.copy_(torch.tensor([5.0, -0.3]))
    optimizer.step()
    expected = torch.tensor([[3.0, -3.0, 0.5, 0.0], [-0.1, 0.2, 1.0, -1.0]]).clamp(-limit, limit)
    torch.testing.assert_close(layer.weight.detach(), expected)
    torch.testing.assert_close(layer.bias.detach(), torch.tensor([limit, -0.3]))


def test_clipping_can_leave_the_output_layer_and_refuses_inits_without_a_bound():
    net = build_mlp(2, [3], 1)
    optimizer = zero_step(net)
    WeightClipping(kappa=0.1, output_layer=False).attach(net, optimizer)
    with torch.no_grad():
        net.output.weight.fill_(9.0), net.hidden[0].weight.fill_(9.0)
    optimizer.step()
    assert net.output.weight.max().item() == 9.0
    assert net.hidden[0].weight.max().item() == pytest.approx(0.1 / math.sqrt(2))
    orthogonal = build_mlp(2, [3], 1, init="orthogonal")
    allowed = "fan_in for a layer with init orthogonal"
    with pytest.raises(ConfigError, match=f"weight_clipping.bound: got 'init'; allowed: {allowed}"):
        WeightClipping().attach(orthogonal, zero_step(orthogonal))
    WeightClipping(bound="fan_in").attach(orthogonal, zero_step(orthogonal))
    powerprop = build_mlp(2, [3], 1, powerprop_alpha=2.0)
    with pytest.raises(ConfigError, match="method.weight_clipping: got 'a parametrized layer'"):
        WeightClipping().attach(powerprop, zero_step(powerprop))


def test_projection_restores_each_weight_matrix_to_its_norm_at_attach():
    # W(0) = [[3, 4]] (norm 5); after a step W = [[0, 10]] -> 5/10 * W = [[0, 5]]; bias untouched
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
    optimizer = zero_step(layer)
    method = NormalizeAndProject()
    method.attach(layer, optimizer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 10.0]]))
        layer.bias.fill_(7.0)
    optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[0.0, 5.0]]))
    assert layer.bias.item() == 7.0
    assert method.state_dict() == {"steps": 1, "norms": [torch.tensor(5.0)]}


def test_projection_of_batched_runs_uses_each_runs_own_norm():
    generators = [torch.Generator().manual_seed(s) for s in range(2)]
    batched = build_runs(lambda: build_mlp(3, [4], 2), generators)
    norms = [torch.linalg.matrix_norm(w.detach()) for w in (batched.hidden[0].weight,
                                                            batched.output.weight)]  # fmt: skip
    optimizer = zero_step(batched)
    method = NormalizeAndProject(output_layer=False)
    method.attach(batched, optimizer)
    with torch.no_grad():
        batched.hidden[0].weight[1].mul_(3.0)
        batched.output.weight.mul_(3.0)
    optimizer.step()
    torch.testing.assert_close(torch.linalg.matrix_norm(batched.hidden[0].weight.detach()),
                               norms[0])  # fmt: skip
    torch.testing.assert_close(torch.linalg.matrix_norm(batched.output.weight.detach()),
                               3.0 * norms[1])  # fmt: skip
    assert torch.equal(method.run_state_dict(1)["norms"][0], norms[0][1])
