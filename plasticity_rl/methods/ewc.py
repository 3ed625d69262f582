"""Elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting
in neural networks", PNAS), in its online form.

After each task the diagonal empirical Fisher of the task is estimated on ``samples`` of its
training examples with their true labels,

    F_i = (1/N) sum_n (d log p(y_n | x_n) / d theta_i)^2,   log p = log_softmax(logits / T),

and training on later tasks minimises loss + (lambda / 2) sum_i F_i (theta_i - theta*_i)^2
(:class:`~plasticity_rl.methods.penalty.QuadraticPenalty`, added as a gradient pre-hook).
With ``accumulate="sum"`` the Fishers of all tasks are summed and theta* is the parameters at
the latest task end (online EWC with gamma = 1, Schwarz et al. 2018 "Progress & Compress",
instead of the paper's one penalty per task with its own anchor); ``"replace"`` keeps only the
latest task's Fisher. Only the task's ``active_classes`` logits enter the softmax.

The softmax temperature T follows Bricken et al. 2023 ("Sparse Distributed Memory is a
Continual Learner"): with saturated softmax outputs p(y | x) ~ 1 the gradients of log p, and so
the Fisher, vanish; computing them from logits / T with T > 1 keeps them informative.
T = 1 is plain EWC.

Defaults: lambda = 100 (tune per stream; values of 1e2 to 1e4 are common on Permuted MNIST),
``samples`` = 1000 examples per task.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plasticity_rl.methods.base import METHODS, check_number
from plasticity_rl.methods.penalty import SampledImportancePenalty


@METHODS.register("ewc")
class EWC(SampledImportancePenalty):
    """(lambda / 2) sum_i F_i (theta_i - theta*_i)^2 with the empirical Fisher F (module doc).

    Args:
        coefficient: lambda, >= 0.
        samples: training examples per task for the Fisher; None = all of them.
        softmax_temperature: T > 0 in log_softmax(logits / T).
        accumulate: ``"sum"`` (online EWC) or ``"replace"`` (latest task only).
        seed: seed of the draw of the Fisher examples.
    """

    def __init__(
        self,
        coefficient: float = 100.0,
        samples: int | None = 1000,
        softmax_temperature: float = 1.0,
        accumulate: str = "sum",
        seed: int = 0,
    ):
        strength = check_number(coefficient, "ewc.coefficient", lambda v: v >= 0, "a number >= 0")
        super().__init__(strength, samples, accumulate, seed, "ewc")
        self.softmax_temperature = check_number(
            softmax_temperature, "ewc.softmax_temperature", lambda v: v > 0, "a number > 0"
        )

    def _sample_value(self, logits: Tensor, target: Tensor) -> Tensor:
        """log p(y | x) = log_softmax(logits / T)[y]."""
        log_p = torch.log_softmax(logits / self.softmax_temperature, dim=-1)
        return log_p.gather(-1, target.unsqueeze(-1)).sum()

    def _importance_of(self, gradient: Tensor) -> Tensor:
        return gradient.square()
