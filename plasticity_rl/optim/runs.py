"""Optimisers of batched runs: one optimiser for S runs stacked along a leading run dim.

Every optimiser here (SGD, SGDM, RMSprop, Adagrad, Adam and :class:`plasticity_rl.optim.Adam`)
updates each element from its own gradient and state only, so a batched parameter
``(S, ...)`` is updated exactly as S separate parameters would be; coupled weight decay and
update clipping are element-wise too. What is per tensor rather than per element:

- the step size: :func:`make_run_optimizer` gives each run its own ``lr`` for SGD and SGDM,
  which are linear in the gradient: with ``lr = 1`` and ``weight_decay = 0`` in the optimiser,
  a step pre-hook sets run s's gradient to ``lr_s (g_s + weight_decay p_s)``, so SGD steps
  ``p_s -= lr_s (g_s + wd p_s)`` and SGDM's buffer is ``lr_s`` times a single run's
  (b' = mu b' + lr_s d = lr_s b), making ``p_s -= b'`` the single run's step. Adaptive
  optimisers normalise the gradient, so a per-run ``lr`` is refused for them;
- our Adam's ``uniform_step`` flag: a reset in one run moves the whole tensor to the
  element-wise bias corrections, which give the same numbers.

UPGD reads across elements (its utility maximum over all weights) and draws noise: batched, it
takes each run's own maximum and draws each run's noise from that run's generator
(:attr:`~plasticity_rl.optim.upgd.UPGD.run_generators`, set here), so it too steps each run as
its single run. TRAC's scale is one per run (``runs``, set here): its group state
(``param_groups[0]["trac"]``) has a leading run dim, sliced and stacked with the rest. SAM's
gradient norm is one per run too (``runs``).

:func:`run_optimizer_state_dict` gives run s's state as a single run's optimiser would save it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from plasticity_rl.nn.layers import BatchedLinear, per_run, run_generators
from plasticity_rl.optim.adam import UNIFORM_STEP
from plasticity_rl.optim.presets import OPTIMIZERS, STEP_HOOK_KEYS, SpecType, make_optimizer
from plasticity_rl.optim.trac import TRAC_GROUP_KEY
from plasticity_rl.optim.upgd import UPGD
from plasticity_rl.registry import require, split_spec

PER_RUN_LR_OPTIMIZERS = ("sgd", "sgdm")
"""Presets that accept a list of learning rates, one per batched run."""

CROSS_ELEMENT_OPTIMIZERS = ("kron",)
"""Presets whose update of an element reads other elements of its tensor (Kron's
preconditioner): a batched run would mix its runs, so they are refused there. (UPGD's global
utility maximum and TRAC's scale are taken per run: see the module docstring.)"""


class PerRunLearningRates:
    """The step hooks of a per-run ``lr``: the optimiser (run at lr 1) steps with
    grad_s <- lr_s (grad_s + weight_decay p_s), and ``.grad`` holds the run's own gradient
    again after the step (as a single run's does: metrics such as the gradient norm read it)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: Sequence[float], weight_decay: float):
        self.lrs = [float(lr) for lr in lrs]
        self.weight_decay = float(weight_decay)
        self._scale = torch.tensor(self.lrs)
        self._raw: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles = [optimizer.register_step_pre_hook(self._scale_gradients),
                         optimizer.register_step_post_hook(self._restore_gradients)]  # fmt: skip

    def _scale_gradients(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if params and self._scale.device != params[0].device:
            self._scale = self._scale.to(params[0].device)
        grads = [p.grad for p in params]
        scales = [per_run(self._scale, g) for g in grads]
        with torch.no_grad():
            if self.weight_decay != 0:
                scaled = torch._foreach_add(grads, params, alpha=self.weight_decay)
                torch._foreach_mul_(scaled, scales)
            else:
                scaled = torch._foreach_mul(grads, scales)
        self._raw = list(zip(params, grads, strict=True))
        for p, g in zip(params, scaled, strict=True):
            p.grad = g

    def _restore_gradients(self, *_: Any) -> None:
        for p, g in self._raw:
            p.grad = g
        self._raw = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def make_run_optimizer(
    model: nn.Module, spec: SpecType, runs: int, lrs: Sequence[float] | None = None
) -> torch.optim.Optimizer:
    """The optimiser of a batched network of ``runs`` runs (see the module docstring).

    Args:
        model: the batched network (every parameter has the leading run dim).
        spec: the optimiser spec, as for :func:`plasticity_rl.optim.make_optimizer`.
        runs: S.
        lrs: one learning rate per run (SGD and SGDM only), or None for the spec's ``lr``.

    Raises:
        ConfigError: ``lrs`` for an adaptive optimiser, of the wrong length, or out of range;
            a ``grad_clip_norm`` (one norm over all runs would mix them); one of
            :data:`CROSS_ELEMENT_OPTIMIZERS`.
    """
    name, kwargs = split_spec(spec, "optimizer")
    require(name not in CROSS_ELEMENT_OPTIMIZERS, "optimizer.name", name,
            "an optimiser that updates each element on its own in batched runs (run one seed "
            "per process for this one: --runs 1)")  # fmt: skip
    require(
        kwargs.get("grad_clip_norm") is None,
        "optimizer.grad_clip_norm",
        kwargs.get("grad_clip_norm"),
        "null for batched runs (the norm would mix the runs)",
    )
    if lrs is None:
        optimizer = make_optimizer(model, spec)
        if isinstance(optimizer, UPGD):  # per-run maxima and noise
            layer = next(m for m in model.modules() if isinstance(m, BatchedLinear))
            optimizer.run_generators = run_generators(layer)
        if name in ("trac", "sam"):  # one scale (TRAC) or one gradient norm (SAM) per run
            optimizer.runs = runs  # type: ignore[attr-defined]
        return optimizer
    lrs = list(lrs)
    require(name in PER_RUN_LR_OPTIMIZERS, "optimizer.lr", lrs,
            f"one number for {name} (a per-run list needs {' or '.join(PER_RUN_LR_OPTIMIZERS)}: "
            "adaptive optimisers are not linear in the gradient)")  # fmt: skip
    require(len(lrs) == runs, "optimizer.lr", lrs, f"a number, or a list of {runs} (one per run)")
    for lr in lrs:  # each run's settings must be valid on their own
        others = {k: v for k, v in kwargs.items() if k not in ("lr", *STEP_HOOK_KEYS)}
        OPTIMIZERS.create(name, **others, lr=lr)
    weight_decay = float(kwargs.get("weight_decay", 0.0))
    optimizer = make_optimizer(model, spec, lr=1.0, weight_decay=0.0)
    hook = PerRunLearningRates(optimizer, lrs, weight_decay)
    optimizer.per_run_lr = hook  # type: ignore[attr-defined]
    optimizer.plasticity_handles.append(hook)  # type: ignore[attr-defined]
    return optimizer


def run_optimizer_state_dict(optimizer: torch.optim.Optimizer, run: int) -> dict[str, Any]:
    """Run ``run``'s optimiser state, as ``state_dict()`` of the same optimiser in a single run.

    State tensors shaped like their (batched) parameter are sliced at ``run``; our Adam's
    ``uniform_step`` is recomputed from the run's step counts; scalars shared by all runs (torch
    Adam's step count) are copied. With per-run learning rates the groups get the run's ``lr``
    and ``weight_decay`` and SGDM's momentum buffer is divided by ``lr_s`` (see the module doc).
    """
    state = optimizer.state_dict()
    per_run_lr: PerRunLearningRates | None = getattr(optimizer, "per_run_lr", None)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    run_state: dict[int, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        shape = params[index].shape
        sliced = {key: _run_value(value, shape, run) for key, value in param_state.items()}
        if UNIFORM_STEP in sliced and isinstance(sliced.get("step"), Tensor):
            steps = sliced["step"]
            uniform = bool((steps == steps.flatten()[0]).all()) if steps.numel() else True
            sliced[UNIFORM_STEP] = int(steps.flatten()[0]) if uniform else None
        if per_run_lr is not None and "momentum_buffer" in sliced:
            lr = per_run_lr.lrs[run]
            buffer = sliced["momentum_buffer"]
            sliced["momentum_buffer"] = buffer / lr if lr != 0 and buffer is not None else buffer
        run_state[index] = sliced
    groups = [dict(group) for group in state["param_groups"]]
    for group in groups:
        if TRAC_GROUP_KEY in group:
            group[TRAC_GROUP_KEY] = {k: v[run].clone() for k, v in group[TRAC_GROUP_KEY].items()}
    if per_run_lr is not None:
        for group in groups:
            group.update(lr=per_run_lr.lrs[run], weight_decay=per_run_lr.weight_decay)
    return {"state": run_state, "param_groups": groups}


def load_run_optimizer_states(optimizer: torch.optim.Optimizer,
                              states: Sequence[Mapping[str, Any]]) -> None:  # fmt: skip
    """Load run s's single-run optimiser state ``states[s]`` into the batched ``optimizer``:
    the inverse of :func:`run_optimizer_state_dict` for all runs at once.

    Per-run tensors are stacked (SGDM's momentum buffer multiplied back by ``lr_s`` under
    per-run learning rates), shared values come from run 0, ``uniform_step`` is kept where the
    runs agree; the batched optimiser keeps its own param groups.
    """
    per_run_lr: PerRunLearningRates | None = getattr(optimizer, "per_run_lr", None)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stacked: dict[Any, dict[str, Any]] = {}
    for index, first in states[0]["state"].items():
        shape = params[int(index)].shape
        entry: dict[str, Any] = {}
        for key, value in first.items():
            values = [state["state"][index][key] for state in states]
            if key == UNIFORM_STEP:
                entry[key] = value if all(v == value for v in values) else None
            elif isinstance(value, Tensor) and (len(states), *value.shape) == tuple(shape):
                if per_run_lr is not None and key == "momentum_buffer":
                    values = [v * lr for v, lr in zip(values, per_run_lr.lrs, strict=True)]
                entry[key] = torch.stack(values)
            else:
                entry[key] = value
        stacked[index] = entry
    groups = optimizer.state_dict()["param_groups"]
    for i, group in enumerate(groups):
        if TRAC_GROUP_KEY in states[0]["param_groups"][i]:
            runs_state = [state["param_groups"][i][TRAC_GROUP_KEY] for state in states]
            group[TRAC_GROUP_KEY] = {k: torch.stack([r[k] for r in runs_state])
                                     for k in runs_state[0]}  # fmt: skip
    optimizer.load_state_dict({"state": stacked, "param_groups": groups})


def _run_value(value: Any, param_shape: torch.Size, run: int) -> Any:
    if isinstance(value, Tensor) and value.shape == param_shape:
        return value[run].clone()
    return value.clone() if isinstance(value, Tensor) else value
