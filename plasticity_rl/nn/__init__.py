"""Layers created by name, shared by the RL and the supervised side."""

from plasticity_rl.nn import sparse  # noqa: F401  (registers the sparse activations)
from plasticity_rl.nn.activations import ACTIVATIONS, make_activation
from plasticity_rl.nn.batched import (
    build_runs,
    run_module,
    run_state_dict,
    runs_of,
    stack_run_state_dicts,
    stack_runs,
)
from plasticity_rl.nn.layers import (
    INIT_SCHEMES,
    BatchedLinear,
    NonNegLinear,
    PowerProp,
    SDMLinear,
    UnitNormRows,
    layer_parameter,
    make_linear,
    register_projections,
    run_generators,
    run_shape,
    sample_normal,
    sample_weight,
    set_weight,
    unit_selector,
    with_run_dim,
)
from plasticity_rl.nn.mlp import MLP, HiddenLayer, MLPConfig, build_mlp, hidden_layers

__all__ = [
    "ACTIVATIONS",
    "BatchedLinear",
    "INIT_SCHEMES",
    "MLP",
    "HiddenLayer",
    "MLPConfig",
    "NonNegLinear",
    "PowerProp",
    "SDMLinear",
    "UnitNormRows",
    "build_mlp",
    "build_runs",
    "hidden_layers",
    "layer_parameter",
    "make_activation",
    "make_linear",
    "register_projections",
    "run_generators",
    "run_module",
    "run_shape",
    "run_state_dict",
    "stack_run_state_dicts",
    "runs_of",
    "sample_normal",
    "sample_weight",
    "set_weight",
    "stack_runs",
    "unit_selector",
    "with_run_dim",
]
