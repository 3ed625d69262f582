"""Penalties added to the loss as gradients, and the weight-consolidation penalties (EWC, MAS,
SI) with the per-sample importances they use.

The one mechanism (:class:`GradientPenalty`): a method that adds a term R(theta) to the loss
adds its gradient dR/dp to ``p.grad`` of every penalised tensor p in an optimiser step
pre-hook, which is exactly what adding R to the loss would do, for any optimiser and without
trainer cooperation (a parameter without a gradient gets the penalty gradient alone). The
gradient is a closed form (:meth:`GradientPenalty.penalty_gradients`) or comes from autograd
on a differentiable :meth:`GradientPenalty.penalty_value`. The hook runs where it was
registered among the optimiser's step pre-hooks: after those the optimiser was built with
(gradient-norm clipping, so the penalty gradient is not clipped; SB3 PPO clips inside its own
loop, before the step, so there neither) and in attach order among the methods. Per-run
learning rates of batched runs (:mod:`plasticity_rl.optim.runs`) scale the gradients in an
earlier pre-hook and would miss the penalty, so they are refused with a gradient penalty.
Users: L2 Init, Parseval regularisation, C-CHAIN and the quadratic penalties below.

All three consolidation methods penalise moving the trainable parameters theta away from an
anchor theta*:

    penalty = (strength / 2) * sum_i Omega_i (theta_i - theta*_i)^2

with a per-parameter importance Omega that differs per method (each method's ``coefficient``
keeps the meaning it has in its paper; the method maps it to ``strength``). The parameters are
the tensors the optimiser holds (for a parametrized layer, the stored parameter behind the
weight); the gradient is ``strength * Omega * (theta - theta*)``. Before the first
consolidation (the first task end) Omega is empty: the hook does nothing and training is
bit-identical to training without the method; the same holds for ``strength = 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import Method, Model, check_count
from plasticity_rl.nn.sparse import activity_counters_paused
from plasticity_rl.registry import require

if TYPE_CHECKING:
    from plasticity_rl.supervised.streams import Task

ACCUMULATE_MODES = ("sum", "replace")
"""How a task's importances combine with earlier ones (:meth:`QuadraticPenalty.consolidate`)."""

PER_SAMPLE_GRADIENT_ELEMENTS = 2**24
"""Largest number of per-sample gradient entries held at once (64 MiB in float32)."""


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The distinct tensors of the optimiser's parameter groups that require grad, in order."""
    found: dict[int, Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                found.setdefault(id(p), p)
    return list(found.values())


class GradientPenalty(Method):
    """A term R(theta) added to the loss through its gradient in a step pre-hook (module doc).

    Subclasses choose the penalised tensors (:meth:`_penalised`, called at attach) and give
    the gradient: either :meth:`penalty_gradients` in closed form, or a differentiable
    :meth:`penalty_value` whose autograd gradient the default :meth:`penalty_gradients`
    takes. :meth:`stats` reports ``<name>/penalty``, the value R(theta) now.

    Args:
        name: the method's registry name, used in config error keys.
    """

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.params: list[Tensor] = []
        """The penalised tensors, known after :meth:`attach`."""

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        lrs = getattr(getattr(optimizer, "per_run_lr", None), "lrs", None)
        require(lrs is None, "optimizer.lr", lrs,
                f"one learning rate for all batched runs with method {self.name} (per-run "
                "rates scale the gradients before its penalty gradient is added)")  # fmt: skip
        self.params = self._penalised(model, optimizer)
        return [optimizer.register_step_pre_hook(self._add_penalty_gradient)]

    def _penalised(self, model: Model, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        """The tensors whose gradients get the penalty gradient."""
        raise NotImplementedError

    def penalty_value(self) -> Tensor | None:
        """R(theta) as a differentiable function of :attr:`params`; None while inactive."""
        raise NotImplementedError

    def penalty_gradients(self) -> list[Tensor | None]:
        """dR/dp for each tensor of :attr:`params` (None: no gradient), by autograd of
        :meth:`penalty_value` unless a subclass gives the closed form."""
        with torch.enable_grad():
            value = self.penalty_value()
            return [None] * len(self.params) if value is None else self.autograd_gradients(value)

    def autograd_gradients(self, value: Tensor) -> list[Tensor | None]:
        """d value / dp for each tensor of :attr:`params` by autograd (None: unused)."""
        return list(torch.autograd.grad(value, self.params, allow_unused=True))

    def penalty(self) -> float:
        """R(theta) now (0 while inactive)."""
        with torch.no_grad():
            value = self.penalty_value()
        return 0.0 if value is None else float(value)

    @torch.no_grad()
    def _add_penalty_gradient(self, *_: Any) -> None:
        """p.grad += dR/dp for every penalised tensor (the step pre-hook)."""
        for p, gradient in zip(self.params, self.penalty_gradients(), strict=True):
            if gradient is None:
                continue
            if p.grad is None:
                p.grad = gradient.detach().clone()
            else:
                p.grad.add_(gradient)

    def stats(self) -> dict[str, float]:
        """``<name>/penalty``: the current :meth:`penalty` value (named per method, so that
        several penalties can be logged together)."""
        return {f"{self.name}/penalty": self.penalty()}

    def _matching_tensors(self, tensors: list[Tensor], key: str) -> list[Tensor]:
        """``tensors`` moved to the parameters' devices; empty, or shaped like :attr:`params`."""
        if not self._attached:
            raise RuntimeError(f"attach {type(self).__name__} before load_state_dict")
        if not tensors:
            return []
        shapes = [tuple(t.shape) for t in tensors]
        if shapes != [tuple(p.shape) for p in self.params]:
            raise KeyError(f"state {key!r} has shapes {shapes}, not those of the parameters")
        return [t.to(p.device, p.dtype) for t, p in zip(tensors, self.params, strict=True)]


class QuadraticPenalty(GradientPenalty):
    """(strength / 2) sum_i Omega_i (theta_i - theta*_i)^2 on the optimiser's tensors
    (module doc). Subclasses decide when and how :meth:`consolidate` is called.

    Args:
        strength: the factor in front of the penalty, >= 0 (already mapped from ``coefficient``).
        name: the method's registry name.
    """

    uses_task_boundaries = True

    def __init__(self, strength: float, name: str):
        super().__init__(name)
        self.strength = strength
        self.importance: list[Tensor] = []
        """Omega per tensor of :attr:`params`; empty before the first consolidation."""
        self.anchor: list[Tensor] = []
        """theta* per tensor of :attr:`params`; empty before the first consolidation."""

    def _penalised(self, model: Model, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        return optimizer_parameters(optimizer)

    def consolidate(self, importance: list[Tensor], accumulate: str) -> None:
        """Combine a task's importances with the earlier ones; anchor at the current parameters.

        ``accumulate="sum"``: Omega <- Omega + Omega_task (online EWC with gamma = 1, Schwarz et
        al. 2018; MAS and SI accumulate this way too). ``"replace"``: Omega <- Omega_task, so
        only the latest task is protected. Either way theta* <- the current parameters.
        """
        if accumulate == "sum" and self.importance:
            importance = [old + new for old, new in zip(self.importance, importance, strict=True)]
        self.importance = [omega.detach().clone() for omega in importance]
        self.anchor = [p.detach().clone() for p in self.params]

    def penalty_value(self) -> Tensor | None:
        """(strength / 2) sum_i Omega_i (theta_i - theta*_i)^2; None before consolidation."""
        if not self.importance:
            return None
        total = sum(
            (omega * (p - a).square()).sum()
            for p, omega, a in zip(self.params, self.importance, self.anchor, strict=True)
        )
        return 0.5 * self.strength * total

    def penalty_gradients(self) -> list[Tensor | None]:
        """strength * Omega * (p - theta*) per tensor; None before consolidation or with
        strength 0 (training is then bit-identical to training without the method)."""
        if self.strength == 0 or not self.importance:
            return [None] * len(self.params)
        return [
            self.strength * omega * (p.detach() - a)
            for p, omega, a in zip(self.params, self.importance, self.anchor, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"importance": list(self.importance), "anchor": list(self.anchor)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.importance = self._matching_tensors(state["importance"], "importance")
        self.anchor = self._matching_tensors(state["anchor"], "anchor")


@contextmanager
def evaluation_forwards(model: nn.Module) -> Iterator[None]:
    """Inside, forwards of ``model`` are not the learner's own: every module is in eval mode
    (no dropout; CBP's, ReDo's and C-CHAIN's records of training forwards skip them) and the
    Top-K GABA counters are paused (:func:`~plasticity_rl.nn.sparse.activity_counters_paused`);
    every module's mode is restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with activity_counters_paused(model):
            yield
    finally:
        for module, training in modes.items():
            module.train(training)


def per_sample_importance(
    model: nn.Module,
    params: list[Tensor],
    x: Tensor,
    y: Tensor,
    sample_value: Callable[[Tensor, Tensor], Tensor],
    importance_of: Callable[[Tensor], Tensor],
) -> list[Tensor]:
    """mean_n importance_of(d sample_value(model(x_n), y_n) / d theta) for each theta in params.

    Per-sample gradients come from ``torch.func`` (``functional_call`` + ``grad`` + ``vmap``),
    a chunk of samples at a time (at most :data:`PER_SAMPLE_GRADIENT_ELEMENTS` gradient entries
    at once). Each sample goes through the model alone, as a batch of one: ``sample_value``
    gets its output of shape ``(1, n_outputs)`` and its target with a leading dim of 1, and
    returns a scalar. The forwards are :func:`evaluation_forwards`; no ``.grad`` is touched.
    Tensors of ``params`` that are not parameters of ``model`` get importance 0.
    """
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of.get(id(p)) for p in params]
    theta = {name: p.detach() for name, p in zip(names, params, strict=True) if name is not None}

    def value(weights: dict[str, Tensor], x_n: Tensor, y_n: Tensor) -> Tensor:
        output = functional_call(model, weights, (x_n.unsqueeze(0),))
        return sample_value(output, y_n.unsqueeze(0))

    per_sample_gradients = vmap(grad(value), in_dims=(None, 0, 0))
    total = {name: torch.zeros_like(p) for name, p in theta.items()}
    chunk = max(1, PER_SAMPLE_GRADIENT_ELEMENTS // max(1, sum(p.numel() for p in theta.values())))
    # torch.func.grad ignores the outer no_grad; other params stay out
    with torch.no_grad(), evaluation_forwards(model):
        for start in range(0, x.shape[0], chunk):
            part = slice(start, start + chunk)
            grads = per_sample_gradients(theta, x[part], y[part])
            for name, g in grads.items():
                total[name] += importance_of(g).sum(0)
    return [
        total[name] / x.shape[0] if name is not None else torch.zeros_like(p)
        for name, p in zip(names, params, strict=True)
    ]


class SampledImportancePenalty(QuadraticPenalty):
    """A penalty whose importances come from per-sample gradients on a task's data (EWC, MAS).

    At each task end, ``samples`` training examples of the task are drawn without replacement
    from a generator seeded with ``seed + number of earlier task ends`` (so the draw never
    touches torch's global RNG); all of them, in order, if ``samples`` is None or >= their number;
    then Omega_task = :func:`per_sample_importance` with the subclass's
    :meth:`_sample_value` and :meth:`_importance_of`, and :meth:`consolidate` combines it.

    Only the task's output units enter :meth:`_sample_value`: when the task has a non-empty
    ``active_classes`` list the logits are restricted to those columns (class-incremental
    masking) and labels are mapped to their positions in it. The task object only needs
    ``train_x``, ``train_y`` and optionally ``active_classes``.

    Args:
        strength: the penalty factor (see :class:`QuadraticPenalty`).
        samples: training examples per task used to estimate Omega; None = all.
        accumulate: ``"sum"`` or ``"replace"`` (see :meth:`QuadraticPenalty.consolidate`).
        seed: seed of the example draw.
        name: the method's registry name, used in config error keys.
    """

    def __init__(self, strength: float, samples: int | None, accumulate: str, seed: int, name: str):
        super().__init__(strength, name)
        if samples is not None:
            samples = check_count(samples, f"{name}.samples", 1)
        self.samples = samples
        require(accumulate in ACCUMULATE_MODES, f"{name}.accumulate", accumulate, ACCUMULATE_MODES)
        self.accumulate = accumulate
        self.seed = check_count(seed, f"{name}.seed", 0)
        self.tasks_ended = 0
        """Task ends seen so far (consolidations)."""

    def on_task_end(self, task: Task, model: nn.Module) -> None:
        """Estimate the task's importances on a sample of its training data and consolidate."""
        if not self._attached:
            raise RuntimeError(f"attach {type(self).__name__} before on_task_end")
        device = self.params[0].device if self.params else task.train_x.device
        x, y = task.train_x, task.train_y
        if self.samples is not None and self.samples < x.shape[0]:
            generator = torch.Generator().manual_seed(self.seed + self.tasks_ended)
            chosen = torch.randperm(x.shape[0], generator=generator)[: self.samples]
            x, y = x[chosen], y[chosen]
        x, y = x.to(device), y.to(device)
        active = getattr(task, "active_classes", None)
        if active:
            columns = torch.as_tensor(active, dtype=torch.long, device=device)
            y = _positions_in(y, columns)
        else:
            columns = None

        def sample_value(logits: Tensor, target: Tensor) -> Tensor:
            if columns is not None:
                logits = logits.index_select(-1, columns)
            return self._sample_value(logits, target)

        importance = per_sample_importance(
            model, self.params, x, y, sample_value, self._importance_of
        )
        self.consolidate(importance, self.accumulate)
        self.tasks_ended += 1

    def _sample_value(self, logits: Tensor, target: Tensor) -> Tensor:
        """The scalar whose per-sample gradient defines the importance (logits: ``(1, K)``)."""
        raise NotImplementedError

    def _importance_of(self, gradient: Tensor) -> Tensor:
        """The importance of one per-sample gradient (elementwise)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tasks_ended": self.tasks_ended}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.tasks_ended = int(state["tasks_ended"])


def _positions_in(labels: Tensor, columns: Tensor) -> Tensor:
    """The position of each label in ``columns``; ValueError for labels not in it."""
    lookup = torch.full((int(max(columns.max(), labels.max())) + 1,), -1, device=labels.device)
    lookup[columns] = torch.arange(columns.numel(), device=labels.device)
    positions = lookup[labels]
    if (positions < 0).any():
        missing = sorted(set(labels[positions < 0].tolist()))
        raise ValueError(f"labels {missing} are not among the task's active_classes")
    return positions
