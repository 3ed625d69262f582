"""Parseval regularisation: keep the hidden layers' weight matrices close to orthogonal.

Chung et al. 2024, "Parseval Regularization for Continual Reinforcement
Learning" (NeurIPS): training minimises

    loss + lambda * sum_l (w_ref / n_l)^2 * ||W_l W_l^T - s I||_F^2

over the hidden layers l (every linear layer of each network but its last, the output layer),
W_l the ``(n_l, fan_in)`` effective weight (rows are units), I the n_l x n_l identity. Its
gradient with respect to W_l is 4 lambda (w_ref / n_l)^2 (W_l W_l^T - s I) W_l; it is added
before each optimiser step (:class:`~plasticity_rl.methods.penalty.GradientPenalty`, by autograd,
so a parametrized layer gets the gradient of its stored tensor).

Defaults are those of the authors' code (``parseval_reg/agent.py`` and ``main.py`` of
github.com/wechu/parseval_reg): lambda = 1e-3 (their MetaWorld and gridworld setting; 1e-4 on
LunarLander and Quadruped), s = 2 (the square of the orthogonal init gain sqrt(2) their
networks start from: ``scale = 2`` when no ``init_gain`` is given), and the width factor
(64 / n_l)^2 (``(64 / net_width)**2``: "the original parseval_reg was tuned for width 64"), so
lambda keeps its meaning for wider layers; ``reference_width: null`` drops the factor. Their
code regularises the hidden layers of the policy-mean and value networks, not the output
layers, as here; its optional diagonal layers (``add_diag_layer``, used on MetaWorld) are an
architecture change this method does not make. With lambda = 0 the method does nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plasticity_rl.methods.base import METHODS, Model, check_count, check_number, weight_layers
from plasticity_rl.methods.penalty import GradientPenalty
from plasticity_rl.nn.layers import layer_parameter, weight_shape


@METHODS.register("parseval")
class Parseval(GradientPenalty):
    """lambda sum_l (w_ref / n_l)^2 ||W_l W_l^T - s I||_F^2 over hidden layers (module doc).

    Works on batched runs (each run's W_l separately; the penalty is summed over runs).

    Args:
        coefficient: lambda, >= 0.
        scale: s, > 0: the target Gram matrix is s I.
        reference_width: w_ref, the width lambda was tuned for; null: no width factor.
    """

    def __init__(
        self, coefficient: float = 1e-3, scale: float = 2.0, reference_width: int | None = 64
    ):
        super().__init__("parseval")
        self.coefficient = check_number(
            coefficient, "parseval.coefficient", lambda v: v >= 0, "a number >= 0"
        )
        self.scale = check_number(scale, "parseval.scale", lambda v: v > 0, "a number > 0")
        if reference_width is not None:
            reference_width = check_count(reference_width, "parseval.reference_width", 1)
        self.reference_width = reference_width
        self.layers: list[nn.Linear] = []

    def _penalised(self, model: Model, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        self.layers = weight_layers(model, output_layers=False)
        return [layer_parameter(layer) for layer in self.layers]

    def layer_factor(self, layer: nn.Linear) -> float:
        """(w_ref / n_l)^2, or 1 without a reference width."""
        if self.reference_width is None:
            return 1.0
        return (self.reference_width / weight_shape(layer)[0]) ** 2

    def penalty_value(self) -> Tensor | None:
        """lambda sum_l (w_ref / n_l)^2 ||W_l W_l^T - s I||_F^2; None for lambda = 0."""
        if self.coefficient == 0 or not self.layers:
            return None
        total = 0.0
        for layer in self.layers:
            w = layer.weight.flatten(1) if isinstance(layer, nn.Conv2d) else layer.weight
            identity = torch.eye(w.shape[-2], dtype=w.dtype, device=w.device)
            gram = w @ w.transpose(-1, -2) - self.scale * identity
            total = total + self.layer_factor(layer) * gram.square().sum()
        return self.coefficient * total
