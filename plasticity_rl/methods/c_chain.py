"""C-CHAIN: reduce churn, the change of the network's outputs between consecutive updates.

Tang, Obando-Ceron, Castro, Courville & Berseth 2025, "Mitigating Plasticity Loss in Continual
Reinforcement Learning by Reducing Churn" (ICML). Before optimiser step k the parameters are
theta_{k-1}; theta_{k-2} are those before the previous step. Training minimises

    loss + lambda * mean_{x in B_ref, j} (f_theta(x)_j - f_{theta_{k-2}}(x)_j)^2

at theta = theta_{k-1}: the churn the previous update caused on a reference batch B_ref,
averaged over the batch and the output units j, is penalised (theta_{k-2} held fixed). Its
gradient is added before the step (:class:`~plasticity_rl.methods.penalty.GradientPenalty`,
by autograd through one more forward at theta_{k-1} and one at theta_{k-2}). The penalty starts
at the third optimiser step, as in the authors' code, whose history of parameter copies needs
three entries.

The reference batch B_ref is the input of the network's latest training forward before the
step (a forward pre-hook on its first module; training forwards are those in training mode
with grad enabled, so SB3's rollout and evaluation forwards never count):

- RL (SB3 PPO): the current minibatch of observations, drawn uniformly without replacement from
  the latest rollout. The authors' PPO code (``crl_dmc/crl_run_ppo_c_chain_dmc.py``) draws its
  reference batch from the same rollout with the same size but by an independent shuffle; the
  distribution is the same, the draw is not independent of the training minibatch here.
- Supervised: the current training batch, from the current task's stream.

The outputs f are each selected network's own outputs (``networks``: names of a mapping such
as SB3's ``{"pi", "vf"}``; all by default): the authors' PPO penalises the policy mean only
(``networks: [pi]`` in the PPO preset). The two extra forwards run in eval mode with Top-K
counters paused (:func:`~plasticity_rl.methods.penalty.evaluation_forwards`), so they change no
state, draw no dropout noise and are not recorded by other methods.

Default lambda = 100: the authors' code starts its coefficient at 100 and keeps it for the
first 50 rollouts of each task; it then sets it after every rollout to
``target_rel_loss_scale * mean|policy loss| / mean(churn loss)`` over the last 100 rollouts
(0.05 on Continual DMC). That adaptive coefficient needs the PPO policy loss, which a method
does not see; it is not implemented, lambda stays fixed. Two more differences: their code
restarts its parameter history (and the coefficient) at each task switch, which a method does
not see either, so here the penalty runs on across shifts; and their penalty is clipped
together with the PPO loss (``max_grad_norm``), which the SB3 loop here does before the
penalty gradient is added. lambda = 100 is meant for Adam, the authors' optimiser: with plain
SGD, lambda times the step size must stay well below 1 or the penalty overshoots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import METHODS, Model, check_number, is_batched, network_roots
from plasticity_rl.methods.penalty import GradientPenalty, evaluation_forwards
from plasticity_rl.registry import require

FIRST_PENALISED_STEP = 3
"""The optimiser step (counting from 1) at which the churn penalty starts (module doc)."""


@METHODS.register("c_chain")
class CChain(GradientPenalty):
    """lambda * mean (f_theta(B_ref) - f_{theta_{k-2}}(B_ref))^2 before step k (module doc).

    Works on batched runs: each run's churn is averaged over its own batch and outputs, and the
    penalty is summed over runs.

    Args:
        coefficient: lambda, >= 0.
        networks: names of the networks to penalise (a model given as a mapping); null: all.
    """

    needs_autograd = True

    def __init__(self, coefficient: float = 100.0, networks: list[str] | None = None):
        super().__init__("c_chain")
        self.coefficient = check_number(
            coefficient, "c_chain.coefficient", lambda v: v >= 0, "a number >= 0"
        )
        require(
            networks is None or (isinstance(networks, list) and bool(networks)),
            "c_chain.networks",
            networks,
            "null or a non-empty list of network names",
        )
        self.networks = networks
        self.nets: dict[str, nn.Module] = {}
        """Each penalised network as one module (a list of modules becomes a Sequential)."""
        self.steps = 0
        """Optimiser steps since attach."""
        self.previous: dict[str, dict[str, Tensor]] = {}
        """Each network's parameters by name before the latest step (theta_{k-2} at step k)."""
        self._reference: dict[str, Tensor] = {}
        self._batched = False

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        handles = super()._attach(model, optimizer)
        handles.append(optimizer.register_step_pre_hook(self._remember_parameters))
        for name, module in self.nets.items():
            handles.append(_input_module(module).register_forward_pre_hook(self._recorder(name)))
        return handles

    def _penalised(self, model: Model, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        named = dict(model) if isinstance(model, Mapping) else {"net": model}
        if self.networks is not None:
            names = sorted(named) if isinstance(model, Mapping) else []
            require(isinstance(model, Mapping) and set(self.networks) <= set(named),
                    "c_chain.networks", self.networks, f"null or names among {names}")  # fmt: skip
            named = {name: named[name] for name in self.networks}
        self.nets = {name: _as_module(network_roots(net)[0]) for name, net in named.items()}
        self._batched = is_batched(model)
        found = {id(p): p for m in self.nets.values() for p in m.parameters() if p.requires_grad}
        return list(found.values())

    def _recorder(self, name: str) -> Any:
        def record(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if module.training and torch.is_grad_enabled():
                self._reference[name] = inputs[0].detach()

        return record

    def penalty_value(self) -> Tensor | None:
        """lambda * the churn of the previous step on the reference batch; None before the
        third step or without a reference batch."""
        if self.coefficient == 0 or self.steps + 1 < FIRST_PENALISED_STEP:
            return None
        total: Tensor | None = None
        for name, module in self.nets.items():
            x = self._reference.get(name)
            if x is None:
                continue
            with evaluation_forwards(module):
                now = module(x)
                with torch.no_grad():
                    before = functional_call(module, self.previous[name], (x,))
            squared = (now - before).square()
            churn = squared.flatten(1).mean(1).sum() if self._batched else squared.mean()
            total = churn if total is None else total + churn
        return None if total is None else self.coefficient * total

    @torch.no_grad()
    def _remember_parameters(self, *_: Any) -> None:
        """Keep the parameters before this step for the next one (after the penalty hook)."""
        self.previous = {
            name: {k: p.detach().clone() for k, p in module.named_parameters()}
            for name, module in self.nets.items()
        }
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "previous": self.previous}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self._attached:
            raise RuntimeError("attach CChain before load_state_dict")
        previous = {net: dict(params) for net, params in state["previous"].items()}
        if previous:
            expected = {net: {k: p.shape for k, p in m.named_parameters()}
                        for net, m in self.nets.items()}  # fmt: skip
            got = {net: {k: p.shape for k, p in params.items()} for net, params in previous.items()}
            if got != expected:
                raise KeyError("state 'previous' does not match the penalised networks")
        self.previous = previous
        self.steps = int(state["steps"])

    def _run_shaped(self) -> dict[str, Any]:
        if not self._batched:
            return {}
        return {"previous": {net: {k: True for k, _ in module.named_parameters()}
                             for net, module in self.nets.items()}}  # fmt: skip


def _as_module(roots: list[nn.Module]) -> nn.Module:
    """A network given as its root modules, as one module (a Sequential of several)."""
    return roots[0] if len(roots) == 1 else nn.Sequential(*roots)


def _input_module(network: nn.Module) -> nn.Module:
    """The first module a forward of ``network`` calls on its input: its first leaf in
    registration order, a linear layer counting as a leaf (SB3 calls an MLP's ``hidden`` and
    ``output`` parts, never the MLP itself)."""
    module = network
    while not isinstance(module, nn.Linear) and next(module.children(), None) is not None:
        module = next(module.children())
    return module
