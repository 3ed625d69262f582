"""Neuronal decay: an L2 penalty on hidden activations, added as a gradient hook.

The activation penalty studied for the stability gap by Zhankov (TU Delft): training minimises

    loss + lambda * sum_l mean(h_l^2)

over the hidden layers l, where mean(h_l^2) averages the squared activations over the batch and
the units. The method does not change the loss (so it works inside SB3 PPO unchanged): on every
training forward (training mode, grad enabled) a tensor hook on each hidden activation output
h_l adds the penalty's gradient,

    d/dh_l [lambda * mean(h_l^2)] = lambda * 2 h_l / h_l.numel(),

to the gradient flowing into h_l, which is exactly what backpropagating the penalty term would
do. Forward values are untouched, and eval-mode / no-grad forwards are not penalised. A layer
whose output receives no gradient from the loss gets no penalty gradient either.
``coefficient`` (lambda) defaults to 1e-3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import (
    METHODS,
    Method,
    Model,
    check_number,
    on_training_forward,
    resolve_hidden_layers,
)
from plasticity_rl.nn.layers import run_shape
from plasticity_rl.nn.mlp import HiddenLayer


@METHODS.register("neuronal_decay")
class NeuronalDecay(Method):
    """Penalise lambda * sum_l mean(h_l^2) through gradient hooks (see module doc).

    Args:
        coefficient: lambda, the weight of the activation penalty.
    """

    needs_autograd = True

    def __init__(self, coefficient: float = 1e-3):
        super().__init__()
        self.coefficient = check_number(
            coefficient, "neuronal_decay.coefficient", lambda v: v >= 0, "a number >= 0"
        )
        self._penalties: dict[str, Tensor] = {}

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        # a term of the loss: also in a sharpness-aware step's pass at perturbed weights
        return on_training_forward(
            resolve_hidden_layers(model), self._add_penalty_gradient, record=False
        )

    def _add_penalty_gradient(self, layer: HiddenLayer, h: Tensor) -> None:
        if not h.requires_grad:
            return
        value = h.detach()
        # A batched network (S runs) penalises each run's own mean: sum_s lambda mean(h_s^2).
        runs = math.prod(run_shape(layer.incoming))
        self._penalties[layer.name] = self.coefficient * value.square().mean() * runs
        scale = 2.0 * self.coefficient * runs / h.numel()
        h.register_hook(lambda grad: grad + scale * value)

    @property
    def last_penalty(self) -> float:
        """lambda * sum_l mean(h_l^2) at each layer's last training forward."""
        return float(sum(p.item() for p in self._penalties.values()))

    def stats(self) -> dict[str, float]:
        """``activation_penalty`` (:attr:`last_penalty`) and ``<layer>/activation_penalty``."""
        per_layer = {f"{name}/activation_penalty": p.item() for name, p in self._penalties.items()}
        return {"activation_penalty": self.last_penalty, **per_layer}
