"""Utility-based Perturbed Gradient Descent (UPGD; Elsayed & Mahmood 2024, ICLR).

Each weight carries a utility, a first-order estimate of how much the loss would rise if the
weight were removed (set to zero), averaged over time and bias-corrected:

    u_t = beta_u u_{t-1} + (1 - beta_u) (-g * theta),      u_hat = u_t / (1 - beta_u^t)

and is scaled into (0, 1) by the largest (not bias-corrected) utility over **all** weights of
the optimiser (the authors' "global" variant): ``s = sigmoid(u_hat / max(u_t))``. Useful weights
(s near 1) are protected from change; the others get the gradient step and a perturbation:

    upgd:          theta <- theta (1 - lr wd) - 2 lr (g + xi) (1 - s)
    adaptive_upgd: theta <- theta (1 - lr wd) - 2 lr [m_hat (1 - s) / (sqrt(v_hat) + eps)
                                                      + xi (1 - s)]

with xi ~ N(0, sigma^2) drawn afresh each step (torch's global generator, one ``randn_like`` per
parameter in order) and Adam's bias-corrected moments m_hat, v_hat (betas) for the adaptive
form. ``upgd`` is the class in the README of the authors' repository (mohmdelsayed/upgd), with
its defaults; ``adaptive_upgd`` is ``core/run/rl/adaupgd.py``, the optimiser of their PPO runs
(``ppo_continuous_action_upgd.py``: lr 3e-4, eps 1e-5, wd 0.001, beta_u 0.999, sigma 0.001).
Parameters without a gradient are skipped (the authors' code fails on them). One difference,
a plain bug: when the largest utility is exactly 0 (e.g. all gradients zero), their ratio is
0/0 = NaN and poisons the weights; here that ratio is taken as 0 (s = 1/2).

In a batched network (S runs stacked along a leading run dim of every parameter;
:mod:`plasticity_rl.optim.runs` sets :attr:`UPGD.run_generators`) each run scales by its own
largest utility and draws its noise from its own generator on the CPU, parameter by parameter,
so run s steps exactly as a single run seeded the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.nn.layers import normal_per_run_, per_run


class UPGD(torch.optim.Optimizer):
    """UPGD, plain (``adaptive=False``) or with Adam's moments (see the module docstring).

    Args:
        params: parameters or parameter groups.
        lr: step size.
        weight_decay: decoupled shrinkage ``theta *= 1 - lr * weight_decay`` each step.
        beta_utility: decay of the utility's moving average.
        sigma: standard deviation of the perturbation.
        adaptive: use Adam's moments (``betas``, ``eps``) instead of the raw gradient.
        betas: Adam's decays (adaptive only).
        eps: Adam's epsilon, outside the square root (adaptive only).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-5,
        weight_decay: float = 0.001,
        beta_utility: float = 0.999,
        sigma: float = 0.001,
        adaptive: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-5,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            beta_utility=beta_utility,
            sigma=sigma,
            adaptive=adaptive,
            betas=tuple(betas),
            eps=eps,
        )
        super().__init__(params, defaults)
        self.run_generators: list[torch.Generator] | None = None
        """The runs' generators in a batched network (every parameter then has the leading run
        dim); None: one run, noise from torch's global generator."""

    def _noise_like(self, p: Tensor) -> Tensor:
        """N(0, 1) noise shaped like ``p``, each run's from its own generator if batched."""
        if self.run_generators is None:
            return torch.randn_like(p)
        noise = normal_per_run_(torch.empty(p.shape, dtype=p.dtype), self.run_generators)
        return noise.to(p.device)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepped = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not stepped:
            return loss
        maxima = []
        for group, p in stepped:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["avg_utility"] = torch.zeros_like(p)
                if group["adaptive"]:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            beta = group["beta_utility"]
            state["avg_utility"].mul_(beta).add_(-p.grad * p, alpha=1 - beta)
            if group["adaptive"]:
                beta1, beta2 = group["betas"]
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).add_(p.grad**2, alpha=1 - beta2)
            utilities = state["avg_utility"]
            batched = self.run_generators is not None
            maxima.append(utilities.flatten(1).max(1).values if batched else utilities.max())
        global_max = torch.stack(maxima).max(0).values if batched else torch.stack(maxima).max()
        for group, p in stepped:
            state = self.state[p]
            noise = self._noise_like(p.grad) * group["sigma"]
            utility = state["avg_utility"] / (1 - group["beta_utility"] ** state["step"])
            run_max = per_run(global_max, p) if batched else global_max
            ratio = utility / run_max
            ratio = torch.nan_to_num(ratio, nan=0.0, posinf=torch.inf, neginf=-torch.inf)
            keep = 1 - torch.sigmoid(ratio)
            if group["adaptive"]:
                beta1, beta2 = group["betas"]
                m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
                update = (m_hat * keep) / (v_hat.sqrt() + group["eps"]) + noise * keep
            else:
                update = (p.grad + noise) * keep
            p.mul_(1 - group["lr"] * group["weight_decay"]).add_(update, alpha=-2.0 * group["lr"])
        return loss
