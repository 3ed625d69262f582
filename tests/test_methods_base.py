"""The method interface: registry, attaching, layer naming, recording, reset_units, composition."""

from __future__ import annotations

import copy

import pytest
import torch
from stand_ins import train_steps

from plasticity_rl.methods import (
    ContinualBackprop,
    NeuronalDecay,
    ReDo,
    attach_methods,
    make_method,
    make_methods,
    reset_units,
)
from plasticity_rl.nn import build_mlp, hidden_layers, layer_parameter
from plasticity_rl.optim.adam import Adam
from plasticity_rl.registry import ConfigError


def test_unknown_method_lists_the_registered_names():
    with pytest.raises(ConfigError, match="method: got 'nope'") as err:
        make_method("nope")
    for name in ("continual_backprop", "redo", "shrink_and_perturb", "neuronal_decay"):
        assert name in err.value.allowed


def test_unknown_keyword_is_named():
    with pytest.raises(ConfigError, match="method.redo key: got 'taus'"):
        make_method("redo", taus=0.1)


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("continual_backprop", "replacement_rate", -1e-4),
        ("continual_backprop", "replacement_rate", 1.5),
        ("continual_backprop", "maturity_threshold", -1),
        ("continual_backprop", "maturity_threshold", 2.5),
        ("continual_backprop", "decay_rate", 1.0),
        ("continual_backprop", "outgoing", "max"),
        ("continual_backprop", "optimizer_state", "reset"),
        ("redo", "tau", -0.1),
        ("redo", "period", 0),
        ("redo", "optimizer_state", "zero"),
        ("shrink_and_perturb", "shrink", 1.0),
        ("shrink_and_perturb", "noise_std", -1e-5),
        ("shrink_and_perturb", "noise", "uniform"),
        ("shrink_and_perturb", "every_optimizer_steps", 0),
        ("neuronal_decay", "coefficient", -1e-3),
        ("neuronal_decay", "coefficient", "big"),
    ],
)
def test_bad_values_name_key_and_value(name: str, key: str, value: object):
    with pytest.raises(ConfigError) as err:
        make_method(name, **{key: value})
    assert err.value.key == f"{name}.{key}" and err.value.value == value
    assert f"{name}.{key}: got {value!r}" in str(err.value)


def test_make_methods_reads_config_data_in_order():
    spec = {
        "continual_backprop": {"replacement_rate": 1e-3, "maturity_threshold": 1e4},
        "redo": None,
        "neuronal_decay": {},
    }
    cbp, redo, decay = make_methods(spec)
    assert isinstance(cbp, ContinualBackprop) and isinstance(redo, ReDo)
    assert isinstance(decay, NeuronalDecay)
    assert cbp.replacement_rate == 1e-3 and cbp.maturity_threshold == 10_000
    assert (redo.tau, redo.period, redo.optimizer_state) == (0.1, 100, "zero_moments")
    assert make_methods(None) == [] and make_methods({}) == []
    with pytest.raises(ConfigError, match="methods.redo: got 0.1"):
        make_methods({"redo": 0.1})


def test_a_method_attaches_once():
    net = build_mlp(3, [4], 2)
    method = ContinualBackprop()
    method.attach(net, torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="already attached"):
        method.attach(net, torch.optim.SGD(net.parameters(), lr=0.1))


def test_named_networks_prefix_the_layer_names():
    torch.manual_seed(0)
    pi, vf = build_mlp(3, [4, 4], 2), build_mlp(3, [5], 1)
    optimizer = torch.optim.SGD([*pi.parameters(), *vf.parameters()], lr=0.1)
    cbp, redo = ContinualBackprop(), ReDo()
    attach_methods([cbp, redo], {"pi": pi, "vf": vf}, optimizer)
    assert list(cbp.stats()) == [
        "pi/hidden1/replacements",
        "pi/hidden2/replacements",
        "vf/hidden1/replacements",
    ]
    assert list(redo.stats()) == ["pi/hidden1/resets", "pi/hidden2/resets", "vf/hidden1/resets"]
    single = ContinualBackprop()
    single.attach(pi, optimizer)
    assert list(single.stats()) == ["hidden1/replacements", "hidden2/replacements"]


def test_only_training_forwards_with_grad_are_recorded():
    # CBP ages a layer's units only on steps that follow a recorded forward.
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    cbp = ContinualBackprop(replacement_rate=0.0)
    cbp.attach(net, optimizer)
    ages = cbp.statistics["hidden1"].age
    train_steps(net, optimizer, 1)
    assert ages.tolist() == [1, 1, 1, 1]
    net.eval()  # an evaluation pass with grad enabled
    train_steps(net, optimizer, 1)
    assert ages.tolist() == [1, 1, 1, 1]
    net.train()
    with torch.no_grad():  # a rollout-style forward in training mode
        net(torch.randn(5, 3))
    optimizer.step()  # a step without a new training forward uses nothing
    assert ages.tolist() == [1, 1, 1, 1]
    train_steps(net, optimizer, 2)
    assert ages.tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize("mode", ["keep", "zero_moments", "zero_moments_and_step"])
def test_reset_units_touches_exactly_the_units_and_their_optimizer_state(mode: str):
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2)
    optimizer = Adam(net.parameters(), lr=0.01)
    train_steps(net, optimizer, 3)
    layer = hidden_layers(net)[0]  # hidden[0] -> ReLU -> hidden[2]
    params = {name: p.detach().clone() for name, p in net.named_parameters()}
    states = {
        p: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, torch.Tensor)}
        for p in net.parameters()
    }
    units = torch.tensor([1, 2])
    reset_units(layer, units, optimizer, mode)

    # which entries may change: unit rows of the incoming weight and bias, unit columns of the
    # outgoing weight; everything else in the network stays bit-identical
    touched = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in params.items()}
    touched["hidden.0.weight"][units] = True
    touched["hidden.0.bias"][units] = True
    touched["hidden.2.weight"][:, units] = True
    for name, p in net.named_parameters():
        assert torch.equal(p[~touched[name]], params[name][~touched[name]]), name
    assert torch.all(net.hidden[0].weight[units] != params["hidden.0.weight"][units])
    assert torch.all(net.hidden[0].bias[units] == 0)
    assert torch.all(net.hidden[2].weight[:, units] == 0)

    for name, p in net.named_parameters():
        for key, before in states[p].items():
            after = optimizer.state[p][key]
            mask = touched[name]
            assert torch.equal(after[~mask], before[~mask]), (name, key)
            zeroed = mode == "zero_moments_and_step" or (mode == "zero_moments" and key != "step")
            expected = torch.zeros_like(before[mask]) if zeroed else before[mask]
            assert torch.equal(after[mask], expected), (name, key)
        # our Adam falls back to element-wise bias corrections once step counts differ
        uniform = optimizer.state[p]["uniform_step"]
        reset_steps = mode == "zero_moments_and_step" and bool(touched[name].any())
        assert uniform == (None if reset_steps else 3), name


@pytest.mark.parametrize("layer_options", [{"powerprop_alpha": 2.0}, {"sdm": True}])
def test_reset_units_on_constrained_layers(layer_options: dict):
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2, **layer_options)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    layer = hidden_layers(net)[1]
    kept = net.hidden[2].weight[[0, 2]].detach().clone()
    reset_units(layer, torch.tensor([1, 3]), optimizer)
    w_in = layer.incoming.weight
    assert torch.allclose(w_in[[0, 2]], kept)  # other rows unchanged
    assert torch.all(net.output.weight[:, [1, 3]] == 0)  # effective outgoing columns zeroed
    if layer_options.get("sdm"):  # fresh rows satisfy the SDM constraint
        assert torch.all(w_in >= 0)
        assert torch.allclose(w_in.norm(dim=1), torch.ones(4))
    else:  # the stored parameter v holds v |v| = w, so zero columns are zero in v too
        assert torch.all(layer_parameter(net.output)[:, [1, 3]] == 0)


def test_all_methods_compose_and_remove_leaves_plain_sgd():
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    methods = make_methods(
        {
            "continual_backprop": {"replacement_rate": 0.2, "maturity_threshold": 2},
            "redo": {"tau": 0.5, "period": 5},
            "shrink_and_perturb": {"shrink": 1e-3, "noise_std": 1e-3},
            "neuronal_decay": {"coefficient": 0.01},
        }
    )
    handle = attach_methods(methods, net, optimizer)
    train_steps(net, optimizer, 20)
    assert sum(methods[0].stats().values()) > 0  # CBP did replace units
    assert methods[3].last_penalty > 0

    handle.remove()
    for layer in hidden_layers(net):
        assert not layer.activation._forward_hooks
    assert not optimizer._optimizer_step_post_hooks
    plain = copy.deepcopy(net)
    train_steps(net, optimizer, 5, seed=1)
    train_steps(plain, torch.optim.SGD(plain.parameters(), lr=0.05), 5, seed=1)
    for p, q in zip(net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_reset_units_of_a_crelu_layer_zeroes_both_feature_columns():
    torch.manual_seed(0)
    net = build_mlp(3, [4, 4], 2, "crelu")
    optimizer = Adam(net.parameters(), lr=0.01)
    train_steps(net, optimizer, 3)
    layer = hidden_layers(net)[0]  # 4 units, 8 features: unit j feeds columns j and j + 4
    kept = net.hidden[2].weight[:, [0, 2, 4, 6]].detach().clone()
    reset_units(layer, torch.tensor([1, 3]), optimizer)
    assert torch.all(net.hidden[2].weight[:, [1, 3, 5, 7]] == 0)
    assert torch.equal(net.hidden[2].weight[:, [0, 2, 4, 6]], kept)
    assert torch.all(optimizer.state[net.hidden[2].weight]["exp_avg"][:, [1, 3, 5, 7]] == 0)


def test_reset_units_resets_the_layer_norm_entries_of_the_units():
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2, layer_norm=True)
    optimizer = Adam(net.parameters(), lr=0.05)
    train_steps(net, optimizer, 3)
    norm = hidden_layers(net)[0].norm
    assert norm is net.hidden[1]
    gain, shift = norm.weight.detach().clone(), norm.bias.detach().clone()
    reset_units(hidden_layers(net)[0], torch.tensor([2]), optimizer)
    assert norm.weight[2] == 1 and norm.bias[2] == 0  # LayerNorm's own init
    keep = torch.tensor([True, True, False, True])
    assert torch.equal(norm.weight[keep], gain[keep]) and torch.equal(norm.bias[keep], shift[keep])
    assert optimizer.state[norm.weight]["exp_avg"][2] == 0
    assert torch.all(optimizer.state[norm.weight]["exp_avg"][keep] != 0)


@pytest.mark.parametrize(
    "network",
    [
        {"activation": "crelu"},
        {"activation": "fourier"},
        {"layer_norm": True},
        {"dropout": 0.2, "activation": "tanh"},
    ],  # fmt: skip
)
def test_cbp_redo_snp_and_l2_run_together_on_each_network_option(network: dict):
    torch.manual_seed(0)
    net = build_mlp(3, [6, 6], 2, **network)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=1e-3)
    methods = make_methods(
        {
            "continual_backprop": {"replacement_rate": 0.2, "maturity_threshold": 2},
            "redo": {"tau": 0.5, "period": 5},
            "shrink_and_perturb": {"shrink": 1e-3, "noise_std": 1e-3},
        }
    )
    handle = attach_methods(methods, net, optimizer)
    train_steps(net, optimizer, 20)
    stats = methods[0].stats()
    assert stats["hidden1/replacements"] > 0 and stats["hidden2/replacements"] > 0
    assert all(torch.isfinite(p).all() for p in net.parameters())
    handle.remove()
