"""Transforms of the optimiser's parameter update, attached as optimiser step hooks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plasticity_rl.registry import require


class UpdateClipHandle:
    """The two step hooks of :func:`clip_updates`; ``remove()`` detaches both."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_abs: float):
        self.max_abs = float(max_abs)
        self._params: list[Tensor] = []
        self._before: list[Tensor] = []
        self._handles = [
            optimizer.register_step_pre_hook(self._save),
            optimizer.register_step_post_hook(self._clip),
        ]

    def _save(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        with torch.no_grad():
            self._params = [p for group in optimizer.param_groups for p in group["params"]]
            self._before = [p.detach().clone() for p in self._params]

    def _clip(self, *_: Any) -> None:
        if not self._params:
            return
        with torch.no_grad():
            update = torch._foreach_sub(self._params, self._before)
            torch._foreach_clamp_min_(update, -self.max_abs)
            torch._foreach_clamp_max_(update, self.max_abs)
            torch._foreach_add_(self._before, update)
            torch._foreach_copy_(self._params, self._before)
        self._params, self._before = [], []

    def remove(self) -> None:
        """Detach both hooks; the optimiser steps unclipped afterwards."""
        for handle in self._handles:
            handle.remove()


def clip_updates(optimizer: torch.optim.Optimizer, max_abs: float) -> UpdateClipHandle:
    """Clip each parameter's update element-wise to [-max_abs, max_abs] (Keskinen 2024: 0.01).

    A step pre-hook saves the parameters p_old; a step post-hook sets
    p <- p_old + clamp(p - p_old, -max_abs, max_abs). Only the applied update is clipped: the
    optimiser's state (momentum, Adam moments, step counts) is left exactly as the optimiser
    computed it. Post-hooks registered later (e.g. SDM projections) see the clipped parameters.

    Returns:
        a handle whose ``remove()`` detaches both hooks.
    """
    require(max_abs > 0, "optimizer.update_clip", max_abs, "a number > 0, or null for no clip")
    return UpdateClipHandle(optimizer, max_abs)


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> Any:
    """Before every step, rescale all gradients so that their joint L2 norm is <= max_norm.

    ``torch.nn.utils.clip_grad_norm_`` over every parameter of the optimiser, in a step
    pre-hook: g <- g * min(1, max_norm / (||g||_2 + 1e-6)), ||g||_2 the norm of all gradients
    together. Bricken et al. 2023 clip every model at 1.0 (their ``gradient_clip``).

    Returns:
        the hook's handle (``remove()`` detaches it).
    """
    require(max_norm > 0, "optimizer.grad_clip_norm", max_norm, "a number > 0, or null for no clip")

    def clip(opt: torch.optim.Optimizer, *_: Any) -> None:
        params = [p for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    return optimizer.register_step_pre_hook(clip)
