"""The MLP builder and hidden-layer discovery."""

import math

import pytest
import torch
from torch import nn

from plasticity_rl.nn import (
    Dropout,
    MLPConfig,
    NonNegLinear,
    SDMLinear,
    UnitNormRows,
    build_mlp,
    hidden_layers,
)
from plasticity_rl.registry import ConfigError


def test_build_mlp_shapes_and_per_layer_options():
    net = build_mlp(
        5, [7, 6], 3, "tanh", init="lecun_uniform", output_bias=False, weight_norm="first"
    )
    assert net(torch.randn(2, 4, 5)).shape == (2, 4, 3)
    layers = hidden_layers(net)
    assert [(h.name, h.width) for h in layers] == [("hidden1", 7), ("hidden2", 6)]
    assert layers[0].outgoing is layers[1].incoming and layers[1].outgoing is net.output
    assert isinstance(layers[0].incoming.parametrizations.weight[0], UnitNormRows)
    assert not hasattr(layers[1].incoming, "parametrizations")
    assert net.output.bias is None and layers[1].incoming.bias is not None
    assert all(isinstance(h.activation, nn.Tanh) for h in layers)
    assert layers[0].activation is not layers[1].activation  # one instance per layer


def test_sdm_hidden_layers_and_a_non_negative_output_layer():
    net = build_mlp(4, [8], 2, "relu", sdm=True, output_bias=False)
    assert isinstance(net.hidden[0], SDMLinear)
    assert type(net.output) is NonNegLinear and torch.all(net.output.weight >= 0)


def test_config_dataclass_round_trips_into_the_builder():
    from dataclasses import asdict

    net = build_mlp(3, out_dim=2, **asdict(MLPConfig(hidden_sizes=[4, 4], activation="elu")))
    assert len(hidden_layers(net)) == 2


def test_hidden_layers_of_plain_sequential_and_of_a_list_of_modules():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 1))
    assert [h.width for h in hidden_layers(seq)] == [4, 5]
    # an SB3-style split: feature extractor then head, read as one network
    body = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    head = nn.Linear(4, 2)
    (layer,) = hidden_layers([body, head])
    assert layer.incoming is body[0] and layer.outgoing is head
    # two separate networks side by side do not form a spurious layer across them
    assert len(hidden_layers([seq, nn.Sequential(nn.Linear(1, 2))])) == 2


def test_layer_norm_and_dropout_sit_around_the_activation_that_methods_read():
    net = build_mlp(3, [4, 5], 2, "tanh", layer_norm=True, dropout=0.5)
    kinds = [type(m).__name__ for m in net.hidden]
    assert kinds == ["Linear", "LayerNorm", "Tanh", "Dropout"] * 2
    layers = hidden_layers(net)
    assert [(layer.norm, layer.activation) for layer in layers] == [
        (net.hidden[1], net.hidden[2]), (net.hidden[5], net.hidden[6])]  # fmt: skip
    x = torch.randn(6, 3)
    z = net.hidden[0](x)  # pre-activation LayerNorm: zero mean, unit variance per row at init
    expected = torch.tanh((z - z.mean(1, keepdim=True)) / (z.var(1, False, keepdim=True)
                                                          + 1e-5).sqrt())  # fmt: skip
    torch.testing.assert_close(net.hidden[:3](x), expected)
    net.eval()  # dropout is the identity in eval mode
    torch.testing.assert_close(net.hidden[:4](x), expected)


def test_dropout_by_hand():
    torch.manual_seed(0)
    dropout = Dropout(0.25)
    h = dropout(torch.ones(1000, 8))
    kept = h != 0
    assert torch.all(h[kept] == 1 / 0.75)  # kept entries scaled by 1 / (1 - p)
    assert 0.7 < kept.float().mean().item() < 0.8
    assert not torch.equal(dropout(torch.ones(4, 8)), dropout(torch.ones(4, 8)))  # fresh masks
    assert torch.equal(Dropout(0.0)(h), h)


def test_bad_builder_values_name_the_key():
    with pytest.raises(ConfigError, match=r"mlp.dropout: got 1.0; allowed: a number in \[0, 1\)"):
        build_mlp(3, [4], 2, dropout=1.0)
    with pytest.raises(ConfigError, match=r"mlp.layer_norm: got 'yes'"):
        build_mlp(3, [4], 2, layer_norm="yes")
    with pytest.raises(ConfigError, match=r"mlp.weight_norm: got 'last'"):
        build_mlp(3, [4], 2, weight_norm="last")
    with pytest.raises(ConfigError, match=r"mlp.weight_norm_centred: got True"):
        build_mlp(3, [4], 2, weight_norm_centred=True)
    with pytest.raises(ConfigError, match=r"mlp.hidden_sizes"):
        build_mlp(3, [4, 0], 2)
    with pytest.raises(ConfigError, match=r"activation: got 'relux'"):
        build_mlp(3, [4], 2, "relux")


def test_crelu_layers_get_the_relu_gain_and_fourier_has_none():
    # lecun_uniform bound sqrt(3 / fan_in) times the gain: sqrt(2) for CReLU (as ReLU)
    torch.manual_seed(0)
    net = build_mlp(50, [400, 400], 2, "crelu", init="kaiming_uniform_by_activation")
    bound = float(net.hidden[2].weight.detach().abs().max())  # fan_in 800: twice the 400 units
    assert math.sqrt(2) * math.sqrt(3 / 800) * 0.99 < bound <= math.sqrt(2) * math.sqrt(3 / 800)
    with pytest.raises(ConfigError, match="kaiming_uniform_by_activation activation"):
        build_mlp(3, [4], 2, "fourier", init="kaiming_uniform_by_activation")
