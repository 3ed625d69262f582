"""L2 Init: regularise the parameters toward their initial values.

Kumar, Marklund & Van Roy 2023, "Maintaining Plasticity in Continual Learning via Regenerative
Regularization": training minimises

    loss + lambda * ||theta - theta_0||_2^2

over every trainable parameter of the model (weights and biases of every layer, the output
layer included), theta_0 being the values at attach time (the initial network when attached
before training). The gradient 2 lambda (theta - theta_0) is added before each optimiser step
(:class:`~plasticity_rl.methods.penalty.GradientPenalty`). Unlike L2 (weight decay), which pulls
toward 0, parameters the loss stops caring about drift back to their initial values.

Default lambda = 1e-2: the paper sweeps {1e-2, 1e-3, 1e-4, 1e-5} per problem and reports that
the single value 1e-2 does best across problems (Appendix A.2.5, Figure 12). With lambda = 0
the method does nothing (training is bit-identical to training without it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.methods.base import (
    METHODS,
    Model,
    check_number,
    is_batched,
    model_parameters,
)
from plasticity_rl.methods.penalty import GradientPenalty


@METHODS.register("l2_init")
class L2Init(GradientPenalty):
    """lambda * ||theta - theta_0||^2, gradient 2 lambda (theta - theta_0) (see module doc).

    Works on batched runs (each run is pulled toward its own theta_0).

    Args:
        coefficient: lambda, >= 0.
    """

    def __init__(self, coefficient: float = 1e-2):
        super().__init__("l2_init")
        self.coefficient = check_number(
            coefficient, "l2_init.coefficient", lambda v: v >= 0, "a number >= 0"
        )
        self.anchor: list[Tensor] = []
        """theta_0 per tensor of :attr:`params`."""
        self._batched = False

    def _penalised(self, model: Model, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        params = model_parameters(model)
        self.anchor = [p.detach().clone() for p in params]
        self._batched = is_batched(model)
        return params

    def penalty_value(self) -> Tensor | None:
        """lambda * sum_p ||p - p_0||^2 (summed over batched runs)."""
        return self.coefficient * sum(
            (p - a).square().sum() for p, a in zip(self.params, self.anchor, strict=True)
        )

    def penalty_gradients(self) -> list[Tensor | None]:
        """2 lambda (p - p_0) per tensor; None for lambda = 0."""
        if self.coefficient == 0:
            return [None] * len(self.params)
        return [
            2.0 * self.coefficient * (p.detach() - a)
            for p, a in zip(self.params, self.anchor, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": list(self.anchor)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.anchor = self._matching_tensors(list(state["anchor"]), "anchor")

    def _run_shaped(self) -> dict[str, Any]:
        return {"anchor": [True] * len(self.anchor)} if self._batched else {}
