"""The small CNN: shapes, feature-map activations, and the MLP head seen by interventions."""

import pytest
import torch

from plasticity_rl.methods import make_method
from plasticity_rl.nn import hidden_layers
from plasticity_rl.nn.cnn import FeatureMapActivation, build_cnn
from plasticity_rl.registry import ConfigError


def test_shapes_and_hidden_layers_of_blocks_and_head():
    net = build_cnn((3, 32, 32), 100, channels=[8, 16], hidden_sizes=[32, 32])
    assert net(torch.rand(5, 3, 32, 32)).shape == (5, 100)
    # two pools: 16 channels x 8 x 8 into the head
    assert net.head.hidden[0].in_features == 16 * 8 * 8
    layers = hidden_layers(net)
    assert [h.width for h in layers] == [8, 16, 32, 32]
    assert layers[0].outgoing is net.features[3] and layers[1].outgoing is net.head.hidden[0]
    assert [h.positions_per_unit for h in layers] == [1, 64, 1, 1]


def test_continual_imagenet_convnet_as_dohare_et_al():
    # lop/nets/conv_net.py: conv 5x5 / 3x3 / 3x3 without padding, 32/64/128 channels, each
    # followed by ReLU and 2x2 max-pooling, then 512 -> 128 -> 128 -> 2; PyTorch's default init
    torch.manual_seed(0)
    net = build_cnn((3, 32, 32), 2, channels=[32, 64, 128], hidden_sizes=[128, 128],
                    kernel_sizes=[5, 3, 3], padding="valid", init="default")  # fmt: skip
    assert net.head.hidden[0].in_features == 512
    assert sum(p.numel() for p in net.parameters()) == 177_218
    conv = net.features[0]
    bound = 1 / (3 * 5 * 5) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert conv.bias.abs().max() <= bound and conv.bias.abs().max() > 0.5 * bound


def test_cbp_replaces_a_channel_read_through_the_flattened_map():
    torch.manual_seed(0)
    net = build_cnn((1, 6, 6), 4, channels=[3], hidden_sizes=[], padding="valid",
                    kernel_sizes=[3])  # fmt: skip
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = make_method("continual_backprop", replacement_rate=0.4, maturity_threshold=0)
    cbp.attach(net, optimizer)
    linear = net.head.output  # reads 3 channels x 2 x 2 positions
    with torch.no_grad():  # channel 1 silent (relu of -1): no contribution, replaced
        net.features[0].weight[1] = 0.0
        net.features[0].bias[1] = -1.0
    assert torch.all(linear.weight[:, 4:8] != 0)
    before = linear.weight.detach().clone()
    optimizer.zero_grad()
    net(torch.rand(4, 1, 6, 6)).sum().backward()
    optimizer.step()
    assert cbp.stats() == {"hidden1/replacements": 1.0}
    assert torch.all(linear.weight[:, 4:8] == 0)
    keep = [0, 1, 2, 3, 8, 9, 10, 11]
    assert torch.equal(linear.weight[:, keep], before[:, keep])


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
    with pytest.raises(ConfigError, match=r"cnn.padding: got 'full'"):
        build_cnn((3, 32, 32), 10, padding="full")
    with pytest.raises(ConfigError, match=r"cnn.channels: .* no more blocks than a 4x4 image"):
        build_cnn((3, 4, 4), 10, channels=[4, 4, 4])
