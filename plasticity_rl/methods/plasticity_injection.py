"""Plasticity injection: freeze the head and learn on in a fresh copy of it, output unchanged.

Nikishin et al. 2023, "Deep Reinforcement Learning with Plasticity Injection" (NeurIPS). At each
optimiser step listed in ``at_optimizer_steps``, the output layer (head) h_theta of every
network is frozen and two copies with one fresh init theta' are added to it:

    h(x) = h_theta(x) + h_theta'(x) - h_theta'_0(x),

where theta' is trained and theta'_0 is its frozen initial twin. At the moment of injection
theta' = theta'_0, so the network's output does not change; from then on only theta' (and the
layers before the head) learn. A later injection freezes theta' too and adds another pair.

The copies are submodules of the head (``injection<k>`` and ``injection<k>_initial``, one pair
per injection), so the network's ``state_dict`` holds the grown network, and the optimiser
gets theta' as a new parameter group with the head's group settings (learning rate, weight
decay, ...). The method's own state (the steps and the number of injections made) is what a
resume needs to grow a freshly built network again before the network and optimiser states are
loaded (the RL and supervised checkpoints load method states first).

Frozen means the parameters theta and theta'_0 get no gradient; the input x still passes the
gradient of all three terms to the layers before the head, so at the moment of injection that
gradient, (W_theta + W_theta' - W_theta'_0)^T g = W_theta^T g, is also unchanged. (Plasticine's
``Injector`` instead detaches the twin's output, which changes it to (W_theta + W_theta')^T g.)

Notes: the injected copies are not part of unit resets (ReDo, continual backprop) of the last
hidden layer, which zero only the frozen head's column; SB3's gradient clipping covers them
(they are policy parameters). The default, one injection after 100,000 optimiser steps, is a
placeholder of this project: the paper injects once, a quarter into training (50M of 200M
Atari frames); set it for your run length.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import (
    METHODS,
    Method,
    Model,
    check_count,
    is_batched,
    network_weight_layers,
    reset_layer,
)
from plasticity_rl.nn.layers import layer_parameter
from plasticity_rl.registry import ConfigError, require


@METHODS.register("plasticity_injection")
class PlasticityInjection(Method):
    """Freeze each network's head and add a fresh trainable copy minus its frozen initial twin
    at the listed optimiser steps (see module doc).

    Args:
        at_optimizer_steps: increasing optimiser step counts after which to inject.
    """

    needs_autograd = True
    """The grown head is a forward hook the hand-written backward does not know."""

    def __init__(self, at_optimizer_steps: Sequence[int] = (100_000,)):
        super().__init__()
        key, allowed = "plasticity_injection.at_optimizer_steps", "a list of increasing integers"
        steps = at_optimizer_steps
        is_list = isinstance(steps, Sequence) and not isinstance(steps, str) and len(steps) > 0
        require(is_list, key, steps, allowed)
        self.at_optimizer_steps = [check_count(s, key, 1) for s in steps]
        increasing = all(a < b for a, b in zip(steps, steps[1:], strict=False))
        require(increasing, key, list(steps), allowed)
        self.heads: list[nn.Linear] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        """Optimiser steps since attach."""
        self.injections = 0
        """Injections made so far."""
        self._templates: list[nn.Linear] = []
        self._pairs: list[list[tuple[nn.Linear, nn.Linear]]] = []

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        if is_batched(model):
            raise ConfigError("method.plasticity_injection", "batched runs",
                              "single runs (a run's view of a batched network cannot hold the "
                              "grown head)")  # fmt: skip
        self.heads = [layers[-1] for layers in network_weight_layers(model)]
        self.optimizer = optimizer
        # clean copies to draw the injected layers from (made before any hook is added)
        self._templates = [copy.deepcopy(head) for head in self.heads]
        self._pairs = [[] for _ in self.heads]
        handles = [head.register_forward_hook(self._hook(i)) for i, head in enumerate(self.heads)]
        handles.append(optimizer.register_step_post_hook(self._after_step))
        return handles

    def _hook(self, index: int) -> Any:
        def add_injected(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            x = inputs[0]
            for trained, initial in self._pairs[index]:  # module forwards would re-run hooks
                output = output + F.linear(x, trained.weight, trained.bias)
                output = output - F.linear(x, initial.weight, initial.bias)
            return output

        return add_injected

    def _after_step(self, *_: Any) -> None:
        self.steps += 1
        if self.steps in self.at_optimizer_steps:
            self.inject()

    def inject(self) -> None:
        """Freeze every head (and earlier injected copies) and add a fresh pair to each."""
        optimizer = self.optimizer
        assert optimizer is not None, "attach PlasticityInjection before inject"
        for index, head in enumerate(self.heads):
            weight = layer_parameter(head)
            group = next(g for g in optimizer.param_groups if any(p is weight for p in g["params"]))
            for p in [*head.parameters(), *self._trainable(index)]:
                p.requires_grad_(False)
                p.grad = None
            trained = copy.deepcopy(self._templates[index])
            reset_layer(trained, optimizer, "keep")  # a fresh init draw
            initial = copy.deepcopy(trained).requires_grad_(False)
            head.add_module(f"injection{self.injections + 1}", trained)
            head.add_module(f"injection{self.injections + 1}_initial", initial)
            self._pairs[index].append((trained, initial))
            settings = {k: v for k, v in group.items() if k != "params"}
            optimizer.add_param_group({**settings, "params": list(trained.parameters())})
        self.injections += 1

    def _trainable(self, index: int) -> list[nn.Parameter]:
        return [p for trained, _ in self._pairs[index] for p in trained.parameters()
                if p.requires_grad]  # fmt: skip

    def stats(self) -> dict[str, float]:
        """``{"plasticity_injection/injections": n}``: injections so far (a level, not reset)."""
        return {"plasticity_injection/injections": float(self.injections)}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "injections": self.injections}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counters and grow the network to the saved number of injections (its
        weights and optimiser state are then loaded by the checkpoint)."""
        if not self._attached:
            raise RuntimeError("attach PlasticityInjection before load_state_dict")
        if int(state["injections"]) < self.injections:
            raise ValueError(f"state has {state['injections']} injections; the network already "
                             f"has {self.injections}")  # fmt: skip
        while self.injections < int(state["injections"]):
            self.inject()
        self.steps = int(state["steps"])
