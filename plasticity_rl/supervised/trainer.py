"""The supervised continual-learning loops, on the same layers, optimisers and methods as PPO.

Read top to bottom: for each task, train on its batches (methods act through their hooks;
task-aware methods also see ``on_batch`` and ``on_task_end``), evaluate every task, log
plasticity metrics on a probe (online streams: before each task, on its first examples, as
Dohare et al.'s code; other streams: after each task, on the finished task), and checkpoint.
Classification streams fill the accuracy matrix; online streams (Online Permuted MNIST) report
online accuracy per task; the slowly-changing regression reports its squared error in bins.
TensorBoard tags are ``cl/...`` and ``plasticity/net/<layer>/...``, against optimiser steps (=
examples for the online streams).

The pieces live beside this file: building the learner (:mod:`.learner`), one training step and
its batches (:mod:`.steps`), evaluation and results (:mod:`.evaluation`), checkpoints
(:mod:`.checkpoint`).

Batched runs (:func:`train_runs`): S runs of one config that differ in their seed (and
optionally in per-run values, :data:`~plasticity_rl.supervised.learner.PER_RUN_KEYS`) train as
ONE batched network through the same loop: everything after a step -- logging, evaluation,
plasticity metrics, checkpoints, results -- is done per run on
:func:`~plasticity_rl.nn.run_module` / :func:`~plasticity_rl.nn.run_state_dict` views, in the
single-run format. Run s sees exactly what a single run with its seed sees: its stream, its
example order (:func:`~plasticity_rl.supervised.steps.task_order_generator`), its initial
network and its random draws.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from plasticity_rl.config import to_yaml
from plasticity_rl.methods import Method
from plasticity_rl.nn.sparse import end_epoch
from plasticity_rl.registry import require
from plasticity_rl.supervised.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    load_run_checkpoints,
    save_all,
)
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.evaluation import (
    classification_results,
    continual_eval,
    log_method_stats,
    log_plasticity,
    record_plasticity,
    task_end_evaluation,
)
from plasticity_rl.supervised.learner import (
    Learner,
    build_batched_learner,
    build_learner,
    build_stream,
)
from plasticity_rl.supervised.regression import RegressionStream
from plasticity_rl.supervised.steps import (
    run_batches,
    run_class_mask,
    task_order_generator,
    train_step,
)


def _per_run(values: Tensor) -> list[float]:
    """A per-run tensor (0-d for a single run) as one float per run."""
    return values.reshape(-1).tolist()


def train_tasks(
    learner: Learner,
    writers: Sequence[SummaryWriter],
    run_dirs: Sequence[Path],
    progresses: list[dict[str, Any]],
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Train on every task of a classification stream; returns each run's final results."""
    model, methods = learner.model, learner.methods
    stream, tc, batched = learner.streams[0], learner.cfgs[0].train, learner.batched
    num_tasks = len(stream.tasks)
    batch_size = 1 if stream.online else tc.batch_size
    test_sets: list[dict[int, tuple[Tensor, Tensor, Tensor | None]]] = [{} for _ in progresses]
    progress = progresses[0]  # task and step: the same in every run
    runs = torch.Size([learner.runs]) if batched else torch.Size()
    # one example per step: the hand-written backward reads the input layer once per block
    backprop = learner.backprop
    prefetch = backprop.prefetch if backprop is not None and batch_size == 1 else None
    for t in range(progress["task"], num_tasks):
        tasks = [s.tasks[t] for s in learner.streams]
        mask = run_class_mask(tasks, stream.num_classes, batched)
        n = len(tasks[0].train_y)
        sizes = [len(task.train_y) for task in tasks]
        require(sizes == [n] * len(tasks), f"task {t} training examples", sizes,
                "the same number in every batched run")  # fmt: skip
        order_gens = [task_order_generator(cfg.seed, t) for cfg in learner.cfgs]
        if stream.online:  # Dohare et al.: before the task, on the examples it starts with
            for run, (writer, p) in enumerate(zip(writers, progresses, strict=True)):
                probe = tasks[run].train_x[: tc.probe_size]
                record_plasticity(writer, learner.run_model(run), probe, p, t, "before_task")
        correct_online, seen_online = torch.zeros(runs, dtype=torch.long), 0
        loss_sum, loss_count = torch.zeros(runs), 0
        steps_in_task = tc.epochs_per_task * math.ceil(n / batch_size)
        bar = tqdm(total=steps_in_task, desc=f"task {t + 1}/{num_tasks}", disable=not show_progress,
                   unit="step", leave=False)  # fmt: skip
        model.train()
        for _epoch in range(tc.epochs_per_task):
            orders = [torch.arange(n) if stream.online else torch.randperm(n, generator=g)
                      for g in order_gens]  # fmt: skip
            for x, y in run_batches(tasks, orders, batch_size, batched, prefetch):
                size = y.shape[-1] if batched else len(y)
                for method in methods.values():
                    x, y = method.on_batch(x, y)
                logits, losses = train_step(learner, x, y, "cross_entropy", mask)
                for p in progresses:
                    p["step"] += 1
                step = progress["step"]
                loss_sum, loss_count = loss_sum.add_(losses.detach()), loss_count + 1
                if stream.online:  # prediction made before this example's update
                    if logits.shape[-2] != size:  # the stream's examples, not those replayed
                        logits, y = logits[..., :size, :], y[..., :size]
                    correct_online += logits.argmax(-1).eq(y).sum(-1)
                    seen_online += size
                if step % tc.log_every_steps == 0:
                    mean_losses = _per_run(loss_sum / loss_count)
                    for writer, p, value in zip(writers, progresses, mean_losses, strict=True):
                        writer.add_scalar("cl/train_loss", value, step)
                        note_divergence(p, value)
                    loss_sum, loss_count = torch.zeros(runs), 0
                    log_method_stats(writers, methods, step)
                if tc.eval_every_steps and step % tc.eval_every_steps == 0:
                    for run, writer in enumerate(writers):
                        run_stream, run_net = learner.streams[run], learner.run_model(run)
                        continual_eval(run_stream, run_net, t, test_sets[run], tc, writer, step,
                                       progresses[run])  # fmt: skip
                bar.update()
            end_epoch(model)  # e.g. Top-K's k annealing steps once per epoch
        bar.close()
        if stream.online:
            online = 100.0 * correct_online / max(seen_online, 1)
            for writer, p, value in zip(writers, progresses, _per_run(online), strict=True):
                p["online_accuracy"].append(value)
                writer.add_scalar("cl/online_accuracy", value, p["step"])
        for run, (writer, p) in enumerate(zip(writers, progresses, strict=True)):
            if not stream.online:
                run_net = learner.run_model(run)
                task_end_evaluation(learner.streams[run], run_net, methods, t, test_sets[run],
                                     writer, p)  # fmt: skip
                probe_idx = torch.randperm(n, generator=order_gens[run])[: tc.probe_size]
                record_plasticity(writer, run_net, tasks[run].train_x[probe_idx], p, t,
                                  "after_task")  # fmt: skip
            p["task_end_steps"].append(p["step"])
            p["task"] = t + 1
        del tasks
        save_all(learner, run_dirs, progresses)
        if tc.stop_after_tasks is not None and progress["task"] >= tc.stop_after_tasks:
            return [{"stopped_after_tasks": p["task"]} for p in progresses]
    return [classification_results(stream, p, tc) for p in progresses]


def train_regression(
    learner: Learner,
    writers: Sequence[SummaryWriter],
    run_dirs: Sequence[Path],
    progresses: list[dict[str, Any]],
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Online regression, one example per step; squared error logged per bin."""
    model, batched = learner.model, learner.batched
    streams: list[RegressionStream] = learner.streams  # type: ignore[assignment]
    stream, progress = streams[0], progresses[0]
    for s, p in zip(streams, progresses, strict=True):
        if p.get("generator") is not None:
            s.generator.load_state_dict(p["generator"])
    bar = tqdm(total=stream.total_examples, initial=progress["step"], disable=not show_progress,
               unit="example")  # fmt: skip
    model.train()
    while progress["step"] < stream.total_examples:
        count = min(stream.bin_size - progress["step"] % stream.bin_size,
                    stream.total_examples - progress["step"])  # fmt: skip
        samples = [s.generator.sample(count) for s in streams]
        # Step-major: xs[i] is step i's input, (1, in) for a single run, (S, 1, in) batched.
        xs = torch.stack([x for x, _ in samples], 1) if batched else samples[0][0]
        ys = torch.stack([y for _, y in samples], 1) if batched else samples[0][1]
        steps = zip(xs.unsqueeze(-2).unbind(0), ys.unsqueeze(-2).unbind(0), strict=True)
        errors = torch.stack([train_step(learner, x, y, "mse")[1].detach() for x, y in steps])
        log_method_stats(writers, learner.methods, progress["step"] + count)
        for run, (writer, p, error) in enumerate(
            zip(writers, progresses, _per_run(errors.mean(0)), strict=True)
        ):
            p["step"] += count
            p["bin_errors"].append(error)
            note_divergence(p, error)
            writer.add_scalar("cl/squared_error", error, p["step"])
            probe = samples[run][0][: learner.cfgs[run].train.probe_size]
            log_plasticity(writer, learner.run_model(run), probe, p["step"])
            p["generator"] = streams[run].generator.state_dict()
        save_all(learner, run_dirs, progresses)
        bar.update(count)
    bar.close()
    return [{"bin_size": stream.bin_size, "squared_error_bins": p["bin_errors"]}
            for p in progresses]  # fmt: skip


def new_progress() -> dict[str, Any]:
    """Where a run stands: checkpointed at every task boundary (or regression bin)."""
    return {
        "task": 0,
        "step": 0,
        "accuracy_matrix": [],
        "online_accuracy": [],
        "curves": {},
        "plasticity": [],
        "task_end_steps": [],
        "bin_errors": [],
        "generator": None,
        "diverged_at_step": None,
    }


def note_divergence(progress: dict[str, Any], loss: float) -> None:
    """Record the step at which a run's logged training loss first became NaN or infinite."""
    if not math.isfinite(loss) and progress.get("diverged_at_step") is None:
        progress["diverged_at_step"] = progress["step"]


def train(
    cfg: SupervisedRunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    prepared: tuple[Any, nn.Module, torch.optim.Optimizer, dict[str, Method]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the configured stream; writes ``results.json`` and returns the results."""
    torch.set_num_threads(1)
    if prepared is None:
        stream = build_stream(cfg)
        model, optimizer, methods = build_learner(cfg, stream)
    else:
        stream, model, optimizer, methods = prepared
    learner = Learner([cfg], [stream], model, optimizer, methods)
    if resume:
        progress = load_checkpoint(run_dir / CHECKPOINT, model, optimizer, methods)
    else:
        progress = new_progress()
    return _train(learner, [run_dir], [progress], resume, show_progress)[0]


def train_runs(
    cfg: SupervisedRunConfig,
    seeds: Sequence[int],
    run_dirs: Sequence[Path],
    *,
    resume: bool = False,
    show_progress: bool = True,
    prepared: Learner | None = None,
) -> list[dict[str, Any]]:
    """Train one run per seed as batched runs; run s writes to ``run_dirs[s]`` exactly what a
    single run with seed ``seeds[s]`` writes (``config.yaml``, TensorBoard log, checkpoint,
    ``results.json``; ``wall_seconds`` is the time of all runs together). ``resume``: continue
    from the runs' checkpoints (:func:`load_run_checkpoints`)."""
    torch.set_num_threads(1)
    learner = build_batched_learner(cfg, seeds) if prepared is None else prepared
    require(len(run_dirs) == learner.runs, "run_dirs", len(run_dirs), f"{learner.runs} dirs")
    if resume:
        progresses = load_run_checkpoints(learner, [d / CHECKPOINT for d in run_dirs])
    else:
        progresses = [new_progress() for _ in run_dirs]
    return _train(learner, list(run_dirs), progresses, resume, show_progress)


def _train(learner: Learner, run_dirs: list[Path], progresses: list[dict[str, Any]],
           resume: bool, show_progress: bool) -> list[dict[str, Any]]:  # fmt: skip
    """The loop of the stream's kind for every run, then each run's ``results.json``."""
    if not resume:
        for run_cfg, run_dir in zip(learner.cfgs, run_dirs, strict=True):
            (run_dir / "config.yaml").write_text(to_yaml(run_cfg))
    start = time.time()
    writers = [SummaryWriter(str(run_dir)) for run_dir in run_dirs]
    try:
        loop = train_regression if isinstance(learner.streams[0], RegressionStream) else train_tasks
        all_results = loop(learner, writers, run_dirs, progresses, show_progress)
        for writer, results, progress in zip(writers, all_results, progresses, strict=True):
            for key in ("average_accuracy", "average_forgetting", "backward_transfer"):
                if key in results:
                    writer.add_scalar(f"cl/{key}", results[key], progress["step"])
    finally:
        for writer in writers:
            writer.close()
    wall_seconds = round(time.time() - start, 1)
    for run, (results, progress, run_dir) in enumerate(
        zip(all_results, progresses, run_dirs, strict=True)
    ):
        results.update(
            stream=getattr(learner.streams[run], "description", {}),
            steps=progress["step"],
            wall_seconds=wall_seconds,
            plasticity=progress["plasticity"],
            final_plasticity=progress["plasticity"][-1] if progress["plasticity"] else {},
            diverged_at_step=progress.get("diverged_at_step"),
        )
        if "stopped_after_tasks" not in results:
            (run_dir / "results.json").write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    return all_results


def _json_safe(value: Any) -> Any:
    """Plain JSON: NaN (e.g. a time-to-recover that never came) becomes null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
