"""Constraints put back on the weights after every optimiser step: weight clipping and the
weight projection of normalize-and-project.

Both act on every linear layer of the model after each optimiser step
(:class:`~plasticity_rl.methods.base.WeightLayerMethod`, the step post-hook shrink and perturb
also uses), on the layer's own weight: parametrized layers (weight norm, Powerprop) are
refused. In a batched network each run is constrained on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from plasticity_rl.methods.base import (
    METHODS,
    Model,
    WeightLayerMethod,
    check_number,
    is_batched,
    refuse_parametrized,
    weight_layers,
)
from plasticity_rl.nn.layers import fans, init_bound
from plasticity_rl.registry import require

CLIP_BOUNDS = ("init", "fan_in")
"""Where weight clipping's per-layer bound b comes from (:class:`WeightClipping`)."""


@METHODS.register("weight_clipping")
class WeightClipping(WeightLayerMethod):
    """Clip every weight and bias of a layer to [-kappa b, kappa b] after every step.

    Elsayed, Lan, Lyle & Mahmood 2024, "Weight Clipping for Deep Continual and Reinforcement
    Learning" (RLJ): after each optimiser step, w <- clamp(w, -kappa b_l, kappa b_l) for every
    weight and bias of layer l, b_l being the bound of the layer's uniform init distribution
    U(-b_l, b_l), so no weight grows beyond kappa times the largest initial weight.

    ``bound="init"``: b_l is the bound of the layer's own init scheme
    (:func:`~plasticity_rl.nn.layers.init_bound`: 1/sqrt(fan_in) for PyTorch's default,
    sqrt(3/fan_in) for LeCun uniform, ...; times the layer's init scale); a layer with a
    non-uniform init (Kaiming normal, orthogonal) has no such bound and is refused.
    ``bound="fan_in"``: b_l = 1/sqrt(fan_in) whatever the init, which is what the authors'
    code computes (``InitBounds`` in github.com/mohmdelsayed/weight-clipping: the bound of
    PyTorch's default init, also used for their orthogonally initialised PPO networks). Biases
    are clipped with their layer's bound, as in that code.

    Defaults: kappa = 1 (``zeta=1.0``, the default of their ``WeightClippingSGD`` /
    ``WeightClippingAdam``; their permuted-MNIST runs use 1 and 2, their PPO script 3) and the
    output layer clipped too (``clip_last_layer=True``). Their PPO code also clips the 2-D
    log-std parameter of the policy; this method clips linear layers only.

    Args:
        kappa: the multiple of the init bound, > 0.
        bound: ``"init"`` or ``"fan_in"`` (above).
        output_layer: also clip each network's output layer.
    """

    def __init__(self, kappa: float = 1.0, bound: str = "init", output_layer: bool = True):
        super().__init__(1, "weight_clipping")
        self.kappa = check_number(kappa, "weight_clipping.kappa", lambda v: v > 0, "a number > 0")
        require(bound in CLIP_BOUNDS, "weight_clipping.bound", bound, CLIP_BOUNDS)
        self.bound = bound
        require(isinstance(output_layer, bool), "weight_clipping.output_layer", output_layer,
                "true or false")  # fmt: skip
        self.output_layer = output_layer
        self.limits: dict[nn.Linear, float] = {}
        """kappa b_l per clipped layer."""

    def _select_layers(self, model: Model) -> list[nn.Linear]:
        layers = weight_layers(model, output_layers=self.output_layer)
        refuse_parametrized(layers, "method.weight_clipping")
        self.limits = {layer: self.kappa * self.layer_bound(layer) for layer in layers}
        return layers

    def layer_bound(self, layer: nn.Linear) -> float:
        """b_l for the configured ``bound``."""
        if self.bound == "fan_in":
            return 1.0 / math.sqrt(fans(layer)[0])
        bound = init_bound(layer)
        require(bound is not None, "weight_clipping.bound", self.bound,
                f"fan_in for a layer with init {getattr(layer, 'init_scheme', None)} "
                "(not uniform: it has no bound)")  # fmt: skip
        return bound  # type: ignore[return-value]

    def _apply(self, layer: nn.Linear) -> None:
        limit = self.limits[layer]
        for p in (layer.weight, layer.bias):
            if p is not None and p.requires_grad:
                p.clamp_(-limit, limit)


@METHODS.register("normalize_and_project")
class NormalizeAndProject(WeightLayerMethod):
    """Project each weight matrix back to its initial Frobenius norm after every step.

    The projection half of Normalize-and-Project (NaP; Lyle, Zheng, Khetarpal, Martens, van
    Hasselt, Pascanu & Dabney 2024, "Normalization and effective learning rates in
    reinforcement learning"): after each optimiser step, W_l <- W_l ||W_l(0)||_F / ||W_l||_F
    for every linear layer l, W_l(0) its weight at attach time (biases are not projected).
    With a normalisation layer after W_l the network's function is invariant to the scale of
    W_l, so the projection changes nothing but the effective learning rate, which it keeps
    constant instead of decaying as the weight norm grows. NaP is this method together with
    the MLP option ``layer_norm: true`` (LayerNorm before every activation); without
    normalisation layers the projection does change the function. The output layer, which no
    normalisation follows, is projected too by default (``output_layer``); the paper has no
    public code to check these choices against.

    Args:
        output_layer: also project each network's output layer.
    """

    def __init__(self, output_layer: bool = True):
        super().__init__(1, "normalize_and_project")
        require(isinstance(output_layer, bool), "normalize_and_project.output_layer",
                output_layer, "true or false")  # fmt: skip
        self.output_layer = output_layer
        self.norms: dict[nn.Linear, Tensor] = {}
        """||W_l(0)||_F per projected layer (with the layer's run dims)."""
        self._batched = False

    def _select_layers(self, model: Model) -> list[nn.Linear]:
        layers = weight_layers(model, output_layers=self.output_layer)
        refuse_parametrized(layers, "method.normalize_and_project")
        self.norms = {layer: _frobenius(layer.weight.detach()) for layer in layers}
        self._batched = is_batched(model)
        return layers

    def _apply(self, layer: nn.Linear) -> None:
        weight = layer.weight
        if weight.requires_grad:
            scale = self.norms[layer] / _frobenius(weight).clamp_min(1e-12)
            weight.mul_(scale.view(*scale.shape, *[1] * (weight.dim() - scale.dim())))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "norms": [self.norms[layer] for layer in self.layers]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        norms = [torch.as_tensor(n) for n in state["norms"]]
        shapes = [tuple(n.shape) for n in norms]
        if shapes != [tuple(self.norms[layer].shape) for layer in self.layers]:
            raise KeyError(f"state 'norms' has shapes {shapes}, not those of the layers")
        self.norms = {layer: n.to(self.norms[layer].device, self.norms[layer].dtype)
                      for layer, n in zip(self.layers, norms, strict=True)}  # fmt: skip

    def _run_shaped(self) -> dict[str, Any]:
        return {"norms": [True] * len(self.layers)} if self._batched else {}


def _frobenius(weight: Tensor) -> Tensor:
    """||W||_F over the last two dims (one value per run of a batched weight); over the whole
    of a conv weight ``(out, in, kh, kw)``."""
    if weight.dim() == 4:
        return torch.linalg.vector_norm(weight)
    return torch.linalg.matrix_norm(weight)
