"""A small CNN for CIFAR built from the same activation and layer registry as the MLPs.

``conv -> act -> max-pool`` blocks, then an :class:`~plasticity_rl.nn.mlp.MLP` head built by
:func:`~plasticity_rl.nn.mlp.build_mlp`, so interventions and metrics find the head's hidden
layers exactly as in an MLP (convolutional units are not reset by CBP/ReDo).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from plasticity_rl.nn.activations import ActivationSpec, make_activation
from plasticity_rl.nn.layers import INIT_SCHEMES
from plasticity_rl.nn.mlp import MLP, build_mlp
from plasticity_rl.registry import require


class FeatureMapActivation(nn.Module):
    """Applies an activation to each sample's whole feature map, flattened to (N, C*H*W).

    For element-wise activations this is the activation itself; for the sparse ones (Top-K,
    ASH, LWTA) the units of a layer are all C*H*W positions of the map.
    """

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x.flatten(1)).view_as(x)


class CNN(nn.Module):
    """``head(flatten(features(x)))`` with ``head`` an :class:`MLP`."""

    def __init__(self, features: nn.Sequential, head: MLP):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def build_cnn(
    in_shape: Sequence[int],
    out_dim: int,
    channels: Sequence[int] = (32, 64),
    hidden_sizes: Sequence[int] = (256,),
    activation: ActivationSpec = "relu",
    *,
    kernel_size: int = 3,
    init: str = "kaiming_uniform",
    **mlp_kwargs: Any,
) -> CNN:
    """Build ``len(channels)`` conv blocks (same padding, 2x2 max-pool) and an MLP head.

    Args:
        in_shape: (C, H, W) of one input image.
        channels: output channels of each conv block.
        hidden_sizes: hidden widths of the MLP head.
        mlp_kwargs: further :func:`build_mlp` options for the head (bias, powerprop_alpha, ...).

    Example:
        >>> net = build_cnn((3, 32, 32), 10, channels=[8], hidden_sizes=[16])
        >>> net.head.hidden[0].in_features  # 8 channels x 16 x 16 after one pooling
        2048
    """
    require(len(in_shape) == 3, "cnn.in_shape", list(in_shape), "(channels, height, width)")
    require(kernel_size % 2 == 1, "cnn.kernel_size", kernel_size, "an odd integer")
    require(init in INIT_SCHEMES, "cnn.init", init, sorted(INIT_SCHEMES))
    c, h, w = in_shape
    blocks: list[nn.Module] = []
    for out_channels in channels:
        require(int(out_channels) >= 1, "cnn.channels", list(channels), "integers >= 1")
        conv = nn.Conv2d(c, int(out_channels), kernel_size, padding=kernel_size // 2)
        INIT_SCHEMES[init](conv.weight.data.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)
        blocks += [conv, FeatureMapActivation(make_activation(activation)), nn.MaxPool2d(2)]
        c, h, w = int(out_channels), h // 2, w // 2
    head = build_mlp(c * h * w, hidden_sizes, out_dim, activation, init=init, **mlp_kwargs)
    return CNN(nn.Sequential(*blocks), head)
