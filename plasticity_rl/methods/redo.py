"""ReDo: periodically recycle dormant hidden units; ReGraMa: the same, scored by gradients.

Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning". Every
``period`` optimiser steps, for each hidden layer with activations h (batch x units) from the
last training forward, the units with normalised score

    s_j = mean_i |h_ij| / ((1/n_units) sum_k mean_i |h_ik|)  <=  tau

(:func:`plasticity_rl.metrics.network.dormancy_scores`, the formula of the ``dormant_ratio``
metric; a unit of a concatenating activation such as CReLU, with k features, scores the mean of
its features' scores, which is the formula on its summed activity sum_f mean_i |h_if|) get
fresh incoming weights and zero outgoing weights
(:func:`~plasticity_rl.methods.base.reset_units`); in a batched network each run scores and
resets its own units. Dohare et al. 2024 run it on PPO with
tau = 0.1 and a period of 100 optimiser steps, the defaults here.

``score_over``: ``batch`` (the default, as the paper and Dohare et al.'s PPO) scores the step's
batch; ``period`` scores every example since the last check (mean_i over all of them, the
magnitudes summed step by step), an option of this project for streams of one example per
step, where one example's ReLU zeros would make a third or more of the units look dormant.

ReGraMa (Liu et al. 2025, "Measure gradients not activations! Enhancing neuronal activity in
deep reinforcement learning") is ReDo with the score computed from the gradient of the unit's
incoming weights at that step, s_j = mean_l |g_jl| / ((1/n_units) sum_k mean_l |g_kl|)
(:func:`plasticity_rl.metrics.network.grama_scores` of the incoming-weight gradient,
:func:`~plasticity_rl.metrics.network.hidden_layer_grama_scores`): a unit is dormant when it stops
learning, whatever its activation. Only :meth:`ReDo._magnitudes` differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from plasticity_rl.methods.base import (
    METHODS,
    HiddenLayerMethod,
    check_count,
    check_number,
    reset_units,
)
from plasticity_rl.metrics.network import (
    activation_magnitudes,
    hidden_layer_gradient_magnitudes,
    normalised_by_layer_mean,
)
from plasticity_rl.nn.layers import layer_parameter, run_shape
from plasticity_rl.nn.mlp import HiddenLayer
from plasticity_rl.optim.state import check_optimizer_state_mode
from plasticity_rl.registry import require

SCORE_OVER = ("batch", "period")
"""What ReDo's scores average over (module doc)."""


@METHODS.register("redo")
class ReDo(HiddenLayerMethod):
    """Reset tau-dormant units every ``period`` optimiser steps (see module doc).

    Args:
        tau: dormancy threshold; units with score s_j <= tau are reset.
        period: optimiser steps between two resets (the first is after ``period`` steps).
        optimizer_state: what happens to the reset weights' optimiser state (see
            :data:`plasticity_rl.optim.state.OPTIMIZER_STATE_RESETS`).
    """

    counter = "resets"
    name = "redo"
    """The registered name, the prefix of configuration errors."""

    def __init__(self, tau: float = 0.1, period: int = 100, optimizer_state: str = "zero_moments",
                 score_over: str = "batch"):  # fmt: skip
        super().__init__()
        self.tau = check_number(tau, f"{self.name}.tau", lambda v: v >= 0, "a number >= 0")
        self.period = check_count(period, f"{self.name}.period", 1)
        check_optimizer_state_mode(optimizer_state, f"{self.name}.optimizer_state")
        self.optimizer_state = optimizer_state
        require(score_over in SCORE_OVER, f"{self.name}.score_over", score_over, SCORE_OVER)
        self.score_over = score_over
        self.steps = 0
        """Optimiser steps since attach."""
        self.sums: dict[str, Tensor] = {}
        """Per layer, the features' magnitudes summed over this period's steps (``period``)."""

    def _after_step(self, activations: dict[str, Tensor]) -> None:
        self.steps += 1
        if self.score_over == "period":
            for layer in self.layers:
                magnitudes = self._magnitudes(layer, activations)
                if magnitudes is not None:
                    total = self.sums.get(layer.name)
                    self.sums[layer.name] = magnitudes if total is None else total + magnitudes
        if self.steps % self.period != 0:
            return
        for layer in self.layers:
            if self.score_over == "period":
                magnitudes = self.sums.pop(layer.name, None)
            else:
                magnitudes = self._magnitudes(layer, activations)
            if magnitudes is None:
                continue
            # a unit with several features (CReLU's two) scores the mean of their scores
            scores = layer.per_unit(normalised_by_layer_mean(magnitudes)) / layer.features_per_unit
            units = scores <= self.tau
            if units.any():
                reset_units(layer, units, self.optimizer, self.optimizer_state)
                self._counts[layer.name] += units.sum(-1)

    def _magnitudes(self, layer: HiddenLayer, activations: dict[str, Tensor]) -> Tensor | None:
        """Each feature's mean |activation| over the step's batch, with the layer's run dims (a
        batched layer: every run its own); None when the layer has nothing this step."""
        if layer.name not in activations:
            return None
        runs = run_shape(layer.incoming)
        h = activations[layer.name].reshape(*runs, -1, layer.features)
        return activation_magnitudes(h, run_dims=len(runs))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps": self.steps,
                "sums": {name: total.clone() for name, total in self.sums.items()}}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps = int(state["steps"])
        devices = {layer.name: layer_parameter(layer.incoming).device for layer in self.layers}
        self.sums = {name: total.to(devices[name]) for name, total in state["sums"].items()}

    def _run_shaped(self) -> dict[str, Any]:
        return {**super()._run_shaped(), "sums": {layer.name: True for layer in self.layers}}


@METHODS.register("regrama")
class ReGraMa(ReDo):
    """ReDo with GraMa scores: reset units whose incoming-weight gradient magnitude, relative
    to the layer's mean, is <= tau (Liu et al. 2025; see module doc). Same arguments and
    defaults as :class:`ReDo`.

    It reads each incoming weight's ``.grad`` after the optimiser step, which the fused SGD
    step of the hand-written backward never materialises, so it asks for autograd.
    """

    name = "regrama"
    counter = "grama_resets"
    needs_autograd = True

    def _magnitudes(self, layer: HiddenLayer, activations: dict[str, Tensor]) -> Tensor | None:
        return hidden_layer_gradient_magnitudes(layer)
