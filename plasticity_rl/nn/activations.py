"""Activation functions created by name.

``make_activation("relu")`` or ``make_activation({"name": "hard_ash", "alpha": 3.0})`` returns an
``nn.Module``. The sparse activations (Top-K, ASH, Hard ASH, LWTA) live in
:mod:`plasticity_rl.nn.sparse` and register themselves here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

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
