"""The small CNN: shapes, feature-map activations, and the MLP head seen by interventions."""

import pytest
import torch

from plasticity_rl.nn import hidden_layers
from plasticity_rl.nn.cnn import FeatureMapActivation, build_cnn
from plasticity_rl.registry import ConfigError


def test_shapes_and_head_hidden_layers():
    net = build_cnn((3, 32, 32), 100, channels=[8, 16], hidden_sizes=[32, 32])
    assert net(torch.rand(5, 3, 32, 32)).shape == (5, 100)
    # two pools: 16 channels x 8 x 8 into the head; only the head's units are "hidden layers"
    assert net.head.hidden[0].in_features == 16 * 8 * 8
    assert [h.width for h in hidden_layers(net)] == [32, 32]


def test_sparse_activation_acts_on_the_whole_feature_map():
    act = FeatureMapActivation(torch.nn.Identity())
    x = torch.arange(8.0).view(1, 2, 2, 2)
    assert torch.equal(act(x), x)
    net = build_cnn(
        (1, 4, 4), 2, channels=[2], hidden_sizes=[4], activation={"name": "topk", "k": 3}
    )
    maps = net.features[:2](torch.rand(6, 1, 4, 4))  # conv + Top-K over 2 x 4 x 4 = 32 units
    assert ((maps.flatten(1) > 0).sum(dim=1) <= 3).all()


def test_bad_shapes_are_config_errors():
    with pytest.raises(ConfigError, match=r"cnn.in_shape: got \[32, 32\]"):
        build_cnn((32, 32), 10)
    with pytest.raises(ConfigError, match=r"cnn.kernel_size: got 4"):
        build_cnn((3, 32, 32), 10, kernel_size=4)
