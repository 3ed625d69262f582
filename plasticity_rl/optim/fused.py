"""Plain SGD's step fused into the hand-written backward: an optimiser capability.

Plain SGD -- ``torch.optim.SGD`` with momentum 0, weight decay 0, not maximising -- steps
p <- p - lr g. A linear layer's weight gradient is a product, g = delta^T x (delta: the
gradient at the layer's output, x: its input; an outer product for one example), so the step
can be applied as p <- p - lr delta^T x in ONE pass over p (``addcmul_`` / ``baddbmm_``),
without writing g and reading it back. For a weight that does not fit in the cache (10 runs of
a 784 x 100 first layer: 3.1 MB) that is a third of the memory traffic of the update, and one
op instead of two for tiny weights.

The fused step is what ``optimizer.step()`` would do only if nothing looks at the gradients
in between, so :class:`FusedSGD` allows it only while the optimiser has no step pre-hook
(per-run learning rates, update clipping and the EWC/MAS/SI penalties all use one). A fused
parameter has no ``p.grad`` afterwards and its optimiser state stays empty (plain SGD keeps
none). When every parameter of the optimiser has taken its fused step, all that
``optimizer.step()`` has left to do is to run the step post-hooks (continual backprop, ReDo,
Shrink & Perturb, ...): :meth:`FusedSGD.finish_step` does just that, without torch's per-call
overhead of ``step()`` (profiler scope, parameter-group scan: ~20 us, a fifth of a batched
regression step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks


class FusedSGD:
    """Which parameters of ``optimizer`` take plain SGD steps, and those steps on products.

    Example::

        fused = FusedSGD(optimizer)
        (lr,) = fused.step_sizes([layer.weight])  # None: set p.grad, optimizer.step() steps
        if lr is not None:
            fused.step_on_product(layer.weight, delta.transpose(-1, -2), x, lr)
        optimizer.step()  # or fused.finish_step() if every parameter took a fused step
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}

    @property
    def parameter_ids(self) -> set[int]:
        """``id`` of every parameter of the optimiser (as built)."""
        return set(self._groups)

    def active(self) -> bool:
        """Whether fusing is allowed now: plain torch SGD without step pre-hooks."""
        optimizer = self.optimizer
        # The hook tables are torch's own (no public accessor); a pre-hook may read or change
        # gradients before the update, which a fused step would not show it.
        return type(optimizer) is torch.optim.SGD and not (
            optimizer._optimizer_step_pre_hooks or _global_optimizer_pre_hooks
        )

    def step_sizes(self, params: Sequence[Tensor | None]) -> list[float | None]:
        """For each parameter, ``lr`` if it may take a fused step now, else None.

        That is: the optimiser is :meth:`active` and ``optimizer.step()`` would update the
        parameter as p <- p - lr g (its group has momentum 0, weight decay 0, no maximize).
        """
        if not self.active():
            return [None] * len(params)
        return [self._step_size(p) for p in params]

    def _step_size(self, param: Tensor | None) -> float | None:
        group = None if param is None else self._groups.get(id(param))
        if group is None or not param.requires_grad:  # type: ignore[union-attr]
            return None
        if group["momentum"] != 0 or group["weight_decay"] != 0 or group["maximize"]:
            return None
        return float(group["lr"])

    @staticmethod
    def step_on_product(param: Tensor, a: Tensor, b: Tensor, lr: float) -> None:
        """p <- p - lr (a @ b): the SGD step for a gradient given as a (batched) matmul.

        An inner dim of 1 (an outer product: one example) is a broadcast product.
        """
        p = param.detach()  # an in-place update outside autograd, as optimizer.step() does
        if a.shape[-1] == 1:
            p.addcmul_(a, b, value=-lr)
        elif p.dim() == 3:
            p.baddbmm_(a, b, alpha=-lr)
        else:
            p.addmm_(a, b, alpha=-lr)
        consume_grad(param)

    @staticmethod
    def step(param: Tensor, grad: Tensor, lr: float) -> None:
        """p <- p - lr g, torch SGD's own update (for a gradient that is not a product)."""
        param.detach().add_(grad, alpha=-lr)
        consume_grad(param)

    def can_finish_step(self) -> bool:
        """Whether :meth:`finish_step` may stand in for ``optimizer.step()``: fusing is
        :meth:`active` and nothing has wrapped this optimiser's ``step`` (an LR scheduler's
        call counter does), so ``step()`` is torch's own."""
        return self.active() and "step" not in vars(self.optimizer)

    def finish_step(self) -> None:
        """``optimizer.step()`` once every parameter has taken its fused step this step.

        torch's ``step()`` would find no gradient and change nothing; what remains is to
        call the step post-hooks, the optimiser's and then the global ones, as it does. Only
        call it when :meth:`can_finish_step` is true.
        """
        optimizer = self.optimizer
        for hook in self.post_hooks():
            hook(optimizer, (optimizer,), {})

    def post_hooks(self) -> list[Callable[..., Any]]:
        """The step post-hooks ``optimizer.step()`` runs: the optimiser's, then the global ones.

        While there are none, nothing looks at the parameters between steps (the hand-written
        backward may then defer steps, :mod:`plasticity_rl.nn.backprop`).
        """
        return [*self.optimizer._optimizer_step_post_hooks.values(),
                *_global_optimizer_post_hooks.values()]  # fmt: skip


def consume_grad(param: Tensor) -> None:
    """Drop ``param.grad`` after a step taken without it (fused or deferred)."""
    if param.grad is not None:
        param.grad = None  # optimizer.step() must not apply an old gradient again
