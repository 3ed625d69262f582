"""C-CHAIN: the churn penalty's gradient on a case worked by hand, and its reference batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plasticity_rl.methods import CChain, make_method
from plasticity_rl.nn import build_mlp
from plasticity_rl.registry import ConfigError

X = torch.tensor([[1.0, 0.0], [0.0, 2.0]])


def training_step(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A training forward on X (records the reference batch) with a zero task gradient."""
    optimizer.zero_grad()
    (0.0 * net(X).sum()).backward()
    optimizer.step()


def set_weight(net: nn.Linear, values: list[float]) -> None:
    with torch.no_grad():
        net.weight.copy_(torch.tensor([values]))


def test_third_step_penalises_the_churn_of_the_second_on_the_reference_batch():
    # f(x) = W x. Before step 2 W = W_b = [0, 0]; before step 3 W = W_c = [1, 1].
    # Step 3: f now on X = [1, 2], before (W_b) = [0, 0]: churn = mean(1, 4) = 2.5,
    # R = lambda * 2.5; dR/dW = lambda * 2/2 * (1 * [1, 0] + 2 * [0, 2]) = lambda * [1, 4].
    # lambda = 0.1, SGD lr 1: W <- [1, 1] - [0.1, 0.4]. Steps 1 and 2 are not penalised.
    net = nn.Linear(2, 1, bias=False)
    set_weight(net, [5.0, -5.0])
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    method = CChain(coefficient=0.1)
    method.attach(net, optimizer)
    training_step(net, optimizer)
    set_weight(net, [0.0, 0.0])
    training_step(net, optimizer)
    assert net.weight.flatten().tolist() == [0.0, 0.0]  # W_a -> W_b churn: not penalised
    set_weight(net, [1.0, 1.0])
    assert method.stats()["c_chain/penalty"] == pytest.approx(0.25)
    training_step(net, optimizer)
    assert net.weight.flatten().tolist() == pytest.approx([0.9, 0.6])
    assert method.state_dict()["steps"] == 3


def test_the_coefficient_adapts_to_the_loss_over_a_window_of_losses_and_churns():
    # Steps 1-3 as above (lambda 0.1); the losses given after steps 1, 2, 3 are -4, 2, 1 and
    # the churns then 0, 0, 2.5. The third loss starts the adaptation; the window of 2 holds
    # losses (1, 2) and churns (2.5, 0): lambda = 0.5 * mean(1, 2) / (mean(2.5, 0) + 1e-8) = 0.6.
    # Step 4 at W = [0.9, 0.6] against W before step 3, [1, 1]: outputs [0.9, 1.2] vs [1, 2],
    # dR/dW = 0.6 * ((-0.1) [1, 0] + (-0.8) [0, 2]) = [-0.06, -0.96]; SGD lr 1: [0.96, 1.56].
    net = nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    method = CChain(coefficient=0.1, target_relative_loss_scale=0.5, adapt_from_losses=3,
                    loss_window=2)  # fmt: skip
    method.attach(net, optimizer)
    for weight, loss in [([5.0, -5.0], -4.0), ([0.0, 0.0], 2.0), ([1.0, 1.0], 1.0)]:
        set_weight(net, weight)
        training_step(net, optimizer)
        method.on_training_loss(torch.tensor(loss))
        if loss != 1.0:
            assert method.stats()["c_chain/coefficient"] == pytest.approx(0.1)
    assert net.weight.flatten().tolist() == pytest.approx([0.9, 0.6])
    assert method.stats()["c_chain/coefficient"] == pytest.approx(0.6)
    training_step(net, optimizer)
    assert net.weight.flatten().tolist() == pytest.approx([0.96, 1.56])


def test_without_a_target_the_coefficient_stays_fixed():
    net = nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    method = CChain(coefficient=0.1, target_relative_loss_scale=None, adapt_from_losses=1)
    method.attach(net, optimizer)
    for _ in range(4):
        training_step(net, optimizer)
        method.on_training_loss(torch.tensor(3.0))
    assert method.stats()["c_chain/coefficient"] == pytest.approx(0.1)
    assert method.losses_seen == 0 and not method.adaptation["loss_window"].any()
    with pytest.raises(ConfigError, match=r"c_chain.target_relative_loss_scale: got 0; "
                                          r"allowed: null or a number > 0"):  # fmt: skip
        make_method("c_chain", target_relative_loss_scale=0)


def test_only_training_forwards_set_the_reference_batch():
    net = nn.Linear(2, 1, bias=False)
    set_weight(net, [0.0, 0.0])
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    method = CChain(coefficient=1.0)
    method.attach(net, optimizer)
    for _ in range(2):
        training_step(net, optimizer)
    set_weight(net, [1.0, 1.0])
    with torch.no_grad():  # a rollout
        net(torch.full((3, 2), 7.0))
    net.eval()
    net(torch.full((3, 2), 7.0))  # an evaluation pass with grad
    net.train()
    # still the churn on X: outputs [1, 2] vs the remembered W = 0: mean(1, 4)
    assert method.stats()["c_chain/penalty"] == pytest.approx(2.5)


def test_only_the_named_networks_are_penalised():
    torch.manual_seed(0)
    nets = {"pi": build_mlp(2, [3], 1), "vf": build_mlp(2, [3], 1)}
    params = [p for net in nets.values() for p in net.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    method = make_method("c_chain", networks=["pi"])
    method.attach(nets, optimizer)
    assert {id(p) for p in method.params} == {id(p) for p in nets["pi"].parameters()}
    for _ in range(3):
        optimizer.zero_grad()
        # as SB3 calls them: hidden part, then the head
        out = nets["pi"].output(nets["pi"].hidden(X)) + nets["vf"].output(nets["vf"].hidden(X))
        out.sum().backward()
        optimizer.step()
    assert method.stats()["c_chain/penalty"] > 0
    with pytest.raises(ConfigError, match=r"c_chain.networks: got \['q'\]; allowed: null or "
                                          r"names among \['pi', 'vf'\]"):  # fmt: skip
        make_method("c_chain", networks=["q"]).attach(nets, optimizer)
