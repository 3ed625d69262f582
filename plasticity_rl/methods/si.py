"""Synaptic intelligence (Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic
Intelligence", ICML).

During training every optimiser step adds each parameter's contribution to the decrease of the
task loss, its path integral,

    omega_i += -g_i * delta_theta_i,

where g is the gradient of the task loss at the step and delta_theta the actual change of the
parameter in that step. At each task end the importances are consolidated,

    Omega_i += omega_i / ((theta_i(end) - theta_i(start))^2 + xi),

then omega is reset and theta(start) = theta* = the current parameters. Training on later tasks
minimises loss + c sum_i Omega_i (theta_i - theta*_i)^2 (the paper's form, i.e.
:class:`~plasticity_rl.methods.penalty.QuadraticPenalty` with strength 2c). theta(start) of the
first task is the parameters at :meth:`~plasticity_rl.methods.base.Method.attach`.

Hook order: SI registers a step pre-hook that records g = p.grad (and theta before the step)
BEFORE it registers the penalty pre-hook, and pre-hooks run in registration order, so g
excludes SI's own penalty gradient (as in the paper's code). It includes everything added
before SI's hook runs: gradient hooks such as neuronal decay, gradient clipping, and the
penalties of methods attached before SI (attach SI first to exclude those). delta_theta is
measured by a step post-hook, so it includes changes made by post-hooks registered before SI's.

Defaults: c = 0.1 and xi = 1e-3, the values Zenke et al. use on Permuted MNIST.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import METHODS, Model, check_number
from plasticity_rl.methods.penalty import QuadraticPenalty

if TYPE_CHECKING:
    from plasticity_rl.supervised.streams import Task


@METHODS.register("si")
class SI(QuadraticPenalty):
    """c sum_i Omega_i (theta_i - theta*_i)^2 with path-integral importances (module doc).

    Args:
        coefficient: c, >= 0.
        damping: xi > 0, keeps Omega finite for parameters that barely moved during a task.
    """

    def __init__(self, coefficient: float = 0.1, damping: float = 1e-3):
        coefficient = check_number(coefficient, "si.coefficient", lambda v: v >= 0, "a number >= 0")
        super().__init__(2.0 * coefficient, "si")
        self.damping = check_number(damping, "si.damping", lambda v: v > 0, "a number > 0")
        self.omega: list[torch.Tensor] = []
        """Path integral -sum g * delta_theta per parameter since the last task end."""
        self.start: list[torch.Tensor] = []
        """theta(start): the parameters at the last task end (at attach before the first)."""
        self._gradient: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        handles = [optimizer.register_step_pre_hook(self._record_step_start)]
        handles += super()._attach(model, optimizer)
        handles.append(optimizer.register_step_post_hook(self._accumulate_path_integral))
        self.omega = [torch.zeros_like(p) for p in self.params]
        self.start = [p.detach().clone() for p in self.params]
        return handles

    @torch.no_grad()
    def _record_step_start(self, *_: Any) -> None:
        """Keep g (task-loss gradient, zero if none) and theta before the step (pre-hook)."""
        self._gradient = [
            torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params
        ]
        self._before = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def _accumulate_path_integral(self, *_: Any) -> None:
        """omega -= g * (theta after - theta before) (post-hook)."""
        for omega, g, before, p in zip(
            self.omega, self._gradient, self._before, self.params, strict=True
        ):
            omega.sub_(g * (p - before))
        self._gradient, self._before = [], []

    @torch.no_grad()
    def on_task_end(self, task: Task, model: nn.Module) -> None:
        """Omega += omega / ((theta - theta(start))^2 + xi); reset omega; re-anchor."""
        importance = [
            omega / ((p - start).square() + self.damping)
            for omega, p, start in zip(self.omega, self.params, self.start, strict=True)
        ]
        self.consolidate(importance, "sum")
        self.omega = [torch.zeros_like(omega) for omega in self.omega]
        self.start = [p.detach().clone() for p in self.params]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "omega": list(self.omega), "start": list(self.start)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.omega = self._matching_tensors(state["omega"], "omega")
        self.start = self._matching_tensors(state["start"], "start")
