"""ReDo: which units are reset, and when."""

from __future__ import annotations

import copy

import pytest
import torch
from stand_ins import assert_composes_and_resumes
from test_batched import assert_batched_resume_is_exact, assert_same_runs, config, regression_config
from torch import nn

from plasticity_rl.methods import ReDo, ReGraMa
from plasticity_rl.nn import build_mlp
from plasticity_rl.registry import ConfigError

CONSTANT_ACTIVATIONS = [0.0, 0.05, 1.0, 2.0]


def _net_with_constant_units() -> nn.Module:
    """3 -> 4 -> 2 whose hidden units output the constants above (rows 0, biases = constants)."""
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    with torch.no_grad():
        net.hidden[0].weight.zero_()
        net.hidden[0].bias.copy_(torch.tensor(CONSTANT_ACTIVATIONS))
    return net


def _step(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x, y = torch.rand(8, 3), torch.randn(8, 2)
    optimizer.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize(
    "tau, expected",
    [
        # mean|h| = [0, 0.05, 1, 2], layer mean 3.05 / 4 = 0.7625,
        # s = [0, 0.0656, 1.311, 2.623]: s <= 0.1 for units 0 and 1
        (0.1, [0, 1]),
        # tau = 0: only the exactly-zero unit (s = 0 <= 0)
        (0.0, [0]),
    ],
)
def test_resets_exactly_the_dormant_units_every_period(tau: float, expected: list[int]):
    net = _net_with_constant_units()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    redo = ReDo(tau=tau, period=3)
    redo.attach(net, optimizer)
    old = copy.deepcopy(net)
    for _ in range(2):  # steps 1 and 2: nothing happens
        _step(net, optimizer)
        assert redo.stats() == {"hidden1/resets": 0.0}
    for p, q in zip(net.parameters(), old.parameters(), strict=True):
        assert torch.equal(p, q)
    _step(net, optimizer)  # step 3
    assert redo.stats() == {"hidden1/resets": float(len(expected))}
    reset = (net.hidden[0].weight != 0).any(dim=1)  # fresh rows replace the zero rows
    assert torch.nonzero(reset).flatten().tolist() == expected
    kept = [j for j in range(4) if j not in expected]
    assert torch.all(net.hidden[0].bias[expected] == 0)
    assert torch.equal(net.hidden[0].bias[kept], old.hidden[0].bias[kept])
    assert torch.all(net.output.weight[:, expected] == 0)
    assert torch.equal(net.output.weight[:, kept], old.output.weight[:, kept])
    assert torch.equal(net.output.bias, old.output.bias)  # ReDo does no bias correction


def test_a_crelu_unit_is_scored_on_its_two_features_together():
    # pre-activations z = (0, 0.05, -1, 2): CReLU features relu(z) = (0, 0.05, 0, 2) and
    # relu(-z) = (0, 0, 1, 0); unit activity |z| = (0, 0.05, 1, 2), layer mean 0.7625,
    # s = (0, 0.066, 1.31, 2.62): units 0 and 1 are dormant at tau = 0.1 -- unit 2, whose
    # relu(z) feature is zero, is not
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2, "crelu")
    with torch.no_grad():
        net.hidden[0].weight.zero_()
        net.hidden[0].bias.copy_(torch.tensor([0.0, 0.05, -1.0, 2.0]))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    redo = ReDo(tau=0.1, period=1)
    redo.attach(net, optimizer)
    old = copy.deepcopy(net)
    _step(net, optimizer)
    assert redo.stats() == {"hidden1/resets": 2.0}
    assert (net.hidden[0].weight != 0).any(dim=1).tolist() == [True, True, False, False]
    assert torch.all(net.output.weight[:, [0, 1, 4, 5]] == 0)  # both features of units 0, 1
    assert torch.equal(net.output.weight[:, [2, 3, 6, 7]], old.output.weight[:, [2, 3, 6, 7]])


@pytest.mark.parametrize(("score_over", "resets"), [("batch", 1), ("period", 0)])
def test_period_scores_average_the_examples_since_the_last_check(score_over, resets):
    # Hidden ReLU units W = [[1, 0], [0, 1], [1, -1]], no bias: x1 = (1, 0) gives h = (1, 0, 1),
    # x2 = (1, 2) gives h = (1, 2, 0). Batch: at step 2, s = (1, 2, 0) / 1 -> unit 2 dormant.
    # Period: sums (2, 2, 1), mean 5/3, s = (1.2, 1.2, 0.6) -> none at tau 0.1.
    net = build_mlp(2, [3], 1)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        net.hidden[0].bias.zero_()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    redo = ReDo(tau=0.1, period=2, score_over=score_over)
    redo.attach(net, optimizer)
    for x in ([[1.0, 0.0]], [[1.0, 2.0]]):
        optimizer.zero_grad()
        net(torch.tensor(x)).sum().backward()
        optimizer.step()
        if len(redo.sums):
            assert redo.state_dict()["sums"]["hidden1"].tolist() == [1.0, 0.0, 1.0]
    assert redo.stats() == {"hidden1/resets": float(resets)} and redo.sums == {}
    with pytest.raises(ConfigError, match=r"redo.score_over: got 'steps'; allowed: "):
        ReDo(score_over="steps")


def test_period_sums_resume_exactly():  # saved mid-period, with sums
    spec = {"tau": 0.3, "period": 3, "score_over": "period"}
    assert_composes_and_resumes({"redo": spec}, steps=13)
    assert_composes_and_resumes({"regrama": spec}, steps=13)


@pytest.mark.parametrize("name", ["redo", "regrama"])
def test_period_scores_in_batched_runs_equal_single_runs_and_resume(name, tmp_path, mnist_dir):
    spec = {name: {"tau": 0.5, "period": 7, "score_over": "period"}}
    short = {"kwargs": {"total_examples": 200, "bin_size": 100}}
    (tmp_path / "same").mkdir()
    assert_same_runs(regression_config(method=spec, stream=short), tmp_path / "same")
    cfg = config("permuted-mnist", "bp", data_dir=str(mnist_dir), method=spec,
                 network={"hidden_sizes": [8]}, train={"batch_size": 16},
                 stream={"kwargs": {"num_tasks": 2}})  # fmt: skip
    (tmp_path / "resume").mkdir()
    assert_batched_resume_is_exact(cfg, tmp_path / "resume")


def test_step_count_is_restored_from_the_state_dict():
    # Two of three steps done before saving: the resumed method resets at its first step.
    net = _net_with_constant_units()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    redo = ReDo(period=3)
    redo.attach(net, optimizer)
    for _ in range(2):
        _step(net, optimizer)
    state = redo.state_dict()
    assert state == {"counts": {"hidden1": 0.0}, "steps": 2, "sums": {}}

    resumed = ReDo(period=3)
    twin = copy.deepcopy(net)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.0)
    resumed.attach(twin, twin_optimizer)
    resumed.load_state_dict(state)
    _step(twin, twin_optimizer)
    assert resumed.stats() == {"hidden1/resets": 2.0}


def test_regrama_resets_the_units_whose_incoming_gradient_is_small():
    # 3 -> 4 -> 2, all hidden units active (bias 1, small weights); the outgoing columns
    # scale how much gradient reaches each unit: column 0 zero (no gradient at all), column 1
    # tiny, columns 2 and 3 ordinary.
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    with torch.no_grad():
        net.hidden[0].weight.mul_(0.01)
        net.hidden[0].bias.fill_(1.0)
        net.output.weight.copy_(torch.tensor([[0.0, 1e-3, 1.0, -1.0], [0.0, 1e-3, 0.5, 2.0]]))
    x, y = torch.rand(8, 3), torch.randn(8, 2)
    # the GraMa score from its formula, on autograd's gradient of the incoming weight
    probe = copy.deepcopy(net)
    nn.functional.mse_loss(probe(x), y).backward()
    row_magnitude = probe.hidden[0].weight.grad.abs().mean(dim=1)
    score = row_magnitude / row_magnitude.mean()
    expected = torch.nonzero(score <= 0.1).flatten().tolist()
    assert expected == [0, 1]

    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    regrama = ReGraMa(tau=0.1, period=1)
    regrama.attach(net, optimizer)
    optimizer.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()
    assert regrama.stats() == {"hidden1/grama_resets": 2.0}
    assert torch.all(net.output.weight[:, expected] == 0)
    assert torch.all(net.hidden[0].bias[expected] == 0) and torch.all(net.hidden[0].bias[2:] == 1)


def test_regrama_names_its_own_keys_and_asks_for_autograd():
    with pytest.raises(ConfigError, match="regrama.tau: got -1"):
        ReGraMa(tau=-1)
    assert ReGraMa.needs_autograd and not ReDo.needs_autograd


def test_regrama_composes_with_unit_resets_and_l2_and_resumes():
    methods = assert_composes_and_resumes({"regrama": {"tau": 0.3, "period": 3}})
    assert methods[0].state_dict()["steps"] == 24
