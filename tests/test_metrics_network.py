from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from plasticity_rl.metrics import (
    OutputChurn,
    WeightChangeMonitor,
    activation_sparsity,
    approximate_rank,
    collect_activations,
    dead_fraction,
    dormancy_scores,
    dormant_ratio,
    duplicate_fraction,
    effective_rank,
    feature_norm,
    gradient_norm,
    grama_dormant_fraction,
    grama_scores,
    hidden_layer_health,
    layer_health,
    output_churn,
    run_gradient_metrics,
    run_gradient_norms,
    saturated_fraction,
    srank,
    stable_rank,
    weight_change,
    weight_magnitude,
    weight_snapshot,
)
from plasticity_rl.nn import build_mlp, build_runs, layer_parameter, make_linear
from plasticity_rl.registry import ConfigError


def with_singular_values(sigma: list[float], n_rows: int = 6, dtype=torch.float64) -> torch.Tensor:
    """h = U diag(sigma) V^T with orthonormal U (n_rows x k), V (k x k) from seeded QR."""
    g = torch.Generator().manual_seed(0)
    k = len(sigma)
    u, _ = torch.linalg.qr(torch.randn(n_rows, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    return (u @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ v.T).to(dtype)


# sigma = [4, 2, 1, 1], sum 8 -> p = [1/2, 1/4, 1/8, 1/8]
# entropy = 1/2 ln 2 + 1/4 ln 4 + 2 * 1/8 ln 8 = (1/2 + 1/2 + 3/4) ln 2 = 1.75 ln 2
# -> effective rank = 2 ** 1.75 ~ 3.3636
# cumulative shares = [0.5, 0.75, 0.875, 1.0]
# stable rank = (16 + 4 + 1 + 1) / 16 = 1.375
SIGMA = [4.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rank_metrics_on_known_singular_values(dtype):
    h = with_singular_values(SIGMA, dtype=dtype)
    assert effective_rank(h) == pytest.approx(2**1.75, rel=1e-5)
    assert stable_rank(h) == pytest.approx(22 / 16, rel=1e-5)
    assert srank(h) == 4  # 0.875 < 0.99 <= 1.0


@pytest.mark.parametrize(
    "threshold, expected",
    # shares [0.5, 0.75, 0.875, 1.0]: first k whose share >= threshold; boundaries count
    [(0.3, 1), (0.5, 1), (0.6, 2), (0.75, 2), (0.8, 3), (0.875, 3), (0.9, 4), (1.0, 4)],
)
def test_srank_thresholds(threshold, expected):
    assert srank(with_singular_values(SIGMA), threshold) == expected


@pytest.mark.parametrize(
    "threshold, expected",
    # squared sigma [16, 4, 1, 1] / 22: shares [0.727, 0.909, 0.955, 1.0]
    [(0.7, 1), (0.8, 2), (0.9, 2), (0.95, 3), (0.99, 4), (1.0, 4)],
)
def test_approximate_rank_counts_squared_singular_values(threshold, expected):
    h = with_singular_values(SIGMA)
    assert approximate_rank(h, threshold) == expected
    assert approximate_rank(h, threshold) <= srank(h, threshold)  # 2 < 4 at 0.9


def test_approximate_rank_of_zero_matrix_and_bad_threshold():
    assert approximate_rank(torch.zeros(5, 3)) == 0
    with pytest.raises(ConfigError, match="approximate_rank.threshold"):
        approximate_rank(torch.ones(2, 2), 1.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_srank_boundary_is_inclusive_despite_round_off(dtype):
    # sigma = [3, 1]: share of the first is 3/4 exactly -> srank 1 at threshold 0.75.
    assert srank(with_singular_values([3.0, 1.0], dtype=dtype), 0.75) == 1
    assert srank(torch.diag(torch.tensor([3.0, 1.0])), 0.75) == 1
    assert srank(with_singular_values([3.0, 1.0], dtype=dtype), 0.76) == 2


def test_leading_dims_are_flattened_into_rows():
    h = with_singular_values(SIGMA)  # (6, 4)
    h3 = h.reshape(2, 3, 4)
    assert effective_rank(h3) == pytest.approx(effective_rank(h))
    assert srank(h3, 0.8) == 3
    assert stable_rank(h3) == pytest.approx(22 / 16)


def test_rank_one_matrix():
    # outer(a, b) has the single singular value ||a|| ||b||: p = [1, 0, ...]
    # -> entropy 0, effective rank 1; srank 1; stable rank sigma^2 / sigma^2 = 1
    h = torch.outer(torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([2.0, 0.0, 1.0]))
    assert effective_rank(h) == pytest.approx(1.0)
    assert srank(h) == 1
    assert stable_rank(h) == pytest.approx(1.0)


def test_zero_matrix():
    h = torch.zeros(5, 3)
    assert effective_rank(h) == 0.0
    assert srank(h) == 0
    assert stable_rank(h) == 0.0
    assert dead_fraction(h) == 1.0
    assert dormant_ratio(h) == 1.0  # whole layer zero -> every unit dormant
    assert activation_sparsity(h) == 1.0


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_srank_rejects_threshold_outside_unit_interval(threshold):
    with pytest.raises(ConfigError, match="srank.threshold"):
        srank(torch.eye(2), threshold)


def test_dead_fraction_counts_units_zero_on_every_row():
    # columns 1, 3, 4 are zero on all rows -> 3 of 5 units dead
    h = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0, 0.0],
            [0.5, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    assert dead_fraction(h) == pytest.approx(0.6)


def test_dead_fraction_with_eps():
    # |h| <= 0.05 on every row: units 0 (max 0.05) and 2 (zero); unit 1 has 0.2, unit 3 has 1
    h = torch.tensor([[0.05, 0.01, 0.0, 1.0], [-0.02, 0.2, 0.0, 0.0]])
    assert dead_fraction(h, eps=0.05) == pytest.approx(0.5)
    assert dead_fraction(h) == pytest.approx(0.25)  # only unit 2 exactly zero


# mean_rows |h_j| = [(1+3)/2, 0, (2+2)/2, 0.1] = [2, 0, 2, 0.1]; layer mean = 4.1 / 4 = 1.025
# s = [2/1.025, 0, 2/1.025, 0.1/1.025] = [1.9512, 0, 1.9512, 0.09756]
DORMANCY_H = torch.tensor([[1.0, 0.0, 2.0, 0.1], [3.0, 0.0, -2.0, 0.1]])


def test_dormancy_scores_by_hand():
    expected = torch.tensor([2.0, 0.0, 2.0, 0.1]) / 1.025
    torch.testing.assert_close(dormancy_scores(DORMANCY_H), expected)


@pytest.mark.parametrize(
    "tau, expected",
    # s <= 0: unit 1; s <= 0.09: unit 1; s <= 0.1: units 1, 3; s <= 2: all four
    [(0.0, 0.25), (0.09, 0.25), (0.1, 0.5), (2.0, 1.0)],
)
def test_dormant_ratio_by_hand(tau, expected):
    assert dormant_ratio(DORMANCY_H, tau) == pytest.approx(expected)


# A layer's incoming weight gradient, one row per unit: mean_l |g_jl| = [1, 0, 2, 0.5],
# layer mean 3.5 / 4 = 0.875, s = [1/0.875, 0, 2/0.875, 0.5/0.875] = [1.1429, 0, 2.2857, 0.5714]
GRAMA_GRAD = torch.tensor([[1.0, -1.0], [0.0, 0.0], [2.0, 2.0], [0.5, -0.5]])


def test_grama_scores_and_dormant_fraction_by_hand():
    expected = torch.tensor([1.0, 0.0, 2.0, 0.5]) / 0.875
    torch.testing.assert_close(grama_scores(GRAMA_GRAD), expected)
    # two runs stacked: each normalised by its own layer mean (run 1: all zero -> all 0)
    runs = torch.stack([GRAMA_GRAD, torch.zeros(4, 2)])
    torch.testing.assert_close(grama_scores(runs), torch.stack([expected, torch.zeros(4)]))
    assert grama_dormant_fraction(GRAMA_GRAD) == 0.25  # s <= 0: unit 1
    assert grama_dormant_fraction(GRAMA_GRAD, tau=0.6) == 0.5  # units 1 and 3


def test_activation_sparsity():
    # 2 of the 8 entries of DORMANCY_H are exactly zero; 0.1 is not zero
    assert activation_sparsity(DORMANCY_H) == pytest.approx(0.25)


def test_layer_health_keys_and_values():
    health = layer_health(DORMANCY_H, dormant_tau=0.1)
    assert list(health) == [
        "dead_fraction",
        "dormant_ratio",
        "effective_rank",
        "srank99",
        "approximate_rank",
        "stable_rank",
        "activation_sparsity",
        "feature_norm",
        "duplicate_fraction",
    ]
    assert health["dead_fraction"] == pytest.approx(0.25)
    assert health["dormant_ratio"] == pytest.approx(0.5)
    assert health["effective_rank"] == pytest.approx(effective_rank(DORMANCY_H))
    assert health["srank99"] == srank(DORMANCY_H, 0.99)
    assert health["approximate_rank"] == approximate_rank(DORMANCY_H, 0.99)
    assert health["stable_rank"] == pytest.approx(stable_rank(DORMANCY_H))
    assert health["activation_sparsity"] == pytest.approx(0.25)
    assert health["feature_norm"] == pytest.approx(feature_norm(DORMANCY_H))
    assert health["duplicate_fraction"] == duplicate_fraction(DORMANCY_H)
    bounded = layer_health(DORMANCY_H, saturation=(0.0, 1.0))
    assert bounded["saturated_fraction"] == saturated_fraction(DORMANCY_H, 0.0, 1.0)


def test_feature_norm_by_hand():
    # rows (3, 4) and (0, 0): norms 5 and 0, mean 2.5
    assert feature_norm(torch.tensor([[3.0, 4.0], [0.0, 0.0]])) == pytest.approx(2.5)


def test_duplicate_fraction_by_hand():
    # columns: a = (1, 2, 3), a again, a * (1 + 1e-4) (distance 1e-4 ||a||: within 1e-3),
    # b = (1, 0, 0), b + (0, 0.1, 0) (distance 0.1 ||b||: not within 1e-3), two dead columns.
    # Duplicates: the three a columns; dead ones never count -> 3 of 7 units.
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 0.0])
    h = torch.stack([a, a, a * (1 + 1e-4), b, b + torch.tensor([0.0, 0.1, 0.0]),
                     torch.zeros(3), torch.zeros(3)], dim=1)  # fmt: skip
    assert duplicate_fraction(h) == pytest.approx(3 / 7)
    assert duplicate_fraction(h, tol=0.2) == pytest.approx(5 / 7)  # now b's pair too
    assert duplicate_fraction(h, tol=0.0) == pytest.approx(2 / 7)  # exact copies only
    # the same count from layer_health's shared Gram matrix, with fewer rows than units too
    assert layer_health(h)["duplicate_fraction"] == pytest.approx(3 / 7)
    assert layer_health(h.repeat(3, 1))["duplicate_fraction"] == pytest.approx(3 / 7)


def test_saturated_fraction_by_hand():
    # tanh bounds (-1, 1), margin 1% of the range: |h| >= 0.98 on every row.
    # unit 0 pinned at both bounds (saturated), unit 1 once at 0.97 (not), unit 2 at 0 (not)
    h = torch.tensor([[0.99, 0.99, 0.0], [-0.985, 0.97, 0.0]])
    assert saturated_fraction(h) == pytest.approx(1 / 3)
    # sigmoid bounds (0, 1): h <= 0.01 or >= 0.99 on every row
    s = torch.tensor([[0.005, 0.5], [0.995, 0.995]])
    assert saturated_fraction(s, 0.0, 1.0) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="saturated_fraction.margin"):
        saturated_fraction(h, margin=0.5)


def test_hidden_layer_health_reports_saturation_for_tanh_layers_only():
    torch.manual_seed(0)
    probe = torch.randn(16, 3)
    tanh_keys = hidden_layer_health(build_mlp(3, [4], 2, "tanh"), probe)
    assert "hidden1/saturated_fraction" in tanh_keys and "hidden1/srank99" in tanh_keys
    assert "hidden1/saturated_fraction" not in hidden_layer_health(build_mlp(3, [4], 2), probe)


def test_gradient_norm_reads_the_existing_gradients():
    net = nn.Sequential(nn.Linear(2, 1))
    assert gradient_norm(net) is None and run_gradient_norms(net) is None  # no backward yet
    net[0].weight.grad = torch.tensor([[3.0, 0.0]])
    assert gradient_norm(net) == pytest.approx(3.0)  # the bias has no gradient: left out
    net[0].bias.grad = torch.tensor([4.0])
    assert gradient_norm(net) == pytest.approx(5.0)  # sqrt(9 + 16)
    assert run_gradient_norms(net) == pytest.approx([5.0])


def test_gradient_metrics_add_grama_dormancy_per_layer_and_run():
    net = build_mlp(2, [2], 1)
    assert run_gradient_metrics(net) is None
    net.hidden[0].weight.grad = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    net.output.weight.grad = torch.tensor([[2.0, 0.0]])
    # unit scores: mean |g| of each row over the layer's mean, [1, 0] / 0.5 = [2, 0]
    metrics = run_gradient_metrics(net, tau=0.1)
    assert metrics == [{"gradient_norm": pytest.approx(math.sqrt(6.0)),
                        "hidden1/grama_dormant_ratio": 0.5}]  # fmt: skip
    generators = [torch.Generator().manual_seed(s) for s in range(2)]
    runs = build_runs(lambda: build_mlp(2, [2], 1), generators)
    runs.hidden[0].weight.grad = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 3.0]]])
    per_run = run_gradient_metrics(runs, tau=0.6)  # run 1: scores [2/3, 4/3]: none dormant
    assert [m["hidden1/grama_dormant_ratio"] for m in per_run] == [0.5, 0.0]


def test_run_gradient_norms_split_a_batched_network_by_run():
    generators = [torch.Generator().manual_seed(s) for s in range(2)]
    net = build_runs(lambda: nn.Sequential(nn.Linear(2, 1)), generators)
    net[0].weight.grad = torch.tensor([[[3.0, 0.0]], [[0.0, 1.0]]])  # (runs, out, in)
    net[0].bias.grad = torch.tensor([[4.0], [0.0]])
    assert run_gradient_norms(net) == pytest.approx([5.0, 1.0])
    assert gradient_norm(net) == pytest.approx(math.sqrt(26.0))


def test_output_churn_by_hand():
    # |(1, 2) - (1.5, 2)| and |(0, 0) - (0, -1)|: (0.5 + 0 + 0 + 1) / 4
    before, after = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.5, 2.0], [0.0, -1.0]])
    assert output_churn(before, after) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="shapes differ"):
        output_churn(before, after[:1])


def test_output_churn_keeps_its_first_probe_as_the_reference_batch():
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Dropout(0.5))
    net.train()
    with torch.no_grad():
        net[0].weight.fill_(2.0)
    churn = OutputChurn()
    assert churn.measure(net, torch.tensor([[1.0], [3.0]])) is None  # outputs (2, 6)
    with torch.no_grad():
        net[0].weight.fill_(2.5)  # outputs (2.5, 7.5) on the reference batch
    # the new probe is ignored; dropout is off (eval mode), and the training flag restored
    assert churn.measure(net, torch.tensor([[100.0]])) == pytest.approx((0.5 + 1.5) / 2)
    assert net.training and net[1].training
    # a monitor built on the saved state (a resumed run) continues from the same batch and outputs
    resumed = OutputChurn(copy.deepcopy(churn.state))
    with torch.no_grad():
        net[0].weight.fill_(3.0)  # outputs (3, 9): changes 0.5 and 1.5 again
    assert resumed.measure(net, torch.tensor([[7.0]])) == pytest.approx(1.0)


def tiny_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        model[0].bias.fill_(100.0)
        model[2].weight.copy_(torch.tensor([[-0.5, 0.5]]))
        model[2].bias.fill_(7.0)
    return model


def test_weight_magnitude_excludes_biases():
    # (1 + 2 + 3 + 4 + 0.5 + 0.5) / 6 = 11/6; the biases 100 and 7 are not counted
    assert weight_magnitude(tiny_model()) == pytest.approx(11 / 6)


def test_weight_magnitude_uses_effective_weights():
    # Powerprop alpha = 2: w = v |v|, v = [2, -3] -> w = [4, -9] -> mean |w| = 6.5
    layer = make_linear(2, 1, bias=False, powerprop_alpha=2.0)
    with torch.no_grad():
        layer_parameter(layer).copy_(torch.tensor([[2.0, -3.0]]))
    assert weight_magnitude(layer) == pytest.approx(6.5)


def test_weight_magnitude_without_layers_raises():
    with pytest.raises(ValueError, match="ReLU"):
        weight_magnitude(nn.ReLU())


def test_weight_change_by_hand():
    before = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    after = {"a": torch.tensor([0.0, 4.0]), "b": torch.tensor([[-1.0]])}
    assert weight_change(before, after) == pytest.approx(4.0)  # |−1| + |2| + |−1|


def test_weight_change_names_missing_keys():
    with pytest.raises(ValueError, match=r"missing from after: \['b'\].*before: \['c'\]"):
        weight_change({"a": torch.zeros(1), "b": torch.zeros(1)}, {"a": torch.zeros(1), "c": 0})


def test_weight_snapshot_is_a_detached_copy():
    model = tiny_model()
    before = weight_snapshot(model)
    assert set(before) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    # 4 + 2 + 2 + 1 = 9 entries, each moved by 0.5 -> 4.5
    assert weight_change(before, weight_snapshot(model)) == pytest.approx(4.5)
    assert before["0.weight"][0, 0].item() == 1.0


def sgd_step_on_sum(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    # loss = sum of all parameter entries -> gradient 1 everywhere -> SGD moves each by lr
    optimizer.zero_grad()
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()


def test_weight_change_monitor_keeps_max_step_change():
    model = nn.Linear(3, 2)  # 6 weights + 2 biases = 8 entries
    extra = nn.Parameter(torch.zeros(10))  # optimised but not part of the model: not counted
    optimizer = torch.optim.SGD([{"params": model.parameters()}, {"params": [extra]}], lr=0.1)
    monitor = WeightChangeMonitor()
    handle = monitor.attach(model, optimizer)
    assert monitor.pop_max() == {}  # no step yet

    extra.grad = torch.ones(10)
    sgd_step_on_sum(model, optimizer)  # 8 entries * 0.1 = 0.8
    optimizer.param_groups[0]["lr"] = 0.3
    sgd_step_on_sum(model, optimizer)  # 8 * 0.3 = 2.4
    optimizer.param_groups[0]["lr"] = 0.1
    sgd_step_on_sum(model, optimizer)  # 0.8 again; the max stays 2.4
    assert monitor.pop_max() == {"model": pytest.approx(2.4, rel=1e-5)}
    assert monitor.pop_max() == {}  # reset by the pop

    sgd_step_on_sum(model, optimizer)
    assert monitor.pop_max() == {"model": pytest.approx(0.8, rel=1e-5)}

    handle.remove()
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    sgd_step_on_sum(model, optimizer)
    assert monitor.pop_max() == {}


def test_weight_change_monitor_reports_each_named_model():
    first, second = nn.Linear(3, 2), nn.Linear(4, 1)  # 8 and 5 entries
    optimizer = torch.optim.SGD([*first.parameters(), *second.parameters()], lr=0.1)
    monitor = WeightChangeMonitor()
    monitor.attach({"pi": first, "vf": second}, optimizer)
    optimizer.zero_grad()
    (first(torch.ones(1, 3)).sum() + second(torch.ones(1, 4)).sum()).backward()
    # d/dw of sum(W x + b) with x = 1: every weight and bias entry has gradient (number of
    # outputs it feeds) = 1, so each entry moves by lr = 0.1: 0.8 and 0.5
    optimizer.step()
    assert monitor.pop_max() == {"pi": pytest.approx(0.8), "vf": pytest.approx(0.5)}


def manual_hidden_outputs(net, x):
    h1 = torch.relu(net.hidden[0](x))
    h2 = torch.relu(net.hidden[2](h1))
    return h1, h2


def assert_no_hooks(net: nn.Module) -> None:
    assert all(not m._forward_hooks for m in net.modules())


@pytest.mark.parametrize("training", [True, False])
def test_collect_activations_matches_manual_forward(training):
    torch.manual_seed(0)
    net = build_mlp(3, [5, 4], 2, "relu")
    net.train(training)
    probe = torch.randn(7, 3)
    acts = collect_activations(net, probe)
    h1, h2 = manual_hidden_outputs(net, probe)
    assert list(acts) == ["hidden1", "hidden2"]
    torch.testing.assert_close(acts["hidden1"], h1)
    torch.testing.assert_close(acts["hidden2"], h2)
    assert not acts["hidden1"].requires_grad
    assert_no_hooks(net)
    assert all(m.training == training for m in net.modules())


def test_collect_activations_with_module_list_and_forward():
    torch.manual_seed(0)
    net = build_mlp(3, [5, 4], 2, "relu").train()
    probe = torch.randn(7, 3)
    modes_during_forward = []

    def forward(x):
        modes_during_forward.append(net.hidden.training or net.output.training)
        return net.output(net.hidden(x))

    acts = collect_activations([net.hidden, net.output], probe, forward=forward)
    torch.testing.assert_close(acts["hidden2"], manual_hidden_outputs(net, probe)[1])
    assert modes_during_forward == [False]  # the listed modules are probed in eval mode
    assert all(m.training for m in net.modules())


def test_collect_activations_cleans_up_on_error():
    net = build_mlp(3, [5], 2, "relu").train()

    def failing_forward(x):
        net(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect_activations(net, torch.randn(2, 3), forward=failing_forward)
    assert_no_hooks(net)
    assert all(m.training for m in net.modules())


def test_collect_activations_rejects_layers_run_twice_or_never():
    net = build_mlp(3, [5], 2, "relu")
    probe = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="hidden1 ran more than once"):
        collect_activations(net, probe, forward=lambda x: (net(x), net(x)))
    with pytest.raises(RuntimeError, match="did not run"):
        collect_activations(net, probe, forward=lambda x: x)
    with pytest.raises(ValueError, match="forward"):
        collect_activations([net.hidden, net.output], probe)
    assert_no_hooks(net)


def test_layer_health_of_a_diverged_layer_reports_nan_ranks():
    h = torch.tensor([[1.0, float("nan")], [0.0, 2.0]])
    health = layer_health(h)
    ranks = ("effective_rank", "srank99", "approximate_rank", "stable_rank")
    assert all(math.isnan(health[k]) for k in ranks)
    assert health["activation_sparsity"] == 0.25  # one exact zero of four entries
    assert math.isnan(health["duplicate_fraction"])
