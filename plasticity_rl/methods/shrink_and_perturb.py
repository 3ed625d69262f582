"""Shrink and perturb: scale every weight down a little and add a little noise.

Ash & Adams 2020, "On Warm-Starting Neural Network Training"; applied after every optimiser step
as in Dohare et al. 2024 ("Loss of plasticity in deep continual learning", Nature). Every
``every_optimizer_steps`` optimiser steps, each trainable weight and bias tensor p of every
``nn.Linear`` and ``nn.Conv2d`` of the model becomes

    p <- (1 - shrink) p + sigma * noise

with noise ~ N(0, 1) (``noise="gaussian"``), or, for weights with ``noise="init"``, a fresh
draw from the layer's init distribution (:func:`plasticity_rl.nn.layers.sample_weight`; biases
still get N(0, 1)). For a parametrized layer (weight norm, Powerprop) it acts on the stored
parameter behind the weight (:func:`~plasticity_rl.nn.layers.layer_parameter`), not on the
effective weight. Noise comes from torch's global RNG, drawn layer by layer in registration
order, weight before bias. In a batched network (:mod:`plasticity_rl.nn.batched`) run s draws
the same sequence from its own generator (:func:`~plasticity_rl.nn.layers.sample_normal`,
:func:`~plasticity_rl.nn.layers.sample_weight`), so it gets exactly the noise of a single run
seeded the same way; shrink and noise_std are one value for all runs.

Normalisation layers' gains and biases are left alone; Dohare et al.'s CIFAR code perturbs
them too (``inject_noise`` adds noise to every parameter), a difference of 1e-5-sized noise on
values near 1 and 0.

Defaults: shrink = 1e-4 and sigma = 1e-5 per step, the order of the L2 decay (1e-4) and noise
scales Dohare et al. 2024 use; tune per task. With shrink = 0 and sigma = 0 the method does
nothing (no RNG draw either), so training is bit-identical to training without it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn

from plasticity_rl.methods.base import METHODS, WeightLayerMethod, check_number
from plasticity_rl.nn.layers import layer_parameter, sample_normal, sample_weight
from plasticity_rl.registry import require

NOISE_KINDS = ("gaussian", "init")
"""Where the perturbation of the weights comes from."""


@METHODS.register("shrink_and_perturb")
class ShrinkAndPerturb(WeightLayerMethod):
    """p <- (1 - shrink) p + noise_std * noise after optimiser steps (see module doc).

    Args:
        shrink: fraction of every parameter removed per application, in [0, 1).
        noise_std: sigma, the scale of the added noise.
        noise: ``"gaussian"`` (N(0, 1)) or ``"init"`` (weights: a fresh init draw).
        every_optimizer_steps: apply after every this many optimiser steps.
    """

    def __init__(
        self,
        shrink: float = 1e-4,
        noise_std: float = 1e-5,
        noise: str = "gaussian",
        every_optimizer_steps: int = 1,
    ):
        super().__init__(every_optimizer_steps, "shrink_and_perturb")
        self.shrink = check_number(
            shrink, "shrink_and_perturb.shrink", lambda v: 0 <= v < 1,
            "a number in [0, 1) (one value for all batched runs)",
        )  # fmt: skip
        self.noise_std = check_number(noise_std, "shrink_and_perturb.noise_std", lambda v: v >= 0,
                                      "a number >= 0 (one value for all batched runs)")  # fmt: skip
        require(noise in NOISE_KINDS, "shrink_and_perturb.noise", noise, NOISE_KINDS)
        self.noise = noise

    def _apply(self, layer: nn.Linear) -> None:
        weight = layer_parameter(layer)
        if self.noise == "gaussian":
            self._shrink_and_perturb(weight, partial(sample_normal, layer, weight))
        else:
            self._shrink_and_perturb(weight, partial(sample_weight, layer))
        if layer.bias is not None:
            self._shrink_and_perturb(layer.bias, partial(sample_normal, layer, layer.bias))

    def _shrink_and_perturb(self, p: Tensor, draw_noise: Callable[[], Tensor]) -> None:
        """p <- (1 - shrink) p + noise_std * draw_noise(), skipping zero terms."""
        if not p.requires_grad:
            return
        if self.shrink != 0:
            p.mul_(1 - self.shrink)
        if self.noise_std != 0:
            p.add_(draw_noise(), alpha=self.noise_std)
