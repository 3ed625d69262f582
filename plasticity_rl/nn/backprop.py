"""Backprop for plain MLPs without autograd: the per-example training step with fewer ops.

Training one example at a time is bound by per-op overhead, and recording and replaying an
autograd graph costs more than the few small matmuls of a small MLP (about 3x on the
slowly-changing regression). :class:`HandBackprop` runs the forward pass on detached tensors
and computes the parameter gradients itself, with PyTorch's own derivative kernels (the
``aten.*_backward`` ops autograd calls, so the numbers are autograd's up to the order of float
sums), and sets ``p.grad`` to them (as ``zero_grad()`` then ``backward()`` would, reusing a
weight's gradient tensor); the optimiser step and all step hooks run as usual. Given the
optimiser, a plain SGD step is instead applied while the gradient is computed, without
materialising it (:class:`~plasticity_rl.optim.fused.FusedSGD`).

Deferred input-layer steps: with one example per run, the input layer's SGD step is the
rank-1 update W <- W - lr g x^T, and for a wide input (Online Permuted MNIST: 10 runs of
784 x 100, 3.1 MB) reading and writing W for it costs more than all the rest of the step.
While fusing applies and every optimiser step post-hook leaves such steps pending
(:func:`keeps_deferred_steps`: continual backprop's and ReDo's, which write weights only through
:func:`~plasticity_rl.nn.layers.set_weight`), the input layer's steps are kept as K pending
rank-1 terms, A (K x out, the scaled gradients) and X (K x in, the inputs): the forward
computes W x + A^T (X x), which is the updated layer's output, and every K steps (or at
:meth:`HandBackprop.flush`) W <- W + A^T X in one pass. The numbers are those of stepping every
time up to the order of float sums. Anything else that reads the weights must flush first: a
forward of the layer module does (pre-hook), as do the model's ``state_dict()`` and
``set_weight`` on the layer (:func:`~plasticity_rl.nn.layers.keep_updates_pending`); other
readers call :meth:`HandBackprop.flush`.

Lookahead: the inputs of the coming steps are known in advance (the stream does not depend on
the model), and :meth:`HandBackprop.prefetch` announces them. At the start of a block of K
announced inputs (nothing pending) the input layer's outputs for all of them, W X^T, and their
Gram matrix X X^T are computed in two matmuls, so the layer's output at step k of the block is
W x_k + A[:k]^T (X X^T)[:k, k] without reading W: W is read once per block instead of once per
step. A forward whose input is not exactly the next announced row (checked by value) ends the
announcement and takes the step-by-step path.

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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from plasticity_rl.nn.activations import CReLU, Fourier
from plasticity_rl.nn.layers import BatchedLinear, keep_updates_pending
from plasticity_rl.nn.mlp import MLP
from plasticity_rl.optim.fused import FusedSGD, consume_grad

DEFER_STEPS = 32
"""Input-layer SGD steps kept pending before they are applied in one pass (module doc)."""
DEFER_MIN_WEIGHTS = 16_384
"""Deferred steps only for an input layer with at least this many weights per run."""

KEEPS_DEFERRED_STEPS = "keeps_deferred_steps"
"""The attribute :func:`keeps_deferred_steps` sets on an optimiser step post-hook."""


def keeps_deferred_steps(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an optimiser step post-hook under which deferred input-layer steps stay pending.

    The hook must read no input layer's weight and write weights only through
    :func:`~plasticity_rl.nn.layers.set_weight` (which applies pending steps first). Under
    any unmarked post-hook, :class:`HandBackprop` steps the input layer every time. Returns
    the hook.
    """
    setattr(hook, KEEPS_DEFERRED_STEPS, True)
    return hook


ActivationBackward = Callable[[Tensor, Tensor, Tensor, nn.Module], Tensor]
"""``(grad_h, z, h, module) -> grad_z`` for h = module(z)."""


def _crelu_backward(grad: Tensor, h: Tensor) -> Tensor:
    """h = [relu(z), relu(-z)]: dz = g_1 [z > 0] - g_2 [z < 0] (autograd's relu kernels)."""
    (g1, g2), (h1, h2) = grad.chunk(2, -1), h.chunk(2, -1)
    threshold = torch.ops.aten.threshold_backward
    return threshold(g1, h1, 0.0) - threshold(g2, h2, 0.0)


def _fourier_backward(grad: Tensor, h: Tensor) -> Tensor:
    """h = [sin z, cos z]: dz = g_1 cos z - g_2 sin z, with sin z and cos z read from h."""
    (g1, g2), (sin, cos) = grad.chunk(2, -1), h.chunk(2, -1)
    return g1 * cos - g2 * sin


ACTIVATION_BACKWARD: dict[type[nn.Module], ActivationBackward] = {
    nn.ReLU: lambda g, z, h, m: torch.ops.aten.threshold_backward(g, h, 0.0),
    nn.Identity: lambda g, z, h, m: g,
    nn.Tanh: lambda g, z, h, m: torch.ops.aten.tanh_backward(g, h),
    nn.Sigmoid: lambda g, z, h, m: torch.ops.aten.sigmoid_backward(g, h),
    nn.LeakyReLU: lambda g, z, h, m: torch.ops.aten.leaky_relu_backward(
        g, z, m.negative_slope, False
    ),
    nn.ELU: lambda g, z, h, m: torch.ops.aten.elu_backward(g, m.alpha, 1, 1, False, z),
    nn.SiLU: lambda g, z, h, m: torch.ops.aten.silu_backward(g, z),
    CReLU: lambda g, z, h, m: _crelu_backward(g, h),
    Fourier: lambda g, z, h, m: _fourier_backward(g, h),
}
"""The derivative of each supported activation (exact type), with autograd's kernels."""


LinearApply = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""``(x, weight operand, bias operand) -> output`` of a plain or batched linear layer."""


def forward_operands(layer: nn.Linear) -> tuple[LinearApply, Tensor, Tensor | None]:
    """``(apply, weight, bias)`` with ``apply(x, weight, bias)`` the layer's forward.

    The operands are detached views of the parameters, made once: the optimiser and the
    interventions change parameters in place, which the views see (a replaced Parameter would
    not be seen: build a new :class:`HandBackprop` then).
    """
    weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, BatchedLinear):
        return (BatchedLinear.apply_operands, *BatchedLinear.operands(weight, bias))
    return F.linear, weight, bias


def weight_gradient(grad: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """d loss / d W = sum_b grad_b^T x_b: ``(..., B, out), (..., B, in) -> (..., out, in)``.

    For one example (B = 1) the sum has a single term, the outer product, computed as a
    broadcast product: the same numbers as the matmul without its cost on tiny matrices.
    ``out``: a tensor of the result's shape to write into (no new allocation).
    """
    grad_t = grad.transpose(-1, -2)
    if grad.shape[-2] == 1:
        return torch.mul(grad_t, x, out=out)
    return torch.matmul(grad_t, x, out=out)


def bias_gradient(grad: Tensor) -> Tensor:
    """d loss / d b = sum_b grad_b: ``(..., B, out) -> (..., out)``; for B = 1 a view of it."""
    return grad.select(-2, 0) if grad.shape[-2] == 1 else grad.sum(-2)


class HandBackprop:
    """Forward and backward of a plain MLP without autograd (see the module docstring).

    With the optimiser given, parameters that it updates by plain SGD are stepped during
    :meth:`backward` instead of getting ``p.grad`` (:class:`~plasticity_rl.optim.fused.FusedSGD`:
    one pass over a weight instead of three), and :meth:`optimizer_step` stands in for
    ``optimizer.step()``: it steps the other parameters and runs the step hooks.

    Example::

        backprop = HandBackprop(model, optimizer)
        output, cache = backprop.forward(x)
        backprop.backward(cache, grad_output)  # sets p.grad (or steps p)
        backprop.optimizer_step()  # or optimizer.step()
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 defer_steps: int = DEFER_STEPS):  # fmt: skip
        if not self.supports(model):
            raise ValueError(f"HandBackprop does not support {type(model).__name__}")
        self.flatten, self.layers = _layers(model)  # type: ignore[misc]
        self._steps = [_LayerStep.of(layer, act) for layer, act in self.layers]
        self._params = [p for step in self._steps for p in (step.weight, step.bias)]
        self.optimizer = optimizer
        self.fused = None if optimizer is None else FusedSGD(optimizer)
        ours = {id(p) for p in self._params if p is not None}
        self._covers_optimizer = self.fused is not None and self.fused.parameter_ids == ours
        self._stepped_all = False
        first = self.layers[0][0]
        wide = first.in_features * first.out_features >= DEFER_MIN_WEIGHTS
        self._deferred = (_DeferredSteps(self._steps[0], defer_steps)
                          if wide and defer_steps > 1 else None)  # fmt: skip
        if self._deferred is not None:  # anything else that reads the weights sees them whole
            first.register_forward_pre_hook(lambda *_: self.flush())
            model.register_state_dict_pre_hook(lambda *_, **__: self.flush())
            keep_updates_pending(first, self._deferred.flush)

    def flush(self) -> None:
        """Apply the pending input-layer steps (see the module docstring) to the weight."""
        if self._deferred is not None:
            self._deferred.flush()

    def prefetch(self, upcoming: Tensor) -> None:
        """Announce the inputs of the next training steps, in order (lookahead, module doc).

        ``upcoming``: ``(S, n, in_features)`` for batched runs, ``(n, in_features)`` for one
        run; step k's forward is expected to get row k (one example per run). Only used while
        input-layer steps are deferred; other shapes are ignored. The rows are copied block
        by block as they are reached, so ``upcoming`` must keep its values until then (a
        changed row is caught: it ends the announcement).
        """
        if self._deferred is not None and self.flatten is None:
            self._deferred.prefetch(upcoming)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` is an MLP this class can differentiate."""
        found = _layers(model)
        return found is not None and all(
            type(layer) in (nn.Linear, BatchedLinear)
            and not parametrize.is_parametrized(layer)
            and (act is None or type(act) in ACTIVATION_BACKWARD)
            for layer, act in found[1]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        """The model's output, and the (input, pre-activation, output) of each layer."""
        if self.flatten is not None:
            x = self.flatten(x)
        cache = []
        for index, step in enumerate(self._steps):
            if index == 0 and self._deferred is not None:
                z = self._deferred.output(x)
            else:
                z = step.apply(x, *step.operands)
            h = z if step.activation is None else step.activation(z)  # hooks see a training forward
            cache.append((x, z, h))
            x = h
        return x, cache

    def backward(self, cache: list[tuple[Tensor, Tensor, Tensor]], grad_output: Tensor) -> None:
        """Set ``p.grad`` to d loss / d p for every parameter, given d loss / d output.

        Call it with the cache of :meth:`forward` (its tensors need no grad, so no graph is
        recorded here either). A weight's gradient is written into its existing ``p.grad``
        (as ``zero_grad(set_to_none=False)`` then ``backward()`` would), so that no large
        tensor is allocated per step; for one example per run, a bias gradient is a view of
        the gradient flowing into the layer. Parameters with a fused SGD step (see the class
        docstring) are stepped here instead, each after its last use in this backward.
        """
        lrs = [None] * len(self._params) if self.fused is None else self.fused.step_sizes(
            self._params)  # fmt: skip
        deferred = self._deferred
        if deferred is not None and (lrs[0] is None or not all(
                getattr(hook, KEEPS_DEFERRED_STEPS, False)
                for hook in self.fused.post_hooks())):  # type: ignore[union-attr]  # fmt: skip
            deferred.flush()  # this step is not deferred: the weight must be whole for it
            deferred = None
        self._stepped_all = self._covers_optimizer and all(
            lr is not None for p, lr in zip(self._params, lrs, strict=True) if p is not None
        )
        grad = grad_output
        for index in range(len(self._steps) - 1, -1, -1):
            step = self._steps[index]
            x, z, h = cache[index]
            if step.activation_backward is not None:
                grad = step.activation_backward(grad, z, h, step.activation)
            # (S, B, features) for a batched layer; (examples, features) for a plain one
            rows, x_rows = (grad, x) if step.batched else (
                grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1]))  # fmt: skip
            if index > 0:  # before this layer's weight takes its step
                grad = step.propagate(grad, step.weight_values)
            weight, weight_lr = step.weight, lrs[2 * index]
            if index == 0 and deferred is not None and deferred.add_step(rows, x_rows, weight_lr):
                consume_grad(weight)
            elif weight_lr is not None:
                FusedSGD.step_on_product(weight, rows.transpose(-1, -2), x_rows, weight_lr)
            elif weight.requires_grad:
                old = weight.grad
                weight.grad = weight_gradient(rows, x_rows, old if old is not None
                                              and old.shape == weight.shape else None)  # fmt: skip
            bias, bias_lr = step.bias, lrs[2 * index + 1]
            if bias_lr is not None:
                FusedSGD.step(bias, bias_gradient(rows), bias_lr)
            elif bias is not None and bias.requires_grad:
                bias.grad = bias_gradient(rows)

    def optimizer_step(self) -> None:
        """``optimizer.step()`` after :meth:`backward`.

        When that backward has stepped every parameter of the optimiser (all fused), only
        what ``step()`` has left to do is done: its post-hooks
        (:meth:`~plasticity_rl.optim.fused.FusedSGD.finish_step`).
        """
        if self.optimizer is None:
            raise ValueError("HandBackprop.optimizer_step needs the optimizer (HandBackprop(model, "
                             "optimizer))")  # fmt: skip
        if self._stepped_all and self.fused.can_finish_step():  # type: ignore[union-attr]
            self.fused.finish_step()  # type: ignore[union-attr]
        else:
            self.optimizer.step()
        self._stepped_all = False


class _DeferredSteps:
    """The pending SGD steps of one linear layer, as rank-1 terms, and its lookahead block
    (module docstring).

    ``A[k] = -lr_k g_k`` and ``X[k] = x_k`` (a leading run dim for a batched layer); the weight
    they stand for is W + A[:n]^T X[:n]. In a lookahead block, X holds the block's announced
    inputs, ``block_z`` their outputs W X^T (W as at the block's start) and ``gram`` X X^T;
    the block ends when its rows are used up or at :meth:`flush`.
    """

    def __init__(self, step: _LayerStep, capacity: int):
        self.step = step
        self.weight = step.weight_values
        lead = self.weight.shape[:-2]  # (S,) for a batched layer
        self.a = self.weight.new_zeros(*lead, capacity, self.weight.shape[-2])
        self.x = self.weight.new_zeros(*lead, capacity, self.weight.shape[-1])
        self.capacity, self.count = capacity, 0
        self.upcoming: Tensor | None = None
        self.consumed = 0
        """Rows of ``upcoming`` whose forward has run."""
        self.block_len = 0
        """Rows in the current lookahead block (0: none)."""
        self.block_z = self.gram = self.weight.new_empty(0)

    def prefetch(self, upcoming: Tensor) -> None:
        self.flush()
        lead = self.weight.shape[:-2]
        fits = upcoming.dim() == self.weight.dim() and upcoming.shape[:-2] == lead and (
            upcoming.shape[-1] == self.weight.shape[-1])  # fmt: skip
        self.upcoming, self.consumed = (upcoming if fits else None), 0

    def output(self, x: Tensor) -> Tensor:
        """The output of the layer as updated by the pending steps, for input ``x``."""
        z = None if self.upcoming is None else self._lookahead_output(x)
        if z is None:
            z = self.step.apply(x, *self.step.operands)
            if self.count:  # z += A^T (X x), with x_k . x for each pending k
                xs = self.x.narrow(-2, 0, self.count)
                _add_product_(z, torch.matmul(x, xs.transpose(-1, -2)),
                              self.a.narrow(-2, 0, self.count))  # fmt: skip
        return z

    def _lookahead_output(self, x: Tensor) -> Tensor | None:
        if self.block_len == 0 and not self._start_block():
            return None
        k = self.count  # the block's steps so far: x should be its row k
        row = self.x.narrow(-2, k, 1)
        if x.shape != row.shape or not torch.equal(x, row):
            self.flush()
            self.upcoming = None
            return None
        bias = self.step.operands[1]
        z = self.block_z.narrow(-2, k, 1)
        z = z.clone() if bias is None else z + bias
        if k:
            _add_product_(z, self.gram.narrow(-2, k, 1).narrow(-1, 0, k), self.a.narrow(-2, 0, k))
        self.consumed += 1
        return z

    def _start_block(self) -> bool:
        assert self.upcoming is not None
        size = min(self.capacity, self.upcoming.shape[-2] - self.consumed)
        if size <= 0:
            self.upcoming = None
            return False
        self.flush()
        rows = self.x.narrow(-2, 0, size)
        rows.copy_(self.upcoming.narrow(-2, self.consumed, size))
        self.block_z = self.step.apply(rows, self.step.operands[0], None)
        self.gram = torch.matmul(rows, rows.transpose(-1, -2))
        self.block_len = size
        return True

    def add_step(self, rows: Tensor, x_rows: Tensor, lr: float) -> bool:
        """Defer the step W <- W - lr rows^T x_rows if it is one example per run (else False)."""
        if rows.shape[-2] != 1:
            self.flush()
            return False
        torch.mul(rows.squeeze(-2), -lr, out=self.a.select(-2, self.count))
        if not self.block_len:  # in a lookahead block the input is in X already
            self.x.select(-2, self.count).copy_(x_rows.squeeze(-2))
        self.count += 1
        if self.count == (self.block_len or self.capacity):
            self.flush()
        return True

    def flush(self) -> None:
        """W <- W + A^T X for the pending steps; ends the lookahead block (its W X^T is old)."""
        if self.count:
            count = self.count
            _add_product_(self.weight, self.a.narrow(-2, 0, count).transpose(-1, -2),
                          self.x.narrow(-2, 0, count))  # fmt: skip
            self.count = 0
        self.block_len = 0


def _add_product_(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out += a @ b in place, for matrices or stacks of them."""
    if out.dim() == 3:
        out.baddbmm_(a, b)
    else:
        out.addmm_(a, b)


@dataclass
class _LayerStep:
    """What forward and backward need of one linear layer and its activation, found once."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_values: Tensor
    """The weight, detached (a view: it sees in-place updates)."""
    apply: LinearApply
    operands: tuple[Tensor, Tensor | None]
    activation: nn.Module | None
    activation_backward: ActivationBackward | None
    batched: bool
    propagate: Callable[[Tensor, Tensor], Tensor]
    """grad_out, W -> grad_in = grad_out W (``torch.bmm`` for a batched layer)."""

    @classmethod
    def of(cls, layer: nn.Linear, activation: nn.Module | None) -> _LayerStep:
        apply, *operands = forward_operands(layer)
        batched = isinstance(layer, BatchedLinear)
        return cls(
            weight=layer.weight, bias=layer.bias, weight_values=layer.weight.detach(),
            apply=apply, operands=tuple(operands),  # type: ignore[arg-type]
            activation=activation,
            activation_backward=None if activation is None
            else ACTIVATION_BACKWARD[type(activation)],
            batched=batched, propagate=torch.bmm if batched else torch.matmul,
        )  # fmt: skip


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
