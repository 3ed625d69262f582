"""Hare & Tortoise: a slow EMA copy of the weights, and the fast network reset to it.

Lee et al. 2024, "Slow and Steady Wins the Race: Maintaining Plasticity with Hare and Tortoise
Networks" (ICML). The trained network is the hare theta_H; the tortoise theta_T starts as a copy
at attach time and follows it after every optimiser step,

    theta_T <- lambda theta_T + (1 - lambda) theta_H,

and every ``reset_every_optimizer_steps`` steps the hare is set back to the tortoise,
theta_H <- theta_T, with ``optimizer_state``
(:data:`plasticity_rl.optim.state.OPTIMIZER_STATE_RESETS`) applied to the whole of every
parameter. It covers every trainable parameter of the networks
the method is attached to (for a parametrized layer the stored tensor behind the weight).
Element-wise, so batched runs (:mod:`plasticity_rl.nn.batched`) each follow their own tortoise.

The authors' code (dojeon-ai/Hare-Tortoise, ``src/trainers/base.py``, run by
``scripts/paper/continual/hare_tortoise.sh``) updates the tortoise after every optimiser step
with lambda = 0.999, sets the hare to it every 10 epochs and leaves the optimiser state alone
at that reset (its optimiser is rebuilt at each task start instead): the defaults here are
lambda = 0.999 and ``optimizer_state="keep"``. An interval in epochs has no meaning in RL, so
the reset interval is counted in optimiser steps; its default of 20,000 is this project's
choice (the reset interval Nikishin et al. 2022 use on Atari 100k), to be set per task. Their
loop also resets after the first epoch (``epoch % 10 == 0`` at epoch 0), an off-by-one kept
out here: the first reset comes after a full interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import (
    METHODS,
    Method,
    Model,
    check_count,
    check_number,
    is_batched,
    model_parameters,
)
from plasticity_rl.optim.state import check_optimizer_state_mode, reset_optimizer_state


@METHODS.register("hare_tortoise")
class HareTortoise(Method):
    """Keep an EMA tortoise of the weights and reset the hare to it periodically (module doc).

    Args:
        ema_rate: lambda, the tortoise's decay per optimiser step, in [0, 1).
        reset_every_optimizer_steps: optimiser steps between two hare resets.
        optimizer_state: what happens to the optimiser state at a hare reset.
    """

    def __init__(
        self,
        ema_rate: float = 0.999,
        reset_every_optimizer_steps: int = 20_000,
        optimizer_state: str = "keep",
    ):
        super().__init__()
        self.ema_rate = check_number(ema_rate, "hare_tortoise.ema_rate", lambda v: 0 <= v < 1,
                                     "a number in [0, 1)")  # fmt: skip
        self.reset_every_optimizer_steps = check_count(
            reset_every_optimizer_steps, "hare_tortoise.reset_every_optimizer_steps", 1
        )
        check_optimizer_state_mode(optimizer_state, "hare_tortoise.optimizer_state")
        self.optimizer_state = optimizer_state
        self.hare: list[nn.Parameter] = []
        self.tortoise: list[Tensor] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        """Optimiser steps since attach."""
        self._batched = False
        self._resets = 0

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        self.hare = model_parameters(model)
        self.tortoise = [p.detach().clone() for p in self.hare]
        self.optimizer = optimizer
        self._batched = is_batched(model)
        return [optimizer.register_step_post_hook(self._after_step)]

    @torch.no_grad()
    def _after_step(self, *_: Any) -> None:
        self.steps += 1
        hare = [p.detach() for p in self.hare]
        torch._foreach_lerp_(self.tortoise, hare, 1 - self.ema_rate)
        if self.steps % self.reset_every_optimizer_steps != 0:
            return
        torch._foreach_copy_(hare, self.tortoise)
        for p in self.hare:
            every = torch.ones(p.shape[0], dtype=torch.bool, device=p.device)
            reset_optimizer_state(self.optimizer, p, every, 0, self.optimizer_state)  # type: ignore[arg-type]
        self._resets += 1

    def stats(self) -> dict[str, float]:
        """``{"hare_tortoise/resets": n}``: hare resets since the last call."""
        resets, self._resets = self._resets, 0
        return {"hare_tortoise/resets": float(resets)}

    def state_dict(self) -> dict[str, Any]:
        return self._state(lambda t: t)

    def _run_shaped(self) -> dict[str, Any]:
        return {"tortoise": dict.fromkeys(map(str, range(len(self.tortoise))), True)}

    def run_state_dict(self, run: int) -> dict[str, Any]:
        return self._state(lambda t: t[run] if self._batched else t)

    def _state(self, pick: Callable[[Tensor], Tensor]) -> dict[str, Any]:
        tortoise = {str(i): pick(t).clone() for i, t in enumerate(self.tortoise)}
        return {"steps": self.steps, "tortoise": tortoise}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self._attached:
            raise RuntimeError("attach HareTortoise before load_state_dict")
        saved = state["tortoise"]
        if len(saved) != len(self.tortoise):
            raise KeyError(f"state holds {len(saved)} tortoise tensors, not {len(self.tortoise)}")
        self.steps = int(state["steps"])
        for i, tortoise in enumerate(self.tortoise):
            tortoise.copy_(saved[str(i)])
