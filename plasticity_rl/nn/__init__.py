"""Layers created by name, shared by the RL and the supervised side."""

from plasticity_rl.nn import sparse  # noqa: F401  (registers the sparse activations)
from plasticity_rl.nn.activations import ACTIVATIONS, make_activation
from plasticity_rl.nn.layers import (
    INIT_SCHEMES,
    PowerProp,
    SDMLinear,
    UnitNormRows,
    layer_parameter,
    make_linear,
    register_projections,
    sample_weight,
    set_weight,
)
from plasticity_rl.nn.mlp import MLP, HiddenLayer, MLPConfig, build_mlp, hidden_layers

__all__ = [
    "ACTIVATIONS",
    "INIT_SCHEMES",
    "MLP",
    "HiddenLayer",
    "MLPConfig",
    "PowerProp",
    "SDMLinear",
    "UnitNormRows",
    "build_mlp",
    "hidden_layers",
    "layer_parameter",
    "make_activation",
    "make_linear",
    "register_projections",
    "sample_weight",
    "set_weight",
]
