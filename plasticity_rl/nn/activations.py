"""Activation functions created by name.

``make_activation("relu")`` or ``make_activation({"name": "hard_ash", "alpha": 3.0})`` returns an
``nn.Module``. The sparse activations (Top-K, ASH, Hard ASH, LWTA) live in
:mod:`plasticity_rl.nn.sparse` and register themselves here.

Concatenating activations (:class:`CReLU`, :class:`Fourier`) map each pre-activation z_j to
``features_per_unit = 2`` output features, ``h = [f_1(z), f_2(z)]`` along the last dim, so the
layer after them has twice the inputs (:func:`~plasticity_rl.nn.mlp.build_mlp` sizes it). Unit
j of such a layer is still row j of the incoming weight; its features are h_j and h_{j+n}
(n units), read by the outgoing weight's columns j and j + n
(:class:`~plasticity_rl.nn.mlp.HiddenLayer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from plasticity_rl.registry import Registry, split_spec

ACTIVATIONS: Registry[nn.Module] = Registry("activation")

for _name, _cls in {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "identity": nn.Identity,
    "linear": nn.Identity,
}.items():
    ACTIVATIONS.register(_name)(_cls)


class CReLU(nn.Module):
    """Concatenated ReLU, h = [relu(z), relu(-z)] (Shang et al. 2016, "Understanding and
    improving convolutional neural networks via concatenated rectified linear units"; kept
    plastic in Abbas et al. 2023, "Loss of plasticity in continual deep reinforcement learning").

    Every z_j != 0 gives one non-zero feature, so a unit is silent only where z_j = 0.
    """

    features_per_unit = 2

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([torch.relu(z), torch.relu(-z)], dim=-1)


class Fourier(nn.Module):
    """Deep Fourier features, h = [sin(z), cos(z)] (Lewandowski et al. 2024, "Plastic learning
    with deep Fourier features", ICLR 2025): each pre-activation gives a sine and a cosine
    feature, with no frequency scale; sin^2 z_j + cos^2 z_j = 1, so a unit's pair never vanishes
    and one of its two features is always near its linear regime. The pairing follows the
    paper's text ("the concatenation of a sine and cosine in every layer"); the authors' code
    was not available to us. It has no Kaiming gain here: use an init other than
    ``kaiming_uniform_by_activation``.
    """

    features_per_unit = 2

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([torch.sin(z), torch.cos(z)], dim=-1)


ACTIVATIONS.register("crelu")(CReLU)
ACTIVATIONS.register("fourier")(Fourier)


def features_per_unit(activation: nn.Module) -> int:
    """How many output features the activation makes of each pre-activation (1 unless it
    concatenates, as :class:`CReLU` and :class:`Fourier` do: 2)."""
    return int(getattr(activation, "features_per_unit", 1))


ActivationSpec = str | Mapping[str, Any] | type[nn.Module]


def make_activation(spec: ActivationSpec, **kwargs: Any) -> nn.Module:
    """Create an activation module from a name, a ``{name: ..., **kwargs}`` mapping or a class.

    Example:
        >>> make_activation({"name": "leaky_relu", "negative_slope": 0.1})
        LeakyReLU(negative_slope=0.1)
    """
    if isinstance(spec, type):
        return ACTIVATIONS.create(spec, **kwargs)
    name, spec_kwargs = split_spec(spec, "activation")
    return ACTIVATIONS.create(name, **{**spec_kwargs, **kwargs})
