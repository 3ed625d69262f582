"""ResNet-18 for 32x32 images, as Dohare et al. 2024 train it on class-incremental CIFAR-100.

He et al. 2016's ResNet-18 in the CIFAR form of Dohare et al.'s
``lop/nets/torchvision_modified_resnet.py``: a 3x3 stride-1 stem with no max-pool, four stages
of two basic blocks (64, 128, 256, 512 channels; stages 2-4 halve the resolution in their first
block, with a 1x1 conv + BatchNorm shortcut), global average pooling and one linear layer.
As theirs, every conv has a bias and is followed by a BatchNorm (PyTorch defaults: momentum
0.1, eps 1e-5, affine), and the init is their ``kaiming_init_resnet_module``: conv weights
N(0, 2 / fan_in) (Kaiming normal, ReLU gain), the linear layer N(0, 1 / fan_in), every bias 0,
BatchNorm gain 1 and bias 0.

Hidden units (:meth:`ResNet.hidden_units`) are the 17 layers Dohare et al.'s ``ResGnT``
(``lop/algos/res_gnt.py``) replaces channels in, in forward order: the stem and both convs of
every block, each read by the next conv in that order (the stem and a block's second conv by
the next block's first conv, the last block's second conv by the linear layer after pooling).
The residual and shortcut paths that also read a block's output are not counted as outgoing
weights: zeroing a channel's outgoing kernels there removes it from the next block's first
conv only, as in their code. A block's second layer's activation is its output after the
residual sum and ReLU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from plasticity_rl.nn.layers import sample_weight
from plasticity_rl.registry import require

RESNET18_STAGES = (64, 128, 256, 512)
"""Output channels of the four stages (two basic blocks each)."""


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, He et al. 2016.

    Each ReLU is its own module, so forward hooks see each activation once per forward.
    Convs have biases (module docstring).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride), nn.BatchNorm2d(channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR ResNet: stem, stages of :class:`BasicBlock`, global average pool, ``output``."""

    def __init__(self, in_channels: int, out_dim: int, blocks_per_stage: Sequence[int],
                 stages: Sequence[int] = RESNET18_STAGES):  # fmt: skip
        super().__init__()
        width = stages[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for i, (channels, count) in enumerate(zip(stages, blocks_per_stage, strict=True)):
            for b in range(count):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(BasicBlock(width, channels, stride))
                width = channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.output = nn.Linear(width, out_dim)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                _init(module, 1 / math.sqrt(2) if module is self.output else 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.pool(self.blocks(self.stem(x))).flatten(1))

    def hidden_units(self) -> list[tuple[nn.Module, nn.Module, nn.Module, nn.Module]]:
        """``(incoming conv, activation, outgoing layer, BatchNorm)`` of the stem and of both
        convs of every block, in forward order (module docstring); read by
        :func:`plasticity_rl.nn.mlp.hidden_layers`."""
        stem_conv, stem_norm, stem_relu = self.stem
        layers = [(stem_conv, stem_relu, stem_norm)]
        for b in self.blocks:
            layers += [(b.conv1, b.relu1, b.bn1), (b.conv2, b.relu2, b.bn2)]
        readers = [conv for conv, _, _ in layers[1:]] + [self.output]
        return [(conv, act, reader, norm)
                for (conv, act, norm), reader in zip(layers, readers, strict=True)]  # fmt: skip


def _init(layer: nn.Conv2d | nn.Linear, init_scale: float) -> None:
    """Draw ``layer``'s weight from ``kaiming_normal`` (N(0, 2 / fan_in)) times ``init_scale``
    and zero its bias; the layer remembers both, so unit resets draw fresh weights from the
    same distribution (:func:`~plasticity_rl.nn.layers.sample_weight`)."""
    layer.init_scheme, layer.init_scale = "kaiming_normal", init_scale
    with torch.no_grad():
        layer.weight.copy_(sample_weight(layer))
        nn.init.zeros_(layer.bias)


def build_resnet18(in_shape: Sequence[int], out_dim: int) -> ResNet:
    """ResNet-18 (2 blocks per stage) for ``in_shape`` = (C, H, W) images and ``out_dim``
    outputs.

    Example:
        >>> net = build_resnet18((3, 32, 32), 100)
        >>> len(net.hidden_units()), sum(p.numel() for p in net.parameters())
        (17, 11224932)
    """
    require(len(in_shape) == 3, "resnet18.in_shape", list(in_shape), "(channels, height, width)")
    return ResNet(int(in_shape[0]), out_dim, (2, 2, 2, 2))
