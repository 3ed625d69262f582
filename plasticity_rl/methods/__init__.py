"""Plasticity interventions behind one interface: create by name, attach to model + optimiser.

Importing this package registers every method in :data:`METHODS`.
"""

from plasticity_rl.methods.base import (
    METHODS,
    HiddenLayerMethod,
    Method,
    MethodHandle,
    WeightLayerMethod,
    attach_methods,
    make_method,
    make_methods,
    reset_layer,
    reset_units,
    resolve_hidden_layers,
)
from plasticity_rl.methods.c_chain import CChain
from plasticity_rl.methods.continual_backprop import ContinualBackprop
from plasticity_rl.methods.efficient_packnet import EfficientPackNet
from plasticity_rl.methods.ewc import EWC
from plasticity_rl.methods.hare_tortoise import HareTortoise
from plasticity_rl.methods.l2_init import L2Init
from plasticity_rl.methods.mas import MAS
from plasticity_rl.methods.neuronal_decay import NeuronalDecay
from plasticity_rl.methods.parseval import Parseval
from plasticity_rl.methods.penalty import (
    GradientPenalty,
    QuadraticPenalty,
    SampledImportancePenalty,
)
from plasticity_rl.methods.plasticity_injection import PlasticityInjection
from plasticity_rl.methods.redo import ReDo, ReGraMa
from plasticity_rl.methods.replay import Replay
from plasticity_rl.methods.reset_layers import ResetLayers
from plasticity_rl.methods.self_normalized_resets import SelfNormalizedResets
from plasticity_rl.methods.shrink_and_perturb import ShrinkAndPerturb
from plasticity_rl.methods.si import SI
from plasticity_rl.methods.weight_constraints import NormalizeAndProject, WeightClipping

__all__ = [
    "METHODS",
    "CChain",
    "ContinualBackprop",
    "EfficientPackNet",
    "EWC",
    "GradientPenalty",
    "HareTortoise",
    "HiddenLayerMethod",
    "L2Init",
    "WeightLayerMethod",
    "MAS",
    "Method",
    "MethodHandle",
    "NeuronalDecay",
    "NormalizeAndProject",
    "Parseval",
    "PlasticityInjection",
    "QuadraticPenalty",
    "ReDo",
    "ReGraMa",
    "Replay",
    "ResetLayers",
    "SI",
    "SampledImportancePenalty",
    "SelfNormalizedResets",
    "ShrinkAndPerturb",
    "WeightClipping",
    "attach_methods",
    "make_method",
    "make_methods",
    "reset_layer",
    "reset_units",
    "resolve_hidden_layers",
]
