"""What a supervised run does at its safe points and at its end.

At safe points (task ends, regression bins, chunk ends) a loop asks :class:`RunControl` whether
a checkpoint is due or a signal asks it to stop; every step's loss goes through
:func:`check_losses` (divergence); at the end each run gets ``results.json`` and its final
``status.json`` (:func:`write_results`), and ``config.yaml`` records the run
(:func:`recorded_config`). The files are written atomically (:mod:`plasticity_rl.rundir`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.config import to_yaml
from plasticity_rl.rundir import (
    Diverged,
    Interrupted,
    StopSignals,
    write_status,
    write_text_atomic,
)
from plasticity_rl.supervised.checkpoint import save_all
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.learner import Learner


@dataclass
class RunControl:
    """What a loop checks at its safe points (task ends, regression bins, chunk ends):
    whether a checkpoint is due (every ``train.checkpoint_every_steps``) or a signal asks it to
    checkpoint and stop (:class:`~plasticity_rl.rundir.StopSignals`)."""

    learner: Learner
    run_dirs: Sequence[Path]
    progresses: list[dict[str, Any]]
    stop: StopSignals
    every: int
    last: int = 0
    started: float = field(default_factory=time.time)
    """When this invocation began training (the clock of :meth:`wall_seconds`)."""

    def __post_init__(self) -> None:
        self._seconds_before = [float(p.get("wall_seconds", 0.0)) for p in self.progresses]

    def wall_seconds(self) -> float:
        """The run's training time so far, over all its invocations: the time recorded in the
        checkpoint it resumed from (``progress["wall_seconds"]``; work redone after an
        interruption counts once) plus this invocation's. The same for every run of a batched
        group (their time together)."""
        return self._seconds_before[0] + time.time() - self.started

    def checkpoint(self) -> None:
        """Save every run's checkpoint (and its step in ``status.json``); raise
        :class:`Interrupted` if a signal came."""
        seconds = self.wall_seconds()
        for p in self.progresses:
            p["wall_seconds"] = seconds
        save_all(self.learner, self.run_dirs, self.progresses)
        self.last = step = self.progresses[0]["step"]
        for run_dir, p in zip(self.run_dirs, self.progresses, strict=True):
            write_status(run_dir, "running", step=step, task=p["task"], checkpoint_step=step)
        if self.stop.received is not None:
            raise Interrupted(self.stop.received, step)

    def due(self) -> bool:
        """A checkpoint is due at this safe point (interval reached, or a signal came)."""
        return self.stop.received is not None or (
            self.every > 0 and self.progresses[0]["step"] - self.last >= self.every
        )


def check_losses(losses: Tensor, progresses: list[dict[str, Any]]) -> None:
    """Record the step at which each run's training loss first became NaN or infinite (one
    check per step, on the loss the step computed anyway: about 0.5 us for a single run, 5 us
    for 30 batched runs); raise :class:`Diverged` once every run has diverged."""
    if math.isfinite((losses if losses.dim() == 0 else losses.sum()).item()):
        return  # NaN or infinity in any run makes the sum non-finite
    finite = torch.isfinite(losses)
    for p, ok in zip(progresses, finite.reshape(-1).tolist(), strict=True):
        if not ok and p["diverged_at_step"] is None:
            p["diverged_at_step"] = p["step"]
    if all(p["diverged_at_step"] is not None for p in progresses):
        raise Diverged("the training loss", progresses[0]["step"])


def recorded_config(cfg: SupervisedRunConfig) -> str:
    """``config.yaml``: the run's config, without ``train.stop_after_tasks`` (a pause of this
    invocation, not part of the run: a plain ``--resume`` finishes the run)."""
    return to_yaml(replace(cfg, train=replace(cfg.train, stop_after_tasks=None)))


def write_results(learner: Learner, run_dirs: list[Path], progresses: list[dict[str, Any]],
                   all_results: list[dict[str, Any]], wall_seconds: float) -> None:  # fmt: skip
    """Each run's ``results.json`` and final ``status.json``: ``complete``, ``stopped``
    (``train.stop_after_tasks``: no results.json) or ``diverged`` (no metrics: they would be
    of a broken network); ``wall_seconds``: :meth:`RunControl.wall_seconds`."""
    wall_seconds = round(wall_seconds, 1)
    for run, (results, progress, run_dir) in enumerate(
        zip(all_results, progresses, run_dirs, strict=True)
    ):
        step, task = progress["step"], progress["task"]
        if "stopped_after_tasks" in results:
            write_status(run_dir, "stopped", step=step, task=task, checkpoint_step=step)
            continue
        diverged = progress["diverged_at_step"]
        if diverged is not None:
            results.clear()
            results["status"] = "diverged"
        else:
            results["status"] = "complete"
        results.update(
            stream=getattr(learner.streams[run], "description", {}),
            steps=step,
            wall_seconds=wall_seconds,
            diverged_at_step=diverged,
        )
        if diverged is None:
            results["plasticity"] = progress["plasticity"]
            results["final_plasticity"] = (progress["plasticity"] or [{}])[-1]
        text = json.dumps(_json_safe(results), indent=2) + "\n"
        write_text_atomic(run_dir / "results.json", text)
        write_status(run_dir, results["status"], step=step, task=task, diverged_at_step=diverged,
                     wall_seconds=wall_seconds)  # fmt: skip


def _json_safe(value: Any) -> Any:
    """Plain JSON: NaN (e.g. a time-to-recover that never came) becomes null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
