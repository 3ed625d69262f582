"""Memory aware synapses (Aljundi et al. 2018, "Memory Aware Synapses: Learning what (not) to
forget", ECCV).

After each task the importance of each parameter is the mean absolute gradient of the squared
L2 norm of the network's output on ``samples`` training examples of the task,

    Omega_i = (1/N) sum_n |d ||f(x_n)||_2^2 / d theta_i|,

with f the output logits (restricted to the task's ``active_classes`` when it has them); no
labels are used. Importances accumulate over tasks (``accumulate="sum"``, as in the paper) or
keep only the latest task (``"replace"``); theta* is the parameters at the latest task end.
Training on later tasks minimises loss + lambda sum_i Omega_i (theta_i - theta*_i)^2 (the
paper's form, i.e. :class:`~plasticity_rl.methods.penalty.QuadraticPenalty` with strength
2 lambda). Defaults: lambda = 1 (the paper's value), 1000 examples per task.
"""

from __future__ import annotations

from torch import Tensor

from plasticity_rl.methods.base import METHODS, check_number
from plasticity_rl.methods.penalty import SampledImportancePenalty


@METHODS.register("mas")
class MAS(SampledImportancePenalty):
    """lambda sum_i Omega_i (theta_i - theta*_i)^2, Omega = mean |grad ||f(x)||^2| (module doc).

    Args:
        coefficient: lambda, >= 0.
        samples: training examples per task for Omega; None = all of them.
        accumulate: ``"sum"`` or ``"replace"``.
        seed: seed of the draw of the examples.
    """

    def __init__(
        self,
        coefficient: float = 1.0,
        samples: int | None = 1000,
        accumulate: str = "sum",
        seed: int = 0,
    ):
        coefficient = check_number(
            coefficient, "mas.coefficient", lambda v: v >= 0, "a number >= 0"
        )
        super().__init__(2.0 * coefficient, samples, accumulate, seed, "mas")

    def _sample_value(self, logits: Tensor, target: Tensor) -> Tensor:
        """||f(x)||_2^2 (the target is not used)."""
        return logits.square().sum()

    def _importance_of(self, gradient: Tensor) -> Tensor:
        return gradient.abs()
