"""Reset layers: periodically re-initialise the last layers of every network.

Nikishin et al. 2022, "The Primacy Bias in Deep Reinforcement Learning". Every
``every_optimizer_steps`` optimiser steps, the last ``last_layers`` linear layers of each
network (of a policy and a value network alike) are drawn afresh from their init distribution,

    W <- W_new ~ init,   b <- b_new  (a new layer's bias),

and the optimiser state of their weights and biases is reset as the unit resets do
(``optimizer_state``, :data:`plasticity_rl.optim.state.OPTIMIZER_STATE_RESETS`), through
:func:`~plasticity_rl.methods.base.reset_layer`. In a batched network every run draws its own
fresh weights from its own generator.

With ``at_task_starts`` the layers are reset at the start of every task of a supervised
stream instead (or as well): Dohare et al. 2024's Continual ImageNet sets the output layer to
zero before every task (``new_heads``: ``values="zero"``, their SGD momentum kept:
``optimizer_state="keep"``), their class-incremental CIFAR-100 ``head_resetting`` draws it
afresh at every increment (``values="init"``).

The authors' code (evgenii-nikishin/rl_with_resets, commit 502ec52) resets SPR's final layer
every 20,000 agent steps on Atari 100k (``discrete_control/configs/SPR_with_resets.gin``, two
updates per step there, at most 4 resets), re-initialising the Adam moments of the reset
parameters and keeping the step count (``reset_weights`` in ``rainbow_agent.py``), and
recreates the whole SAC agent every 200,000 steps on DM Control (``train_dense.py``). The
defaults here are the SPR setting with the interval counted in optimiser steps (one reset of
the last layer every 20,000 optimiser steps, without a cap on their number) and
``zero_moments``, which is that optimiser-state reset for Adam.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import (
    METHODS,
    Method,
    Model,
    check_count,
    network_weight_layers,
    reset_layer,
)
from plasticity_rl.optim.state import check_optimizer_state_mode
from plasticity_rl.registry import require

if TYPE_CHECKING:
    from plasticity_rl.supervised.streams import Task

RESET_VALUES = ("init", "zero")
"""What a reset layer's weights and biases become."""


@METHODS.register("reset_layers")
class ResetLayers(Method):
    """Re-initialise the last ``last_layers`` layers of every network periodically.

    Args:
        last_layers: how many linear layers, counted from each network's output, are reset
            (1: the output layer).
        every_optimizer_steps: optimiser steps between two resets (the first after that many);
            null: none by steps.
        optimizer_state: what happens to the reset parameters' optimiser state.
        at_task_starts: also reset at the start of every task (supervised task streams).
        values: ``init`` (a fresh draw from the layer's init) or ``zero``.
    """

    def __init__(
        self,
        last_layers: int = 1,
        every_optimizer_steps: int | None = 20_000,
        optimizer_state: str = "zero_moments",
        at_task_starts: bool = False,
        values: str = "init",
    ):
        super().__init__()
        self.last_layers = check_count(last_layers, "reset_layers.last_layers", 1)
        self.every_optimizer_steps = None if every_optimizer_steps is None else check_count(
            every_optimizer_steps, "reset_layers.every_optimizer_steps", 1
        )  # fmt: skip
        check_optimizer_state_mode(optimizer_state, "reset_layers.optimizer_state")
        require(isinstance(at_task_starts, bool), "reset_layers.at_task_starts", at_task_starts,
                "true or false")  # fmt: skip
        require(values in RESET_VALUES, "reset_layers.values", values, RESET_VALUES)
        self.optimizer_state = optimizer_state
        self.uses_task_boundaries = at_task_starts
        self.values = values
        self.layers: list[nn.Linear] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        """Optimiser steps since attach."""
        self._resets = 0

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        self.layers = [layer for layers in network_weight_layers(model)
                       for layer in layers[-self.last_layers:]]  # fmt: skip
        self.optimizer = optimizer
        return [optimizer.register_step_post_hook(self._after_step)]

    def _after_step(self, *_: Any) -> None:
        self.steps += 1
        every = self.every_optimizer_steps
        if every is not None and self.steps % every == 0:
            self._reset()

    def on_task_start(self, task: Task, model: nn.Module) -> None:
        if self.uses_task_boundaries:
            self._reset()

    def _reset(self) -> None:
        for layer in self.layers:
            reset_layer(layer, self.optimizer, self.optimizer_state,  # type: ignore[arg-type]
                        zero=self.values == "zero")  # fmt: skip
        self._resets += 1

    def stats(self) -> dict[str, float]:
        """``{"reset_layers/resets": n}``: resets (all chosen layers at once) since last call."""
        resets, self._resets = self._resets, 0
        return {"reset_layers/resets": float(resets)}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
