"""Backprop for plain MLPs without autograd: the per-example training step with fewer ops.

Training one example at a time is bound by per-op overhead, and recording and replaying an
autograd graph costs more than the few small matmuls of a small MLP (about 3x on the
slowly-changing regression). :class:`HandBackprop` runs the forward pass on detached tensors
and computes the parameter gradients itself, with PyTorch's own derivative kernels (the
``aten.*_backward`` ops autograd calls, so the numbers are autograd's up to the order of float
sums), and sets ``p.grad`` to them (as ``zero_grad(set_to_none=True)`` then ``backward()``
would); the optimiser step and all step hooks run as usual.

Every activation module is called as in a normal forward with grad mode on (its input needs no
grad, so no graph is built), so forward hooks -- continual backprop's and ReDo's activation
records -- see a training forward. Supported: ``nn.Linear`` and
:class:`~plasticity_rl.nn.layers.BatchedLinear` layers without parametrizations, the
activations in :data:`ACTIVATION_BACKWARD`, in a :class:`~plasticity_rl.nn.mlp.MLP` or an
``nn.Sequential`` (optionally starting with ``nn.Flatten``). :meth:`HandBackprop.supports`
says whether a model qualifies; anything else (weight norm, Powerprop, SDM, Top-K, ASH, CNNs,
gradient hooks such as neuronal decay's) needs autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from plasticity_rl.nn.layers import BatchedLinear, SDMLinear
from plasticity_rl.nn.mlp import MLP

ActivationBackward = Callable[[Tensor, Tensor, Tensor, nn.Module], Tensor]
"""``(grad_h, z, h, module) -> grad_z`` for h = module(z)."""

ACTIVATION_BACKWARD: dict[type[nn.Module], ActivationBackward] = {
    nn.ReLU: lambda g, z, h, m: torch.ops.aten.threshold_backward(g, h, 0.0),
    nn.Identity: lambda g, z, h, m: g,
    nn.Tanh: lambda g, z, h, m: torch.ops.aten.tanh_backward(g, h),
    nn.Sigmoid: lambda g, z, h, m: torch.ops.aten.sigmoid_backward(g, h),
    nn.LeakyReLU: lambda g, z, h, m: torch.ops.aten.leaky_relu_backward(
        g, z, m.negative_slope, False
    ),
}
"""The derivative of each supported activation (exact type), with autograd's kernels."""


def linear_forward(layer: nn.Linear, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``layer``'s forward with the given weight and bias (plain or batched layer)."""
    if isinstance(layer, BatchedLinear):
        return BatchedLinear.apply_weights(x, weight, bias)
    return F.linear(x, weight, bias)


class HandBackprop:
    """Forward and backward of a plain MLP without autograd (see the module docstring).

    Example::

        backprop = HandBackprop(model)
        output, cache = backprop.forward(x)
        backprop.backward(cache, grad_output)  # sets p.grad, then optimizer.step()
    """

    def __init__(self, model: nn.Module):
        if not self.supports(model):
            raise ValueError(f"HandBackprop does not support {type(model).__name__}")
        self.flatten, self.layers = _layers(model)  # type: ignore[misc]
        # Detached views of the parameters, made once: the optimiser and the interventions
        # change parameters in place, which these views see (a replaced Parameter would not
        # be seen: build a new HandBackprop then).
        self._weights = [layer.weight.detach() for layer, _ in self.layers]
        self._biases = [None if layer.bias is None else layer.bias.detach()
                        for layer, _ in self.layers]  # fmt: skip

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` is an MLP this class can differentiate."""
        found = _layers(model)
        return found is not None and all(
            type(layer) in (nn.Linear, BatchedLinear)
            and not isinstance(layer, SDMLinear)
            and not parametrize.is_parametrized(layer)
            and (act is None or type(act) in ACTIVATION_BACKWARD)
            for layer, act in found[1]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        """The model's output, and the (input, pre-activation, output) of each layer."""
        if self.flatten is not None:
            x = self.flatten(x)
        cache = []
        for (layer, act), weight, bias in zip(self.layers, self._weights, self._biases,
                                              strict=True):  # fmt: skip
            z = linear_forward(layer, x, weight, bias)
            h = z if act is None else act(z)  # forward hooks see a training forward
            cache.append((x, z, h))
            x = h
        return x, cache

    def backward(self, cache: list[tuple[Tensor, Tensor, Tensor]], grad_output: Tensor) -> None:
        """Set ``p.grad`` to d loss / d p for every parameter, given d loss / d output.

        Call it with the cache of :meth:`forward` (its tensors need no grad, so no graph is
        recorded here either).
        """
        grad = grad_output
        for index in range(len(self.layers) - 1, -1, -1):
            layer, act = self.layers[index]
            x, z, h = cache[index]
            if act is not None:
                grad = ACTIVATION_BACKWARD[type(act)](grad, z, h, act)
            if isinstance(layer, BatchedLinear):  # (S, B, out) x (S, B, in)
                _set_grad(layer.weight, torch.bmm(grad.transpose(1, 2), x))
                if layer.bias is not None:
                    _set_grad(layer.bias, grad.sum(1))
                if index > 0:
                    grad = torch.bmm(grad, self._weights[index])
            else:
                flat_grad, flat_x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
                _set_grad(layer.weight, flat_grad.t().mm(flat_x))
                if layer.bias is not None:
                    _set_grad(layer.bias, flat_grad.sum(0))
                if index > 0:
                    grad = grad.matmul(self._weights[index])


def _set_grad(param: Tensor, grad: Tensor) -> None:
    if param.requires_grad:
        param.grad = grad


Layers = list[tuple[nn.Linear, nn.Module | None]]


def _layers(model: nn.Module) -> tuple[nn.Flatten | None, Layers] | None:
    """``(flatten, [(linear, activation or None), ...])`` of a sequential MLP, else None."""
    if isinstance(model, MLP):
        modules = [*model.hidden, model.output]
    elif isinstance(model, nn.Sequential):
        modules = list(model)
        if len(modules) == 2 and isinstance(modules[1], MLP):  # Flatten then an MLP
            modules = [modules[0], *modules[1].hidden, modules[1].output]
    else:
        return None
    flatten = modules.pop(0) if modules and isinstance(modules[0], nn.Flatten) else None
    layers: Layers = []
    for module in modules:
        if isinstance(module, nn.Linear):
            layers.append((module, None))
        elif layers and layers[-1][1] is None and next(module.parameters(), None) is None:
            layers[-1] = (layers[-1][0], module)
        else:
            return None
    if not layers or layers[-1][1] is not None:
        return None
    return flatten, layers
