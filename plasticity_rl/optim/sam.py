"""Sharpness-aware minimisation around any base optimiser (Foret, Kleiner, Mobahi & Neyshabur
2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization", ICLR), with the
adaptive variant ASAM (Kwon, Kim, Park & Choi 2021, ICML).

Each step descends on the gradient taken at the worst nearby weights instead of at the weights:

    e = rho * T^2 g / ||T g||           (g = dL/dw at w; T = I for SAM, T = |w| for ASAM;
                                         the norm over all of the optimiser's parameters)
    w <- base_step(w, dL/dw at w + e)

as in the authors' algorithm (one ascent step of the first-order approximation) and the widely
used PyTorch port (davda54/sam: ``first_step``, ``second_step``; the 1e-12 added to the norm is
theirs). A step therefore costs two forward and backward passes. The trainer drives it: after the
usual backward, :meth:`SharpnessAware.sharpness_aware_gradients` moves the weights to w + e, calls
back for the gradients there and moves the weights back; ``step()`` is then the base optimiser's
step on those gradients. Penalty methods (L2 Init, Parseval, EWC, ...) add their gradient in the
step pre-hooks, so at w, as SAM implementations treat weight decay (the base optimiser's, applied
after the weights are restored); the methods' records of training forwards (CBP, ReDo, SNR
statistics, Top-K counters) come from the forward at w only, and BatchNorm's running statistics
are left alone in the pass at w + e (davda54's ``disable_running_stats``). What reads ``.grad``
after the step (ReGraMa's scores, the GraMa and gradient-norm metrics) sees the gradient the
step used, the one at w + e.

In a batched network (S runs stacked along a leading run dim; ``runs`` is set by
:mod:`plasticity_rl.optim.runs`) each run has its own norm, so every run perturbs as its single
run would. The perturbation is transient: the optimiser state is the base optimiser's, and a
checkpoint taken between steps resumes exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from plasticity_rl.nn.layers import per_run

NORM_EPS = 1e-12
"""Added to the gradient norm (davda54/sam)."""


class SharpnessAware:
    """The SAM perturbation, mixed into a base optimiser class (:func:`sam_class`)."""

    param_groups: list[dict[str, Any]]
    runs: int | None = None
    """S for a batched network (one norm per run), None for a single run."""

    @torch.no_grad()
    def sharpness_aware_gradients(self, gradients_at: Callable[[], None]) -> None:
        """Replace the gradients at w (in ``.grad``) by those at w + e: perturb, clear the
        gradients, call ``gradients_at()`` (a forward and backward that fills ``.grad``),
        restore w."""
        groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        scaled = [(torch.abs(p) if g["sam_adaptive"] else 1.0) * p.grad for g, ps in groups
                  for p in ps]  # fmt: skip
        if not scaled:
            gradients_at()
            return
        if self.runs is None:
            squares = torch.stack([t.square().sum() for t in scaled]).sum()
        else:
            squares = torch.stack([t.square().flatten(1).sum(1) for t in scaled]).sum(0)
        norm = squares.sqrt()
        moves = []
        for group, params in groups:
            scale = group["sam_rho"] / (norm + NORM_EPS)
            for p in params:
                e = p.grad * (per_run(scale, p) if self.runs is not None else scale)
                if group["sam_adaptive"]:
                    e.mul_(p.square())
                p.add_(e)
                moves.append((p, e))
        for p, _ in moves:
            p.grad = None
        try:
            with torch.enable_grad():
                gradients_at()
        finally:
            for p, e in moves:
                p.sub_(e)


def is_sharpness_aware(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` takes its gradients at w + e (:class:`SharpnessAware`)."""
    return isinstance(optimizer, SharpnessAware)


@functools.cache
def sam_class(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``base`` with SAM's perturbation: constructed as ``base`` is, plus the keywords
    ``sam_rho`` and ``sam_adaptive`` (kept in every parameter group)."""

    def __init__(
        self: Any,
        params: Any,
        *args: Any,
        sam_rho: float = 0.05,
        sam_adaptive: bool = False,
        **kwargs: Any,
    ) -> None:
        base.__init__(self, params, *args, **kwargs)
        for group in self.param_groups:
            group.update(sam_rho=sam_rho, sam_adaptive=sam_adaptive)

    return type(f"SAM{base.__name__}", (SharpnessAware, base), {"__init__": __init__})
