"""ResNet-18 (Dohare et al. 2024's CIFAR form) and the methods and metrics on its conv channels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plasticity_rl.methods import make_method
from plasticity_rl.metrics import collect_activations, hidden_layer_health
from plasticity_rl.nn import hidden_layers
from plasticity_rl.nn.resnet import build_resnet18


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_resnet18((3, 32, 32), 100)


def test_architecture_as_the_reference(resnet: nn.Module):
    # torchvision's ResNet-18 with a 3x3 stride-1 stem, no max-pool, biased convs, 100 outputs
    assert sum(p.numel() for p in resnet.parameters()) == 11_224_932
    assert not any(isinstance(m, nn.MaxPool2d) for m in resnet.modules())
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(c.bias is not None for c in convs)
    assert resnet.stem[0].kernel_size == (3, 3) and resnet.stem[0].stride == (1, 1)
    x = torch.randn(2, 3, 32, 32)
    assert resnet(x).shape == (2, 100)
    sizes = []
    hooks = [b.register_forward_hook(lambda m, i, o: sizes.append(o.shape[1:]))
             for b in resnet.blocks]  # fmt: skip
    resnet(x)
    for h in hooks:
        h.remove()
    assert sizes == [(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 2 + [(512, 4, 4)] * 2


def test_init_is_kaiming_normal_with_zero_biases(resnet: nn.Module):
    for m in resnet.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            gain = 1.0 if m is resnet.output else math.sqrt(2)
            expected = gain / math.sqrt(fan_in)
            if m.weight.numel() > 20_000:  # enough draws for a 2% check
                assert m.weight.std().item() == pytest.approx(expected, rel=0.02)
                assert abs(m.weight.mean().item()) < 0.05 * expected
            assert torch.all(m.bias == 0)
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_hidden_layers_are_resgnts_seventeen_in_forward_order(resnet: nn.Module):
    layers = hidden_layers(resnet)
    assert [layer.name for layer in layers] == [f"hidden{i}" for i in range(1, 18)]
    assert [layer.width for layer in layers] == [64] * 5 + [128] * 4 + [256] * 4 + [512] * 4
    blocks = list(resnet.blocks)
    assert layers[0].incoming is resnet.stem[0] and layers[0].outgoing is blocks[0].conv1
    assert layers[1].incoming is blocks[0].conv1 and layers[1].outgoing is blocks[0].conv2
    assert layers[1].norm is blocks[0].bn1 and layers[1].activation is blocks[0].relu1
    assert layers[2].activation is blocks[0].relu2 and layers[2].outgoing is blocks[1].conv1
    assert layers[-1].outgoing is resnet.output and layers[-1].norm is blocks[-1].bn2
    assert all(layer.convolutional for layer in layers)


def test_channel_activations_are_spatial_means(resnet: nn.Module):
    x = torch.randn(4, 3, 32, 32)
    acts = collect_activations(resnet, x)
    assert acts["hidden17"].shape == (4, 512)
    # the last block's output averaged over positions is what the linear layer reads
    pooled = []
    handle = resnet.pool.register_forward_hook(lambda m, i, o: pooled.append(o.flatten(1)))
    resnet.eval()
    with torch.no_grad():
        resnet(x)
    handle.remove()
    torch.testing.assert_close(acts["hidden17"], pooled[0])
    health = hidden_layer_health(resnet, x)
    assert 0 <= health["hidden1/dormant_ratio"] <= 1 and health["hidden17/srank99"] <= 4


class TwoConvs(nn.Module):
    """conv(1 -> 2 channels, 1x1) -> BatchNorm -> ReLU -> conv(2 -> 1, 3x3), one hidden layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn(self.conv1(x))))

    def hidden_units(self):
        return [(self.conv1, self.relu, self.conv2, self.bn)]


def _two_convs() -> TwoConvs:
    torch.manual_seed(3)
    net = TwoConvs()
    with torch.no_grad():
        net.conv1.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        net.conv1.bias.zero_()
        net.conv2.weight.copy_(torch.arange(18.0).view(1, 2, 3, 3) / 10)
    return net


def test_cbp_utility_of_a_channel_by_hand():
    net = _two_convs()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = make_method("continual_backprop", maturity_threshold=10, decay_rate=0.9)
    cbp.attach(net, optimizer)
    x = torch.rand(3, 1, 4, 4)
    optimizer.zero_grad()
    net(x).sum().backward()
    optimizer.step()
    # h: BatchNorm (batch statistics) then ReLU; each channel's mean over the 4x4 positions
    z = net.conv1(x)
    h = torch.relu((z - z.mean((0, 2, 3), keepdim=True))
                   / (z.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt())  # fmt: skip
    channel_mean = h.mean((2, 3))  # (3 examples, 2 channels)
    outgoing = net.conv2.weight.abs().sum((0, 2, 3))  # every kernel entry reading the channel
    expected = 0.1 * channel_mean.abs().mean(0) * outgoing  # (1 - eta) y after one step
    stats = cbp.statistics["hidden1"]
    torch.testing.assert_close(stats.utility, expected)
    torch.testing.assert_close(stats.mean_activation, 0.1 * channel_mean.mean(0))


def test_cbp_replaces_a_channel_kernel_outgoing_kernels_and_batchnorm():
    net = _two_convs()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    cbp = make_method("continual_backprop", replacement_rate=0.5, maturity_threshold=0,
                      optimizer_state="keep")  # fmt: skip
    cbp.attach(net, optimizer)
    with torch.no_grad():
        net.bn.running_mean.fill_(0.3)
        net.bn.running_var.fill_(2.0)
        net.bn.weight.fill_(1.5)
    x = torch.ones(3, 1, 4, 4)  # a constant input: both channels normalise to 0 -> h = 0
    bias_before = net.conv2.bias.detach().clone()
    w2_before = net.conv2.weight.detach().clone()
    optimizer.zero_grad()
    net(x).sum().backward()
    optimizer.step()
    assert cbp.stats() == {"hidden1/replacements": 1.0}
    # both utilities are 0 (h = 0): the tie goes to channel 0
    w2 = net.conv2.weight.detach()
    assert torch.all(w2[:, 0] == 0) and torch.equal(w2[:, 1], w2_before[:, 1])
    assert net.conv1.weight[0].item() != 1.0 and net.conv1.weight[1].item() == -1.0
    assert net.conv1.bias[0].item() == 0.0
    assert net.bn.weight.tolist() == [1.0, 1.5] and net.bn.bias.tolist() == [0.0, 0.0]
    assert net.bn.running_mean[0].item() == 0.0 and net.bn.running_var[0].item() == 1.0
    assert net.bn.running_mean[1].item() != 0.0
    # the replaced channel's mean activation was 0, so the bias transfer adds 0
    torch.testing.assert_close(net.conv2.bias.detach(), bias_before)


def test_cbp_bias_transfer_sums_each_kernel():
    net = _two_convs()
    net.bn = nn.Identity()  # no normalisation: h = relu(conv1(x)), constant per channel
    net.hidden_units = lambda: [(net.conv1, net.relu, net.conv2, None)]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = make_method("continual_backprop", replacement_rate=0.5, maturity_threshold=0,
                      decay_rate=0.5)  # fmt: skip
    cbp.attach(net, optimizer)
    with torch.no_grad():
        net.conv2.weight[0, 0].fill_(100.0)  # channel 0 very useful by its weights
        net.conv1.weight.copy_(torch.tensor([1.0, 0.001]).view(2, 1, 1, 1))
    kernel_sum = net.conv2.weight[0, 1].sum().item()
    bias_before = net.conv2.bias.item()
    x = torch.full((2, 1, 4, 4), 2.0)  # channel 0 = 2, channel 1 = 0.002 at every position
    optimizer.zero_grad()
    net(x).sum().backward()
    optimizer.step()
    assert cbp.stats() == {"hidden1/replacements": 1.0}
    assert torch.all(net.conv2.weight[0, 1] == 0)
    # f^ = (0.5 * 0.002) / (1 - 0.5) = 0.002 moves into the bias through the kernel's sum
    assert net.conv2.bias.item() == pytest.approx(bias_before + 0.002 * kernel_sum, rel=1e-5)


def test_cbp_without_bias_transfer_leaves_the_bias():
    net = _two_convs()
    net.bn = nn.Identity()
    net.hidden_units = lambda: [(net.conv1, net.relu, net.conv2, None)]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = make_method("continual_backprop", replacement_rate=0.5, maturity_threshold=0,
                      bias_transfer=False)  # fmt: skip
    cbp.attach(net, optimizer)
    bias_before = net.conv2.bias.item()
    optimizer.zero_grad()
    net(torch.full((2, 1, 4, 4), 2.0)).sum().backward()
    optimizer.step()
    assert cbp.stats() == {"hidden1/replacements": 1.0}
    assert net.conv2.bias.item() == bias_before


def test_redo_resets_a_dormant_channel():
    net = _two_convs()
    net.bn = nn.Identity()
    net.hidden_units = lambda: [(net.conv1, net.relu, net.conv2, None)]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    redo = make_method("redo", tau=0.1, period=1)
    redo.attach(net, optimizer)
    optimizer.zero_grad()
    net(torch.full((2, 1, 4, 4), 2.0)).sum().backward()  # channel 1 = relu(-2) = 0: dormant
    optimizer.step()
    assert redo.stats() == {"hidden1/resets": 1.0}
    assert torch.all(net.conv2.weight[:, 1] == 0) and net.conv1.weight[0].item() == 1.0


def test_regrama_scores_conv_kernels_and_shrink_and_perturb_reaches_convs():
    net = _two_convs()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    regrama = make_method("regrama", tau=0.5, period=1)
    snp = make_method("shrink_and_perturb", shrink=0.5, noise_std=0.0)
    regrama.attach(net, optimizer)
    snp.attach(net, optimizer)
    before = net.conv1.weight.detach().clone()
    optimizer.zero_grad()
    net(torch.rand(2, 1, 4, 4)).sum().backward()
    optimizer.step()
    assert set(regrama.stats()) == {"hidden1/grama_resets"}
    kept = [j for j in range(2) if net.conv2.weight[:, j].abs().sum() > 0]
    for j in kept:  # every channel not reset was shrunk
        torch.testing.assert_close(net.conv1.weight[j], before[j] * 0.5)


def test_resnet18_cbp_step_replaces_channels_in_every_layer(resnet: nn.Module):
    net = build_resnet18((3, 8, 8), 10)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    cbp = make_method("continual_backprop", replacement_rate=0.02, maturity_threshold=1,
                      outgoing="mean", optimizer_state="keep", bias_transfer=False)  # fmt: skip
    cbp.attach(net, optimizer)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    stats = cbp.stats()
    assert len(stats) == 17 and all(v >= 1 for v in stats.values())
    assert torch.isfinite(net(x)).all()
