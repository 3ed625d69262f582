"""RMSprop with epsilon inside the square root, as optax's ``rmsprop`` computes it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class RMSpropEpsInSqrt(torch.optim.Optimizer):
    """RMSprop (Tieleman & Hinton 2012) with eps inside the root, as ``optax.rmsprop``.

    With gradient g (plus coupled L2 decay, g <- g + weight_decay * p):

        v <- alpha v + (1 - alpha) g^2   (v_0 = 0),    p <- p - lr g / sqrt(v + eps)

    ``torch.optim.RMSprop`` divides by sqrt(v) + eps instead; the two differ while v is
    comparable to eps (small gradients, e.g. at the start). The code of Keskinen 2024 (Hard ASH)
    uses optax's placement. State per parameter: ``square_avg`` (v), the key torch's RMSprop
    uses, so optimiser-state resets treat both alike.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        alpha: decay rate of the squared-gradient average (optax's ``decay``).
        eps: added to v inside the square root.
        weight_decay: coupled L2 coefficient added to the gradient.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One RMSprop update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            for p in params:
                if not self.state[p]:
                    self.state[p]["square_avg"] = torch.zeros_like(p)
            square_avgs = [self.state[p]["square_avg"] for p in params]
            torch._foreach_mul_(square_avgs, group["alpha"])
            torch._foreach_addcmul_(square_avgs, grads, grads, value=1.0 - group["alpha"])
            denom = torch._foreach_add(square_avgs, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, grads, denom, value=-group["lr"])
        return loss
