"""Optimisers created by name, update transforms and optimiser-state resets."""

from plasticity_rl.optim.adam import Adam
from plasticity_rl.optim.presets import (
    OPTIMIZERS,
    attach_step_hooks,
    make_optimizer,
    sb3_optimizer_args,
)
from plasticity_rl.optim.rmsprop import RMSpropEpsInSqrt
from plasticity_rl.optim.state import OPTIMIZER_STATE_RESETS, reset_optimizer_state
from plasticity_rl.optim.transforms import clip_updates

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_STATE_RESETS",
    "Adam",
    "RMSpropEpsInSqrt",
    "attach_step_hooks",
    "clip_updates",
    "make_optimizer",
    "reset_optimizer_state",
    "sb3_optimizer_args",
]
