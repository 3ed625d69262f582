"""A small CNN built from the same activation and layer registry as the MLPs.

``conv -> act -> max-pool`` blocks, then an :class:`~plasticity_rl.nn.mlp.MLP` head built by
:func:`~plasticity_rl.nn.mlp.build_mlp`. Interventions and metrics find every conv block's
channels (``hidden1`` ... for the blocks, the last one read by the head's first linear layer
through the flattened map) and then the head's hidden layers, as in an MLP. With
``padding="valid"`` and ``kernel_sizes`` (5, 3, 3), channels (32, 64, 128) and a head of
(128, 128) it is the ConvNet of Dohare et al. 2024's Continual ImageNet (``lop/nets/conv_net.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from plasticity_rl.nn.activations import ActivationSpec, make_activation
from plasticity_rl.nn.layers import INIT_SCHEMES, sample_bias, sample_weight
from plasticity_rl.nn.mlp import MLP, build_mlp
from plasticity_rl.registry import require

CONV_PADDINGS = ("same", "valid")


class FeatureMapActivation(nn.Module):
    """Applies an activation to each sample's whole feature map, flattened to (N, C*H*W).

    For element-wise activations this is the activation itself; for the sparse ones (Top-K,
    ASH, LWTA) the units of a layer are all C*H*W positions of the map. Hidden-layer discovery
    treats it as one activation module (``wraps_activation``), whose output is the map.
    """

    wraps_activation = True

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
    kernel_sizes: Sequence[int] | None = None,
    padding: str = "same",
    init: str = "kaiming_uniform",
    **mlp_kwargs: Any,
) -> CNN:
    """Build ``len(channels)`` conv blocks (conv, activation, 2x2 max-pool) and an MLP head.

    Args:
        in_shape: (C, H, W) of one input image.
        channels: output channels of each conv block.
        hidden_sizes: hidden widths of the MLP head.
        kernel_size: the kernel size of every block, unless ``kernel_sizes`` gives one each.
        padding: ``same`` (zero padding keeps the size; odd kernels) or ``valid`` (none).
        init: the weight init of every layer (:data:`~plasticity_rl.nn.layers.INIT_SCHEMES`),
            conv biases as :func:`~plasticity_rl.nn.layers.sample_bias` draws them (PyTorch's
            for ``default``, zero otherwise); units reset later draw from the same.
        mlp_kwargs: further :func:`build_mlp` options for the head (bias, powerprop_alpha, ...).

    Example:
        >>> net = build_cnn((3, 32, 32), 10, channels=[8], hidden_sizes=[16])
        >>> net.head.hidden[0].in_features  # 8 channels x 16 x 16 after one pooling
        2048
    """
    require(len(in_shape) == 3, "cnn.in_shape", list(in_shape), "(channels, height, width)")
    require(padding in CONV_PADDINGS, "cnn.padding", padding, CONV_PADDINGS)
    kernels = [kernel_size] * len(channels) if kernel_sizes is None else list(kernel_sizes)
    require(len(kernels) == len(channels), "cnn.kernel_sizes", kernel_sizes,
            f"one kernel size per conv block ({len(channels)})")  # fmt: skip
    for k in kernels:
        require(padding == "valid" or k % 2 == 1, "cnn.kernel_size", k,
                "an odd integer (same padding)")  # fmt: skip
    require(init in INIT_SCHEMES, "cnn.init", init, sorted(INIT_SCHEMES))
    c, h, w = in_shape
    blocks: list[nn.Module] = []
    for out_channels, k in zip(channels, kernels, strict=True):
        require(int(out_channels) >= 1, "cnn.channels", list(channels), "integers >= 1")
        shrink = 0 if padding == "same" else k - 1
        room = f"no more blocks than a {in_shape[1]}x{in_shape[2]} image has room for"
        require(h - shrink >= 2 and w - shrink >= 2, "cnn.channels", list(channels), room)
        conv = nn.Conv2d(c, int(out_channels), k, padding=k // 2 if padding == "same" else 0)
        conv.init_scheme, conv.init_scale = init, 1.0
        with torch.no_grad():
            conv.weight.copy_(sample_weight(conv))
            conv.bias.copy_(sample_bias(conv))
        blocks += [conv, FeatureMapActivation(make_activation(activation)), nn.MaxPool2d(2)]
        c, h, w = int(out_channels), (h - shrink) // 2, (w - shrink) // 2
    head = build_mlp(c * h * w, hidden_sizes, out_dim, activation, init=init, **mlp_kwargs)
    return CNN(nn.Sequential(*blocks), head)
