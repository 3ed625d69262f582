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

The coefficient lambda is the authors' adaptive one (``bluecontra/C-CHAIN`` @2f8bedf,
``crl_dmc/crl_run_ppo_c_chain_dmc.py``): it starts at ``coefficient`` = 100 and, once the
method has been given ``adapt_from_losses`` = 50 training losses, is set after every further
one to

    lambda = target_relative_loss_scale * mean |L| / (mean C + 1e-8)

over the last ``loss_window`` = 100 entries, where L is the training loss the trainer passes to
:meth:`CChain.on_training_loss` and C the (unscaled) churn of the latest step then (0 before the
third step); ``target_relative_loss_scale`` = 0.05 is their Continual DMC setting, so that the
penalty stays about 5% of the task loss. An entry is what the trainer passes:

- RL (SB3 PPO): one per rollout, after PPO's training on it, as their code (one per iteration).
  L is PPO's clipped-surrogate policy loss, the mean over the rollout's minibatches that SB3
  records (their code appends the last minibatch's; SB3 does not keep it).
- Supervised: one per optimiser step, each run's mean loss of the batch (their MinAtar DQN
  variant also adapts per gradient step, with its own scale and windows).

``target_relative_loss_scale: null`` keeps lambda = ``coefficient`` throughout. Two differences
remain: their code restarts the parameter history, the coefficient and its windows at each task
switch, which a method does not see (PPO has no task boundaries and online streams signal none),
so here they run on across shifts; and their penalty is clipped together with the PPO loss
(``max_grad_norm``), which the SB3 loop here does before the penalty gradient is added. With
plain SGD, lambda times the step size must stay well below the inverse curvature of the churn
(for MNIST inputs, lambda 100 at step 0.003 diverges within ten steps): the adaptive lambda keeps
the penalty's scale tied to the loss's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import (
    METHODS,
    Model,
    check_count,
    check_number,
    is_batched,
    network_roots,
)
from plasticity_rl.methods.penalty import GradientPenalty, evaluation_forwards
from plasticity_rl.registry import require

FIRST_PENALISED_STEP = 3
"""The optimiser step (counting from 1) at which the churn penalty starts (module doc)."""
ADAPTATION_KEYS = ("coefficient", "latest_churn", "loss_window", "churn_window")
"""The tensors of :attr:`CChain.adaptation` (each with a leading run dim in batched runs)."""


@METHODS.register("c_chain")
class CChain(GradientPenalty):
    """lambda * mean (f_theta(B_ref) - f_{theta_{k-2}}(B_ref))^2 before step k (module doc).

    Works on batched runs: each run's churn is averaged over its own batch and outputs, each
    run adapts its own lambda from its own losses, and the penalty is summed over runs.

    Args:
        coefficient: lambda, >= 0: its value until it adapts (throughout without adaptation).
        networks: names of the networks to penalise (a model given as a mapping); null: all.
        target_relative_loss_scale: the penalty's target size relative to the loss, > 0; null:
            no adaptation.
        adapt_from_losses: the number of training losses after which lambda adapts, >= 1.
        loss_window: how many of the latest losses and churns the adaptation averages, >= 1.
    """

    needs_autograd = True

    def __init__(
        self,
        coefficient: float = 100.0,
        networks: list[str] | None = None,
        target_relative_loss_scale: float | None = 0.05,
        adapt_from_losses: int = 50,
        loss_window: int = 100,
    ):
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
        if target_relative_loss_scale is not None:
            check_number(target_relative_loss_scale, "c_chain.target_relative_loss_scale",
                         lambda v: v > 0, "null or a number > 0")  # fmt: skip
        self.target_relative_loss_scale = target_relative_loss_scale
        self.adapt_from_losses = check_count(adapt_from_losses, "c_chain.adapt_from_losses", 1)
        self.loss_window = check_count(loss_window, "c_chain.loss_window", 1)
        self.nets: dict[str, nn.Module] = {}
        """Each penalised network as one module (a list of modules becomes a Sequential)."""
        self.steps = 0
        """Optimiser steps since attach."""
        self.previous: dict[str, dict[str, Tensor]] = {}
        """Each network's parameters by name before the latest step (theta_{k-2} at step k)."""
        self.adaptation: dict[str, Tensor] = {}
        """lambda, the latest churn, and the windows of |loss| and churn (ring buffers), each
        with a leading run dim in batched runs; empty until the first churn or loss."""
        self.losses_seen = 0
        """Training losses given to :meth:`on_training_loss` since attach."""
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
        churn = self._churn()
        if churn is None:
            return None
        return (self.adaptation.get("coefficient", self.coefficient) * churn).sum()

    def penalty_gradients(self) -> list[Tensor | None]:
        """The penalty's gradient (autograd), keeping the step's churn for the adaptation."""
        with torch.enable_grad():
            churn = self._churn()
            if churn is None:
                return [None] * len(self.params)
            state = self._adaptation_like(churn)
            state["latest_churn"] = churn.detach()
            return self.autograd_gradients((state["coefficient"] * churn).sum())

    def _churn(self) -> Tensor | None:
        """The mean squared output change on the reference batch (one value per batched run)."""
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
            churn = squared.flatten(1).mean(1) if self._batched else squared.mean()
            total = churn if total is None else total + churn
        return total

    def _adaptation_like(self, value: Tensor) -> dict[str, Tensor]:
        """:attr:`adaptation`, created shaped like ``value`` (one entry per run) if empty."""
        if not self.adaptation:
            run, window = value.shape, (*value.shape, self.loss_window)
            self.adaptation = {
                "coefficient": torch.full(run, float(self.coefficient), device=value.device),
                "latest_churn": torch.zeros(run, device=value.device),
                "loss_window": torch.zeros(window, device=value.device),
                "churn_window": torch.zeros(window, device=value.device),
            }
        return self.adaptation

    @torch.no_grad()
    def on_training_loss(self, losses: Tensor) -> None:
        """Record |loss| and the latest churn; adapt lambda once enough are in (module doc)."""
        if self.target_relative_loss_scale is None:
            return
        value = losses.detach().float().reshape(-1 if self._batched else ())
        state = self._adaptation_like(value)
        slot = self.losses_seen % self.loss_window
        state["loss_window"][..., slot] = value.abs()
        state["churn_window"][..., slot] = state["latest_churn"]
        self.losses_seen += 1
        if self.losses_seen >= self.adapt_from_losses:
            filled = min(self.losses_seen, self.loss_window)
            loss = state["loss_window"][..., :filled].mean(-1)
            churn = state["churn_window"][..., :filled].mean(-1)
            state["coefficient"] = self.target_relative_loss_scale * loss / (churn + 1e-8)

    def stats(self) -> dict[str, float]:
        """``c_chain/penalty`` (lambda times the churn now) and ``c_chain/coefficient``
        (lambda; the mean over batched runs)."""
        coefficient = self.adaptation.get("coefficient")
        mean = self.coefficient if coefficient is None else float(coefficient.mean())
        return {**super().stats(), "c_chain/coefficient": mean}

    @torch.no_grad()
    def _remember_parameters(self, *_: Any) -> None:
        """Keep the parameters before this step for the next one (after the penalty hook)."""
        self.previous = {
            name: {k: p.detach().clone() for k, p in module.named_parameters()}
            for name, module in self.nets.items()
        }
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "previous": self.previous, "adaptation": self.adaptation,
                "losses_seen": self.losses_seen}  # fmt: skip

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
        device = self.params[0].device if self.params else None
        self.adaptation = {k: v.to(device) for k, v in state["adaptation"].items()}
        self.losses_seen = int(state["losses_seen"])

    def _run_shaped(self) -> dict[str, Any]:
        if not self._batched:
            return {}
        return {"previous": {net: {k: True for k, _ in module.named_parameters()}
                             for net, module in self.nets.items()},
                "adaptation": dict.fromkeys(ADAPTATION_KEYS, True)}  # fmt: skip


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
