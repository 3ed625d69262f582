"""Self-normalized resets (SNR): reset a unit whose silence is improbable at its own firing rate.

Farias & Jozefiak 2025, "Self-Normalized Resets for Plasticity in Continual Learning" (ICLR).
A unit fires on an example when its activation is > 0. For each hidden unit j the method
counts, over the training forwards since the unit was (re)initialised,

    a_j  its silence: examples since it last fired (0 when it fired in the last batch; a batch
         without a firing adds its size, as the authors' code counts it),
    f_j  the examples it fired on, and n_j all its examples,

and estimates its firing rate mu_j = f_j / n_j (a unit that has not fired since its
(re)initialisation gets its layer's rate, sum_k f_k / sum_k n_k). If firings were independent
draws with probability mu_j, a silence of a_j examples would have probability
(1 - mu_j)^a_j; after every optimiser step the units with

    (1 - mu_j)^a_j  <  1 - eta          (a_j beyond the eta-quantile of their silences)

are reset (:func:`~plasticity_rl.methods.base.reset_units`: fresh incoming weights, zero
outgoing weights) and their counts start again. eta, the rejection percentile, is the only
hyperparameter; 0.99 is the default of the authors' code. Batched runs count and reset their
own units. Since n_j includes the silence, (1 - mu_j)^a_j tends to exp(-f_j) as the silence
grows: a unit that fired fewer than ln(1 / (1 - eta)) times (5 at eta = 0.99) is not reset,
and a unit that has just been reset is not thrown out by its first silent example.

This is the test of the paper's Algorithm 1. The authors' released code (Permuted MNIST)
instead gives each unit a silence threshold that it re-estimates every 16 tasks as the eta-
quantile of the unit's recorded silences (contracted to it, or doubled, within [100, tau_max]
examples); that task-boundary schedule is not implemented here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.methods.base import METHODS, HiddenLayerMethod, check_number, reset_units
from plasticity_rl.nn.layers import layer_parameter, run_shape, with_run_dim
from plasticity_rl.optim.state import check_optimizer_state_mode

COUNTS = ("silence", "fires", "examples")
"""Per-unit counts of each layer: a_j, f_j and n_j of the module docstring."""


@METHODS.register("self_normalized_resets")
class SelfNormalizedResets(HiddenLayerMethod):
    """Reset units whose current silence has probability < 1 - eta at their firing rate.

    Args:
        percentile: eta, the rejection percentile in (0, 1).
        optimizer_state: what happens to the reset weights' optimiser state (see
            :data:`plasticity_rl.optim.state.OPTIMIZER_STATE_RESETS`).
    """

    counter = "silence_resets"

    def __init__(self, percentile: float = 0.99, optimizer_state: str = "zero_moments"):
        super().__init__()
        self.percentile = check_number(percentile, "self_normalized_resets.percentile",
                                       lambda v: 0 < v < 1, "a number in (0, 1)")  # fmt: skip
        check_optimizer_state_mode(optimizer_state, "self_normalized_resets.optimizer_state")
        self.optimizer_state = optimizer_state
        self.counts: dict[str, dict[str, Tensor]] = {}
        """Per layer, the int64 counts of :data:`COUNTS`, with the layer's run dims."""

    def _setup(self) -> None:
        for layer in self.layers:
            device = layer_parameter(layer.incoming).device
            zeros = torch.zeros(*run_shape(layer.incoming), layer.width, dtype=torch.long,
                                device=device)  # fmt: skip
            self.counts[layer.name] = {key: zeros.clone() for key in COUNTS}

    def _after_step(self, activations: dict[str, Tensor]) -> None:
        for layer in self.layers:
            if layer.name not in activations:
                continue
            counts = {key: with_run_dim(count, layer.incoming)
                      for key, count in self.counts[layer.name].items()}  # fmt: skip
            h = activations[layer.name].reshape(counts["silence"].shape[0], -1, layer.width)
            self._count(counts, h)
            units = self.improbable_silence(counts["silence"], counts["fires"], counts["examples"])
            if units.any():
                units = units.view(self.counts[layer.name]["silence"].shape)
                reset_units(layer, units, self.optimizer, self.optimizer_state)
                for count in self.counts[layer.name].values():
                    count.masked_fill_(units, 0)
                self._counts[layer.name] += units.sum(-1)

    @staticmethod
    def _count(counts: dict[str, Tensor], h: Tensor) -> None:
        """Add one batch ``h`` ``(S, B, units)`` to the ``(S, units)`` counts, in place."""
        firing = h > 0
        fired = firing.any(1)
        batch = h.shape[1]
        counts["fires"] += firing.sum(1)
        counts["examples"] += batch
        counts["silence"].add_(batch).masked_fill_(fired, 0)

    def improbable_silence(self, silence: Tensor, fires: Tensor, examples: Tensor) -> Tensor:
        """Units with (1 - mu_j)^a_j < 1 - eta (module doc), from ``(S, units)`` counts."""
        layer_rate = fires.sum(-1, keepdim=True) / examples.sum(-1, keepdim=True).clamp_min(1)
        rate = torch.where(fires > 0, fires / examples.clamp_min(1), layer_rate).double()
        log_probability = silence * torch.log1p(-rate)  # log (1 - mu)^a
        return (silence > 0) & (log_probability < math.log1p(-self.percentile))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["units"] = {name: {k: v.clone() for k, v in counts.items()}
                          for name, counts in self.counts.items()}  # fmt: skip
        return state

    def _run_shaped(self) -> dict[str, Any]:
        return {**super()._run_shaped(),
                "units": dict.fromkeys(self.counts, dict.fromkeys(COUNTS, True))}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for name, saved in state["units"].items():
            for key, count in self.counts[name].items():
                count.copy_(saved[key])
