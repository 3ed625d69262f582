"""Continual backprop: utility, maturity, accumulation, replacement, state."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from plasticity_rl.methods import ContinualBackprop
from plasticity_rl.nn import build_mlp
from plasticity_rl.optim.adam import Adam
from plasticity_rl.registry import ConfigError


def _batch(seed: int = 0, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=gen), torch.randn(n, 2, generator=gen)


def _step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    optimizer.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()


def _replacements_per_step(
    cbp: ContinualBackprop, net: nn.Module, optimizer: torch.optim.Optimizer, steps: int
) -> list[dict[str, float]]:
    x, y = _batch()
    out = []
    for _ in range(steps):
        _step(net, optimizer, x, y)
        out.append(cbp.stats())
    return out


def _attached(widths: list[int], lr: float = 0.0, **cbp_kwargs) -> tuple:
    torch.manual_seed(0)
    net = build_mlp(3, widths, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    cbp = ContinualBackprop(**cbp_kwargs)
    cbp.attach(net, optimizer)
    return net, optimizer, cbp


@pytest.mark.parametrize("outgoing, magnitude", [("sum", [4.0, 2.5]), ("mean", [2.0, 1.25])])
def test_utility_and_mean_activation_by_hand(outgoing: str, magnitude: list[float]):
    # W_in = I, b = 0, x = [[1, 2], [3, -4]] -> h = relu(x) = [[1, 2], [3, 0]],
    # mean_i |h_ij| = [2, 1], mean_i h_ij = [2, 1].
    # W_out = [[1, -2], [3, 0.5]]: sum_k |w_kj| = [4, 2.5], mean_k |w_kj| = [2, 1.25].
    # After one step (lr = 0, eta = 0.99): u = 0.01 * [2, 1] * magnitude, f = 0.01 * [2, 1];
    # after two: u = (1 - 0.99^2) * [2, 1] * magnitude = 0.0199 * ..., age = 2.
    net = build_mlp(2, [2], 2)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.eye(2))
        net.hidden[0].bias.zero_()
        net.output.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop(outgoing=outgoing, replacement_rate=0.0)
    cbp.attach(net, optimizer)
    x, y = torch.tensor([[1.0, 2.0], [3.0, -4.0]]), torch.zeros(2, 2)
    stats = cbp.statistics["hidden1"]
    contribution = torch.tensor([2.0, 1.0]) * torch.tensor(magnitude)
    _step(net, optimizer, x, y)
    assert torch.allclose(stats.utility, 0.01 * contribution)
    assert torch.allclose(stats.mean_activation, torch.tensor([0.02, 0.01]))
    _step(net, optimizer, x, y)
    assert torch.allclose(stats.utility, 0.0199 * contribution)
    assert stats.age.tolist() == [2, 2]


@pytest.mark.parametrize("outgoing, expected", [("sum", [1.0, 2.0]), ("mean", [2.0, 4.0])])
def test_adaptable_contribution_by_hand(outgoing: str, expected: list[float]):
    # W_in = [[1, 0], [0, 2]], b = 0, x = [[1, 2], [3, -4]] -> h = relu(x W_in^T)
    # = [[1, 4], [3, 0]].
    # After one step (lr = 0, eta = 0.99, age 1): f = 0.01 * mean_i h = [0.02, 0.02], and the
    # bias-corrected f^ = f / (1 - 0.99) = [2, 2]; mean_i |h - f^| = [1, 2].
    # W_out = [[1, -2]]: sum = mean over the one output = [1, 2]; W_in rows: sum [1, 2],
    # mean [0.5, 1]. y = [1, 2] * [1, 2] / [1, 2] = [1, 2] (sum) or / [0.5, 1] = [2, 4] (mean);
    # u = 0.01 y.
    net = build_mlp(2, [2], 1)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        net.hidden[0].bias.zero_()
        net.output.weight.copy_(torch.tensor([[1.0, -2.0]]))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop(outgoing=outgoing, utility="adaptable_contribution",
                            replacement_rate=0.0)  # fmt: skip
    cbp.attach(net, optimizer)
    _step(net, optimizer, torch.tensor([[1.0, 2.0], [3.0, -4.0]]), torch.zeros(2, 1))
    stats = cbp.statistics["hidden1"]
    assert torch.allclose(stats.mean_activation, torch.tensor([0.02, 0.02]))
    assert torch.allclose(stats.utility, 0.01 * torch.tensor(expected))


@pytest.mark.parametrize(
    "rate, accumulate, low, high",
    [
        # 4 eligible units (maturity 0), 2,000 steps. rho n = 0.2: one unit with probability 0.2
        # (400 expected, sd 18) or exactly every fifth step when accumulated.
        (0.05, False, 330, 470),
        (0.05, True, 400, 400),
        # rho n = 1.2 >= 1: floor(1.2) = 1 every step, the fraction dropped (the reference's
        # accumulate=False); accumulated: 1.2 per step on average.
        (0.3, False, 2000, 2000),
        (0.3, True, 2399, 2400),  # 1.2 is not exact in binary: the last one may be 0.999...
    ],
)
def test_probabilistic_and_accumulated_replacement_counts(rate, accumulate, low, high):
    torch.manual_seed(0)
    net, optimizer, cbp = _attached([4], replacement_rate=rate, maturity_threshold=0,
                                    accumulate=accumulate)  # fmt: skip
    x, y = _batch()
    for _ in range(2000):
        _step(net, optimizer, x, y)
    assert low <= cbp.stats()["hidden1/replacements"] <= high


def test_utility_uses_the_outgoing_weights_after_the_step():
    # lr > 0: h is from the forward before the step, w_out is the next layer's weight after it
    net, optimizer, cbp = _attached([4, 4], lr=0.1, replacement_rate=0.0)
    x, y = _batch()
    with torch.no_grad():
        h1 = net.hidden[:2](x)
        h2 = net.hidden[:4](x)
    _step(net, optimizer, x, y)
    for name, h, w_out in [
        ("hidden1", h1, net.hidden[2].weight),
        ("hidden2", h2, net.output.weight),
    ]:
        expected = 0.01 * h.abs().mean(0) * w_out.detach().abs().sum(0)
        assert torch.allclose(cbp.statistics[name].utility, expected, atol=1e-7)


def test_no_unit_younger_than_the_maturity_threshold_is_replaced():
    # m = 5, rho = 1: ages reach 6 > 5 at step 6, when all 4 units of each layer are replaced
    # (acc = 1 * 4); the new units are age 0 and mature again at step 12.
    net, optimizer, cbp = _attached([4, 4], lr=0.01, replacement_rate=1.0, maturity_threshold=5)
    counts = [s["hidden1/replacements"] for s in _replacements_per_step(cbp, net, optimizer, 12)]
    assert counts == [0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 4]


@pytest.mark.parametrize(
    "rate, expected",
    [
        # m = 0: all 4 units are eligible at every step (replaced ones are age 1 again).
        # rho = 0.25: acc = 1.0 each step -> one replacement per step.
        (0.25, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
        # rho = 0.1: acc 0.4, 0.8, 1.2 -> 1 (0.2), 0.6, 1.0 -> 1 (0.0), 0.4, 0.8, 1.2 -> 1, 0.6, 1.0
        # -> replacements at steps 3, 5, 8, 10.
        (0.1, [0, 0, 1, 0, 1, 0, 0, 1, 0, 1]),
    ],
)
def test_fractional_replacements_accumulate(rate: float, expected: list[int]):
    net, optimizer, cbp = _attached([4, 4], lr=0.01, replacement_rate=rate, maturity_threshold=0)
    stats = _replacements_per_step(cbp, net, optimizer, 10)
    assert [s["hidden1/replacements"] for s in stats] == expected
    assert [s["hidden2/replacements"] for s in stats] == expected


def _single_hidden_net_with_unit(kind: str, j: int = 2) -> nn.Module:
    """3 -> 4 -> 2; unit j is dead or constant, the others are large and active.

    Inputs are in (0, 1). Other units: row [1, 1, 1], bias 1 -> h = 1 + sum(x) > 1. Unit j:
    row 0 and bias -1 (dead, h = 0) or bias 0.5 (constant, h = 0.5). Outgoing weights
    +-0.5, so sum_k |w_kj| = 1 for every unit: unit j has the lowest utility.
    """
    net = build_mlp(3, [4], 2)
    with torch.no_grad():
        net.hidden[0].weight.fill_(1.0)
        net.hidden[0].bias.fill_(1.0)
        net.hidden[0].weight[j] = 0.0
        net.hidden[0].bias[j] = -1.0 if kind == "dead" else 0.5
        net.output.weight.copy_(torch.tensor([[0.5, -0.5, 0.5, -0.5], [-0.5, 0.5, 0.5, 0.5]]))
    return net


@pytest.mark.parametrize("kind", ["dead", "constant"])
def test_replacing_a_dead_or_constant_unit_leaves_the_output_unchanged(kind: str):
    # lr = 0, m = 2, rho = 0.25: one replacement at step 3 (acc = 0.25 * 4 = 1), of unit 2.
    # Constant unit: its contribution w[:, 2] * 0.5 moves into the output bias (f^ = 0.5).
    torch.manual_seed(0)
    net = _single_hidden_net_with_unit(kind)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop(replacement_rate=0.25, maturity_threshold=2)
    cbp.attach(net, optimizer)
    probe = _batch(seed=1, n=32)[0]
    old_rows = net.hidden[0].weight.detach().clone()
    with torch.no_grad():
        before = net(probe)
    counts = [s["hidden1/replacements"] for s in _replacements_per_step(cbp, net, optimizer, 3)]
    assert counts == [0, 0, 1]
    changed = (net.hidden[0].weight != old_rows).any(dim=1)
    assert changed.tolist() == [False, False, True, False]
    with torch.no_grad():
        after = net(probe)
    assert torch.allclose(after, before, atol=1e-6)


def test_crelu_utility_sums_the_features_of_each_unit_by_hand():
    # W_in = I, b = 0, x = [[1, 2], [3, -4]]: features [relu(z), relu(-z)] = [[1, 2, 0, 0],
    # [3, 0, 0, 4]], mean_i |h_if| = [2, 1, 0, 2] = mean_i h_if.
    # W_out = [[1, -2, 0.5, 1], [3, 0.5, -1, 2]]: sum_k |w_kf| = [4, 2.5, 1.5, 3], so the
    # feature terms are [8, 2.5, 0, 6] and the units' (features j, j + 2) [8, 8.5].
    net = build_mlp(2, [2], 2, "crelu")
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.eye(2))
        net.hidden[0].bias.zero_()
        net.output.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 1.0], [3.0, 0.5, -1.0, 2.0]]))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop(replacement_rate=0.0)
    cbp.attach(net, optimizer)
    _step(net, optimizer, torch.tensor([[1.0, 2.0], [3.0, -4.0]]), torch.zeros(2, 2))
    stats = cbp.statistics["hidden1"]
    assert torch.allclose(stats.utility, 0.01 * torch.tensor([8.0, 8.5]))
    assert torch.allclose(stats.mean_activation, 0.01 * torch.tensor([2.0, 1.0, 0.0, 2.0]))
    assert stats.age.tolist() == [1, 1]


def test_replacing_a_constant_crelu_unit_moves_both_features_into_the_bias():
    # As the ReLU case above, with unit 2 at z = -0.5: its features are relu(z) = 0 and
    # relu(-z) = 0.5, so its mean contribution w[:, 6] * 0.5 must move into the output bias.
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2, "crelu")
    with torch.no_grad():
        net.hidden[0].weight.fill_(1.0)
        net.hidden[0].bias.fill_(1.0)
        net.hidden[0].weight[2] = 0.0
        net.hidden[0].bias[2] = -0.5
        net.output.weight.copy_(
            torch.tensor(
                [
                    [0.5, -0.5, 0.5, -0.5, 0.1, 0.1, 0.5, 0.1],
                    [-0.5, 0.5, 0.5, 0.5, 0.1, 0.1, -0.5, 0.1],
                ]
            )
        )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop(replacement_rate=0.25, maturity_threshold=2)
    cbp.attach(net, optimizer)
    probe = _batch(seed=1, n=32)[0]
    with torch.no_grad():
        before = net(probe)
    counts = [s["hidden1/replacements"] for s in _replacements_per_step(cbp, net, optimizer, 3)]
    assert counts == [0, 0, 1]
    assert torch.all(net.output.weight[:, [2, 6]] == 0)
    with torch.no_grad():
        assert torch.allclose(net(probe), before, atol=1e-6)


def test_a_replacement_changes_the_output_only_by_the_bias_correction():
    # Unit j replaced: out(x) = out_old(x) - w[:, j] h_j(x) + w[:, j] f^_j, where (lr = 0, the
    # same training batch every step) f^_j = mean over the training batch of h_j.
    # The chosen unit has the lowest utility mean|h_j| * sum_k |w_kj|.
    net, optimizer, cbp = _attached([4], replacement_rate=0.25, maturity_threshold=2)
    with torch.no_grad():  # inputs are in (0, 1): every unit active, so every unit matters
        net.hidden[0].weight.abs_()
        net.hidden[0].bias.abs_()
    x, _ = _batch()
    probe = _batch(seed=1, n=32)[0]
    old = copy.deepcopy(net)
    with torch.no_grad():
        h_train, h_probe = old.hidden(x), old.hidden(probe)
    _replacements_per_step(cbp, net, optimizer, 3)
    (j,) = torch.nonzero((net.hidden[0].weight != old.hidden[0].weight).any(dim=1)).flatten()
    utility = h_train.abs().mean(0) * old.output.weight.detach().abs().sum(0)
    assert j == utility.argmin()
    w_j = old.output.weight.detach()[:, j]
    expected = old(probe) + (h_train[:, j].mean() - h_probe[:, j : j + 1]) * w_j
    with torch.no_grad():
        assert torch.allclose(net(probe), expected, atol=1e-6)
        assert not torch.allclose(net(probe), old(probe), atol=1e-3)  # the unit did matter


def test_a_replacement_touches_exactly_the_units_rows_and_columns():
    # widths [4, 3], m = 0, rho = 0.25, lr = 0: hidden1 gets acc 1 -> one replacement at step 1,
    # hidden2 gets acc 0.75 -> none. Only hidden1's row j / bias j, the column j of the next
    # weight and the next bias (by w[:, j] f^_j, f^_j = mean h_j after one step) may change.
    net, optimizer, cbp = _attached([4, 3], replacement_rate=0.25, maturity_threshold=0)
    old = copy.deepcopy(net)
    x, _ = _batch()
    with torch.no_grad():
        h = old.hidden[:2](x)
    stats = _replacements_per_step(cbp, net, optimizer, 1)[0]
    assert stats == {"hidden1/replacements": 1.0, "hidden2/replacements": 0.0}
    (j,) = torch.nonzero((net.hidden[0].weight != old.hidden[0].weight).any(dim=1)).flatten()
    others = [k for k in range(4) if k != j]
    w1, w2 = net.hidden[0].weight, net.hidden[2].weight
    assert torch.equal(w1[others], old.hidden[0].weight[others])
    assert torch.equal(net.hidden[0].bias[others], old.hidden[0].bias[others])
    assert net.hidden[0].bias[j] == 0
    assert torch.equal(w2[:, others], old.hidden[2].weight[:, others])
    assert torch.all(w2[:, j] == 0)
    shift = old.hidden[2].weight[:, j] * h[:, j].mean()
    assert torch.allclose(net.hidden[2].bias, old.hidden[2].bias + shift, atol=1e-6)
    for name in ("output.weight", "output.bias"):
        assert torch.equal(net.get_parameter(name), old.get_parameter(name))


def test_optimizer_state_of_replaced_units_with_our_adam():
    # One replacement per layer at step 4 (m = 3, rho = 0.25, width 4); our Adam has taken 4
    # steps, so the replaced unit's step count is 0 and every other entry's is 4.
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2)
    optimizer = Adam(net.parameters(), lr=1e-3)
    cbp = ContinualBackprop(0.25, 3, optimizer_state="zero_moments_and_step")
    cbp.attach(net, optimizer)
    _replacements_per_step(cbp, net, optimizer, 4)
    state = optimizer.state[net.hidden[0].weight]
    replaced = state["step"][:, 0] == 0
    assert replaced.sum() == 1 and torch.all(state["step"][~replaced] == 4)
    assert torch.all(state["exp_avg"][replaced] == 0) and torch.all(
        state["exp_avg"][~replaced] != 0
    )


def test_torch_adam_cannot_zero_step_counts():
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    cbp = ContinualBackprop(1.0, 0, optimizer_state="zero_moments_and_step")
    cbp.attach(net, optimizer)
    with pytest.raises(ConfigError, match="keep or zero_moments for Adam"):
        _replacements_per_step(cbp, net, optimizer, 1)


def test_disabled_cbp_trains_bit_identically():
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2)
    plain = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ContinualBackprop(replacement_rate=0.0, maturity_threshold=0).attach(net, optimizer)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    x, y = _batch()
    for _ in range(10):
        _step(net, optimizer, x, y)
        _step(plain, plain_optimizer, x, y)
    for p, q in zip(net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dict_round_trip_gives_identical_replacements():
    # rho = 0.3, m = 2, width 4: per layer, replacements at steps 3 (acc 1.2) and 4 (0.2 + 0.3 * 3)
    # leave acc = 0.1 and ages {4, 4, 1, 0} when the state is saved. A fresh
    # method with zero ages and accumulators would replace differently.
    kwargs = {"replacement_rate": 0.3, "maturity_threshold": 2}
    net, optimizer, cbp = _attached([4, 4], lr=0.05, **kwargs)
    _replacements_per_step(cbp, net, optimizer, 4)
    buffer = io.BytesIO()
    torch.save(cbp.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    saved = state["layers"]["hidden1"]
    assert sorted(saved["age"].tolist()) == [0, 1, 4, 4]
    assert saved["pending_replacements"] == pytest.approx(0.1)

    twin = copy.deepcopy(net)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.05)
    resumed = ContinualBackprop(**kwargs)
    resumed.attach(twin, twin_optimizer)
    with pytest.raises(KeyError):
        resumed.load_state_dict({**state, "counts": {"other/hidden1": 0.0}})
    resumed.load_state_dict(state)

    fresh_twin = copy.deepcopy(net)
    fresh_optimizer = torch.optim.SGD(fresh_twin.parameters(), lr=0.05)
    fresh = ContinualBackprop(**kwargs)
    fresh.attach(fresh_twin, fresh_optimizer)

    runs = []
    for method, model, opt in [
        (cbp, net, optimizer),
        (resumed, twin, twin_optimizer),
        (fresh, fresh_twin, fresh_optimizer),
    ]:
        torch.manual_seed(1)  # fresh rows are drawn from the global RNG
        runs.append(_replacements_per_step(method, model, opt, 6))
    assert runs[0] == runs[1]
    assert runs[2] != runs[0]
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_loading_state_before_attach_is_an_error():
    with pytest.raises(RuntimeError, match="attach ContinualBackprop before"):
        ContinualBackprop().load_state_dict({"counts": {}, "layers": {}})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"utility": "weight"}, "continual_backprop.utility: got 'weight'; allowed: contribution, "
                                "adaptable_contribution"),
        ({"accumulate": "no"}, "continual_backprop.accumulate: got 'no'; allowed: true or false"),
    ],
)  # fmt: skip
def test_option_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ContinualBackprop(**kwargs)
