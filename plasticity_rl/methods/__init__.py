"""Plasticity interventions behind one interface: create by name, attach to model + optimiser.

Importing this package registers every method in :data:`METHODS`.
"""

from plasticity_rl.methods.base import (
    METHODS,
    HiddenLayerMethod,
    Method,
    MethodHandle,
    attach_methods,
    make_method,
    make_methods,
    reset_units,
    resolve_hidden_layers,
)
from plasticity_rl.methods.continual_backprop import ContinualBackprop
from plasticity_rl.methods.neuronal_decay import NeuronalDecay
from plasticity_rl.methods.redo import ReDo
from plasticity_rl.methods.shrink_and_perturb import ShrinkAndPerturb

__all__ = [
    "METHODS",
    "ContinualBackprop",
    "HiddenLayerMethod",
    "Method",
    "MethodHandle",
    "NeuronalDecay",
    "ReDo",
    "ShrinkAndPerturb",
    "attach_methods",
    "make_method",
    "make_methods",
    "reset_units",
    "resolve_hidden_layers",
]
