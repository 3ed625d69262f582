"""Parseval regularisation: the penalty and its gradient on a case worked by hand."""

from __future__ import annotations

import pytest
import torch

from plasticity_rl.methods import Parseval, make_method
from plasticity_rl.nn import build_mlp, build_runs
from plasticity_rl.registry import ConfigError

W = [[1.0, 2.0], [0.0, 1.0]]


def net_with_hidden_weight(weight: list[list[float]]) -> torch.nn.Module:
    net = build_mlp(2, [2], 1)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor(weight))
    return net


@pytest.mark.parametrize(("reference_width", "factor"), [(None, 1.0), (4, 4.0)])
def test_penalty_and_gradient_on_a_two_unit_layer(reference_width, factor):
    # W W^T = [[5, 2], [2, 1]]; minus s I (s = 1): G = [[4, 2], [2, 0]]; ||G||_F^2 = 24.
    # lambda = 0.5: R = 12 (times (w_ref / 2)^2 = 4 with w_ref = 4).
    # dR/dW = 4 lambda G W = 2 [[4, 10], [2, 4]] = [[8, 20], [4, 8]] (times the factor).
    # SGD lr 1 without a task gradient: W - dR/dW; the output layer gets no gradient.
    net = net_with_hidden_weight(W)
    output = net.output.weight.detach().clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    method = Parseval(coefficient=0.5, scale=1.0, reference_width=reference_width)
    method.attach(net, optimizer)
    assert method.stats()["parseval/penalty"] == pytest.approx(12.0 * factor)
    optimizer.step()
    expected = torch.tensor(W) - factor * torch.tensor([[8.0, 20.0], [4.0, 8.0]])
    torch.testing.assert_close(net.hidden[0].weight.detach(), expected)
    assert torch.equal(net.output.weight, output) and net.hidden[0].bias.grad is None


def test_an_orthogonal_weight_with_the_matching_scale_feels_no_penalty():
    # rows orthogonal with squared norm 2: W W^T = 2 I, the default target
    net = net_with_hidden_weight([[1.0, 1.0], [1.0, -1.0]])
    method = make_method("parseval")
    method.attach(net, torch.optim.SGD(net.parameters(), lr=1.0))
    assert method.stats()["parseval/penalty"] == 0.0


def test_batched_runs_sum_their_own_penalties():
    generators = [torch.Generator().manual_seed(s) for s in range(2)]
    batched = build_runs(lambda: build_mlp(3, [4, 4], 2), generators)
    singles = [build_mlp(3, [4, 4], 2) for _ in range(2)]
    total = 0.0
    for s, single in enumerate(singles):
        single.load_state_dict({k: v[s] for k, v in batched.state_dict().items()})
        method = Parseval()
        method.attach(single, torch.optim.SGD(single.parameters(), lr=1.0))
        total += method.stats()["parseval/penalty"]
    method = Parseval()
    method.attach(batched, torch.optim.SGD(batched.parameters(), lr=1.0))
    assert method.stats()["parseval/penalty"] == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize(("key", "value"), [("scale", 0), ("coefficient", -1),
                                            ("reference_width", 0)])  # fmt: skip
def test_bad_options_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"parseval.{key}: got {value}"):
        make_method("parseval", **{key: value})
