"""TRAC, a parameter-free scale on any base optimiser (Muppidi, Zhang & Wang 2024, "Fast TRAC:
A Parameter-Free Optimizer for Lifelong Reinforcement Learning", NeurIPS).

The weights are kept on the ray from their values at the first step, theta_ref, through the
base optimiser's accumulated updates Delta, at a scale S_t that an online-learning rule tunes:

    theta_t = theta_ref + S_t Delta_t
    h_t = <Delta_{t-1}, g_t>                       (g_t: the gradient at theta_t; one number for
                                                    all parameters of the optimiser)
    Delta_t = Delta_{t-1} + (base_step(theta_t) - theta_t)
    v_t = beta^2 v_{t-1} + h_t^2,    sigma_t = beta sigma_{t-1} - h_t    (per beta in ``betas``)
    s_t = s_prev / erfi(1 / sqrt 2) * erfi(sigma_t / (sqrt 2 sqrt(v_t) + eps))
    S_t = max(sum over betas of s_t, 0)

with Delta_{t-1} recovered from the weights as (theta_t - theta_ref) / (sum s_{t-1} + eps), so
that anything else that moved the weights in between (a unit reset) enters Delta. This is the
step of the authors' package ``trac-optimizer`` (``trac_optimizer/trac.py``: ``start_trac``),
tested against it (``tests/test_optim_trac.py``), with the same defaults (six betas from 0.9 to
0.999999, s_prev 1e-8, eps 1e-8, sigma_0 1e-8, v_0 = s_0 = 0). Written here rather than used
from the package because the package appends a line to a log file on every step and keeps its
state under a string key of ``optimizer.state``, which ``state_dict()`` cannot save (so no
checkpoint, no resume). erfi is computed in float64 from
its power series (torch has none; the package approximates it in float32 complex arithmetic,
off by up to about 1%: 0.11203 for erfi(0.1) = 0.11322), the rest in float32 as there.

:data:`TRAC_STATE` holds the reference per parameter; the scale's state lives in the first
parameter group (saved and restored with ``state_dict``). A unit reset leaves the reference
alone (the unit's new values enter Delta at the next step).

In a batched network (S runs stacked along a leading run dim of every parameter;
:mod:`plasticity_rl.optim.runs` sets ``runs`` on the optimiser) every run has its own scale:
h_t is summed within each run, and the group state holds one row per run, ``(S, len(betas))``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.nn.layers import per_run

TRAC_STATE = "trac_reference"
"""Per-parameter state key of theta_ref (not a moment: unit resets keep it)."""
TRAC_GROUP_KEY = "trac"
"""The key of the scale's state in the first parameter group."""
DEFAULT_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)


def erfi(x: Tensor) -> Tensor:
    """The imaginary error function erfi(x) = 2/sqrt(pi) sum_n x^(2n+1) / (n! (2n+1)), in float64
    (exact to rounding for |x| < 26; beyond, it overflows to +-inf)."""
    x = x.double()
    n = torch.arange(1, 400, dtype=torch.float64, device=x.device)
    # term_n / term_{n-1} of x^(2n+1)/n! is x^2 / n; divide by (2n+1) afterwards.
    ratios = (x.unsqueeze(-1) ** 2) / n
    powers = torch.cat([torch.ones_like(x).unsqueeze(-1), torch.cumprod(ratios, dim=-1)], dim=-1)
    odd = 2 * torch.arange(0, 400, dtype=torch.float64, device=x.device) + 1
    return 2 / math.sqrt(math.pi) * x * (powers / odd).sum(-1)


_SQRT2 = torch.sqrt(torch.tensor(2.0))
_ERFI_OF_INV_SQRT2 = erfi(torch.tensor(1.0) / _SQRT2).float()
"""erfi(1/sqrt 2) in float32, the normaliser of s_prev (computed once, as the package would)."""


class _TracStep:
    """The TRAC step around ``super().step()`` (mixed into a base optimiser class)."""

    param_groups: list[dict[str, Any]]
    state: Any

    def step(self, closure: Any = None) -> Any:  # noqa: D102
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
            grads = [p.grad.detach().clone() for p in params]
        loss = super().step(closure)  # type: ignore[misc]
        with torch.no_grad():
            self._trac_update(params, before, grads)
        return loss

    def _trac_update(self, params: list[Tensor], before: list[Tensor], grads: list[Tensor]) -> None:
        group, device = self.param_groups[0], params[0].device
        runs: int | None = getattr(self, "runs", None)
        betas = torch.tensor(group["trac_betas"], device=device)
        if TRAC_GROUP_KEY not in group:
            zeros = betas.new_zeros(betas.shape if runs is None else (runs, len(betas)))
            group[TRAC_GROUP_KEY] = {"s": zeros, "variance": zeros.clone(),
                                 "sigma": torch.full_like(zeros, 1e-8)}  # fmt: skip
        trac = group[TRAC_GROUP_KEY]
        if trac["s"].device != device:  # a checkpoint's group state loads onto the CPU
            trac = group[TRAC_GROUP_KEY] = {k: v.to(device) for k, v in trac.items()}
        eps, s_prev = group["trac_eps"], group["trac_s_prev"]
        for p, theta in zip(params, before, strict=True):
            if TRAC_STATE not in self.state[p]:
                self.state[p][TRAC_STATE] = theta.clone()
        s_sum = trac["s"].sum(-1)
        deltas, h = [], s_sum.new_zeros(s_sum.shape)
        for p, theta, g in zip(params, before, grads, strict=True):
            delta = (theta - self.state[p][TRAC_STATE]) / _per_run(s_sum + eps, theta, runs)
            if runs is None:
                h += torch.dot(delta.flatten(), g.flatten())
            else:
                h += (delta * g).flatten(1).sum(1)
            deltas.append(delta.add_(p - theta))
        h = h.unsqueeze(-1)
        trac["variance"].mul_(betas**2).add_(h**2)
        trac["sigma"].mul_(betas).sub_(h)
        first = torch.tensor(s_prev, device=device) / _ERFI_OF_INV_SQRT2.to(device)
        ratio = trac["sigma"] / (_SQRT2 * trac["variance"].sqrt() + eps)
        trac["s"].copy_(first * erfi(ratio).float())
        scale = torch.clamp(trac["s"].sum(-1), min=0.0)
        for p, delta in zip(params, deltas, strict=True):
            p.copy_(self.state[p][TRAC_STATE] + delta * _per_run(scale, p, runs))


def _per_run(value: Tensor, like: Tensor, runs: int | None) -> Tensor:
    """A per-run value (one per run, or one number) shaped to broadcast against ``like``."""
    return value if runs is None else per_run(value, like)


@functools.cache
def trac_class(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``base`` with the TRAC step: constructed as ``base`` is, plus the keywords ``trac_betas``,
    ``trac_s_prev`` and ``trac_eps`` (the package's ``betas``, ``s_prev``, ``eps``)."""

    def __init__(
        self: Any,
        params: Any,
        *args: Any,
        trac_betas: tuple[float, ...] = DEFAULT_BETAS,
        trac_s_prev: float = 1e-8,
        trac_eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        base.__init__(self, params, *args, **kwargs)
        for group in self.param_groups:
            group.update(trac_betas=tuple(trac_betas), trac_s_prev=trac_s_prev, trac_eps=trac_eps)

    return type(f"TRAC{base.__name__}", (_TracStep, base), {"__init__": __init__})
