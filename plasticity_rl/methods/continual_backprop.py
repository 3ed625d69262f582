"""Continual backprop: keep replacing a small fraction of the least useful mature hidden units.

Dohare et al. 2024, "Loss of plasticity in deep continual learning", Nature, Algorithm 1.

After every optimiser step, for each hidden layer with activations h (batch x units) from the
last training forward and outgoing weights w_out (next layer's weight, after the step):

    a_j <- a_j + 1                                               (age, in optimiser steps)
    u_j <- eta u_j + (1 - eta) mean_i |h_ij| agg_k |w_out[k, j]|  (contribution utility)
    f_j <- eta f_j + (1 - eta) mean_i h_ij                       (running mean activation)
    u^_j = u_j / (1 - eta^a_j),   f^_j = f_j / (1 - eta^a_j)     (bias-corrected)

``agg`` is the sum over outgoing weights (the paper) or their mean (the reference code).
Units with a_j > m are eligible; an accumulator gains rho * n_eligible per step, and
floor(accumulator) eligible units with the lowest u^ are replaced (and subtracted from it):
the removed unit's mean contribution w_out[:, j] f^_j is added to the next layer's bias (skipped
if that layer has no bias, so the contribution is then lost), the unit gets fresh incoming
weights and zero outgoing weights (:func:`~plasticity_rl.methods.base.reset_units`), and
u_j = f_j = a_j = 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.methods.base import (
    METHODS,
    HiddenLayerMethod,
    check_count,
    check_number,
    reset_units,
)
from plasticity_rl.nn.layers import layer_parameter
from plasticity_rl.nn.mlp import HiddenLayer
from plasticity_rl.optim.state import check_optimizer_state_mode
from plasticity_rl.registry import require

OUTGOING_AGGREGATES = ("sum", "mean")
"""How a unit's outgoing weight magnitudes enter its utility."""


@dataclass
class UnitStatistics:
    """Continual backprop's running statistics of one hidden layer (one entry per unit)."""

    utility: Tensor
    """u: running contribution utility (not bias-corrected)."""
    mean_activation: Tensor
    """f: running mean activation (not bias-corrected)."""
    age: Tensor
    """a: optimiser steps since the unit was created (int64)."""
    pending_replacements: float = 0.0
    """The accumulator: replacements owed to the layer but not yet made."""


@METHODS.register("continual_backprop")
class ContinualBackprop(HiddenLayerMethod):
    """Continual backprop: replace low-utility mature units with fresh ones (see module doc).

    Args:
        replacement_rate: rho, fraction of eligible units replaced per optimiser step.
        maturity_threshold: m, units older than m optimiser steps are eligible.
        decay_rate: eta, decay of the running utility and mean activation.
        outgoing: ``"sum"`` (paper) or ``"mean"`` (reference code) over outgoing weights.
        optimizer_state: what happens to the replaced weights' optimiser state (see
            :data:`plasticity_rl.optim.state.OPTIMIZER_STATE_RESETS`).
    """

    counter = "replacements"

    def __init__(
        self,
        replacement_rate: float = 1e-4,
        maturity_threshold: int = 100,
        decay_rate: float = 0.99,
        outgoing: str = "sum",
        optimizer_state: str = "zero_moments",
    ):
        super().__init__()
        self.replacement_rate = check_number(
            replacement_rate,
            "continual_backprop.replacement_rate",
            lambda v: 0 <= v <= 1,
            "a number in [0, 1]",
        )
        self.maturity_threshold = check_count(
            maturity_threshold, "continual_backprop.maturity_threshold", 0
        )
        self.decay_rate = check_number(
            decay_rate, "continual_backprop.decay_rate", lambda v: 0 <= v < 1, "a number in [0, 1)"
        )
        require(
            outgoing in OUTGOING_AGGREGATES,
            "continual_backprop.outgoing",
            outgoing,
            OUTGOING_AGGREGATES,
        )
        check_optimizer_state_mode(optimizer_state, "continual_backprop.optimizer_state")
        self.outgoing = outgoing
        self.optimizer_state = optimizer_state
        self.statistics: dict[str, UnitStatistics] = {}

    def _setup(self) -> None:
        for layer in self.layers:
            zeros = torch.zeros(layer.width, device=layer_parameter(layer.incoming).device)
            self.statistics[layer.name] = UnitStatistics(
                utility=zeros.clone(), mean_activation=zeros.clone(), age=zeros.long()
            )

    def _after_step(self, activations: dict[str, Tensor]) -> None:
        for layer in self.layers:
            if layer.name in activations:
                self._update_layer(layer, activations[layer.name])

    @torch.no_grad()
    def _update_layer(self, layer: HiddenLayer, h: Tensor) -> None:
        stats, eta = self.statistics[layer.name], self.decay_rate
        h = h.reshape(-1, layer.width)
        w_out = layer.outgoing.weight.detach()
        w_out_magnitude = w_out.abs().sum(0) if self.outgoing == "sum" else w_out.abs().mean(0)
        stats.age += 1
        stats.utility.mul_(eta).add_(h.abs().mean(0) * w_out_magnitude, alpha=1 - eta)
        stats.mean_activation.mul_(eta).add_(h.mean(0), alpha=1 - eta)

        eligible = torch.nonzero(stats.age > self.maturity_threshold).squeeze(1)
        stats.pending_replacements += self.replacement_rate * eligible.numel()
        n_replace = min(int(stats.pending_replacements), eligible.numel())
        if n_replace == 0:
            return
        stats.pending_replacements -= n_replace
        bias_correction = 1 - eta ** stats.age.to(stats.utility.dtype)
        corrected_utility = stats.utility[eligible] / bias_correction[eligible]
        units = eligible[torch.topk(corrected_utility, n_replace, largest=False).indices]

        if layer.outgoing.bias is not None:
            mean_activation = stats.mean_activation[units] / bias_correction[units]
            layer.outgoing.bias.add_(w_out[:, units] @ mean_activation)
        reset_units(layer, units, self.optimizer, self.optimizer_state)
        stats.utility[units] = 0.0
        stats.mean_activation[units] = 0.0
        stats.age[units] = 0
        self._counts[layer.name] += n_replace

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["layers"] = {
            name: {
                "utility": stats.utility.clone(),
                "mean_activation": stats.mean_activation.clone(),
                "age": stats.age.clone(),
                "pending_replacements": stats.pending_replacements,
            }
            for name, stats in self.statistics.items()
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for name, saved in state["layers"].items():
            stats = self.statistics[name]
            stats.utility.copy_(saved["utility"])
            stats.mean_activation.copy_(saved["mean_activation"])
            stats.age.copy_(saved["age"])
            stats.pending_replacements = float(saved["pending_replacements"])
