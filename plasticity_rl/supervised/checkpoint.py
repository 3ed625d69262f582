"""Checkpoints of supervised runs: one single-run file per run, also for batched runs.

A checkpoint holds only tensors and plain data (network, optimiser, every method's state, the
run's random state and its progress record) and is loaded with ``torch.load(weights_only=True)``.
Each run of a batched group saves the single-run format, so it can be continued alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plasticity_rl.device import cuda_rng_state, set_cuda_rng_state, to_device
from plasticity_rl.methods import Method
from plasticity_rl.metrics import run_gradient_metrics
from plasticity_rl.nn import (
    run_state_dict,
    stack_run_state_dicts,
)
from plasticity_rl.optim.runs import (
    load_run_optimizer_states,
    run_optimizer_state_dict,
)
from plasticity_rl.registry import ConfigError, require
from plasticity_rl.rundir import CHECKPOINT, check_state_dict
from plasticity_rl.rundir import load_checkpoint as load_verified
from plasticity_rl.rundir import save_checkpoint as save_verified
from plasticity_rl.supervised.learner import Learner


def run_checkpoint(learner: Learner, run: int, progress: dict[str, Any]) -> dict[str, Any]:
    """Run ``run``'s training state in the single-run checkpoint format."""
    model, optimizer = learner.model, learner.optimizer
    # model.state_dict() applies deferred input-layer steps first (plasticity_rl.nn.backprop)
    return {
        "model": run_state_dict(model, run) if learner.batched else model.state_dict(),
        "optimizer": run_optimizer_state_dict(optimizer, run)
        if learner.batched
        else optimizer.state_dict(),
        "methods": {name: m.run_state_dict(run) for name, m in learner.methods.items()},
        "rng": {"torch": learner.rng_state(run), "cuda": cuda_rng_state(learner.device)},
        "progress": progress,
    }


def _verified(path: Path, model_state: dict[str, Any], methods: dict[str, Method]) -> dict:
    """The checkpoint at ``path``, refused (``ConfigError``) unless it fits the run: its keys,
    its network's tensor shapes (tensors only it has are checked by :func:`_load_methods`,
    once the methods have grown the network) and its methods."""
    state = load_verified(path)
    keys = ("model", "optimizer", "methods", "rng", "progress")
    if not all(key in state for key in keys):
        raise ConfigError("--resume", str(path), f"a supervised checkpoint (with {keys})")
    check_state_dict("network", state["model"], model_state, path, allow_extra=True)
    if sorted(state["methods"]) != sorted(methods):
        raise ConfigError("--resume", str(path), f"a checkpoint with the run's methods "
                          f"{sorted(methods)}; it has {sorted(state['methods'])}")  # fmt: skip
    return state


def _load_methods(path: Path, states: Sequence[dict], model: nn.Module, learner_methods:
                  dict[str, Method], batched: bool) -> None:  # fmt: skip
    """Load the methods' states, then refuse a network of other shapes than the saved one.

    Methods come first: one that grows the network (plasticity injection) rebuilds the saved
    shape and optimiser groups from its state, which the network and optimiser states need.
    """
    device = next(model.parameters()).device
    for name, method in learner_methods.items():
        saved = [to_device(state["methods"][name], device) for state in states]
        if batched:
            method.load_run_state_dicts(saved)
        else:
            method.load_state_dict(saved[0])
    current = run_state_dict(model, 0) if batched else model.state_dict()
    for state in states:
        check_state_dict("network", state["model"], current, path)


def _restore(path: Path, restore: Any) -> None:
    """Run ``restore()``; a state that does not fit (optimiser groups, method buffers) is a
    checkpoint of another run."""
    try:
        restore()
    except ConfigError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else repr(err)
        raise ConfigError("--resume", str(path), f"a checkpoint of this run ({first})") from None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    methods: dict[str, Method]) -> dict[str, Any]:  # fmt: skip
    """Restore a (single-run) checkpoint into a single run; returns the progress record.

    Each run of a batched run saves this format too, so it can be continued as a single run.
    """
    state = _verified(path, model.state_dict(), methods)

    def restore() -> None:
        _load_methods(path, [state], model, methods, batched=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        set_cuda_rng_state(state["rng"].get("cuda"), device)

    device = next(model.parameters()).device
    _restore(path, restore)
    return to_device(state["progress"], device)


def load_run_checkpoints(learner: Learner, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Restore batched runs from their single-run checkpoints (run s from ``paths[s]``):
    network, optimiser, method states and random generators; returns each run's progress.

    Raises:
        ConfigError: the checkpoints are not at the same step (one batched group saves all
            its runs at the same task boundary).
    """
    model = learner.model
    single = run_state_dict(model, 0)
    states = [_verified(path, single, learner.methods) for path in paths]
    steps = [state["progress"]["step"] for state in states]
    dirs = [str(path.parent.parent) for path in paths]
    allowed = f"runs checkpointed at one step (got steps {steps}); resume them one by one"
    require(steps == [steps[0]] * len(steps), "--resume", dirs, allowed)

    def restore() -> None:
        _load_methods(paths[0], states, model, learner.methods, batched=True)
        model.load_state_dict(stack_run_state_dicts(model, [state["model"] for state in states]))
        load_run_optimizer_states(learner.optimizer, [state["optimizer"] for state in states])
        for generator, state in zip(learner.generators or [], states, strict=True):
            generator.set_state(state["rng"]["torch"])
        set_cuda_rng_state(states[0]["rng"].get("cuda"), learner.device)

    _restore(paths[0], restore)
    return [to_device(state["progress"], learner.device) for state in states]


def save_all(learner: Learner, run_dirs: Sequence[Path], progresses: list[dict]) -> None:
    """Each run's checkpoint in its run directory (:func:`plasticity_rl.rundir.save_checkpoint`).

    The progress saved carries the run's gradient metrics at this point
    (``gradient_metrics_at_checkpoint``): a resumed run has no ``.grad`` until its first step,
    and a metric recorded before that step reports these values, as the uninterrupted run does.
    """
    gradients = run_gradient_metrics(learner.model) or [None] * learner.runs
    for run, (run_dir, progress) in enumerate(zip(run_dirs, progresses, strict=True)):
        saved = {**progress, "gradient_metrics_at_checkpoint": gradients[run]}
        save_verified(run_dir / CHECKPOINT, run_checkpoint(learner, run, saved))
