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
(:mod:`.checkpoint`), safe points, divergence and the run's files (:mod:`.control`).

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

import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from plasticity_rl.methods import Method
from plasticity_rl.metrics import OutputChurn, run_gradient_metrics
from plasticity_rl.nn.sparse import end_epoch
from plasticity_rl.registry import require
from plasticity_rl.rundir import (
    Diverged,
    Interrupted,
    RunLock,
    StopSignals,
    write_status,
    write_text_atomic,
)
from plasticity_rl.supervised.augment import augment_batch
from plasticity_rl.supervised.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    load_run_checkpoints,
)
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.control import (
    RunControl,
    check_losses,
    recorded_config,
    write_results,
)
from plasticity_rl.supervised.epochs import EpochSchedule, epoch_results
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
    chunk_examples,
    run_batches,
    run_class_mask,
    task_order_generator,
    train_step,
)


def _per_run(values: Tensor) -> list[float]:
    """A per-run tensor (0-d for a single run) as one float per run."""
    return values.reshape(-1).tolist()


def _gradient_metrics(learner: Learner, progresses: list[dict[str, Any]]) -> list[dict | None]:
    """Each run's gradient metrics now (:func:`~plasticity_rl.metrics.run_gradient_metrics`:
    gradient norm and GraMa dormancy; None where the steps left no gradients). Before the first
    step of a resumed run, which has no ``.grad`` yet, those its checkpoint recorded
    (``save_all``)."""
    metrics = run_gradient_metrics(learner.model)
    if metrics is None:
        return [p.get("gradient_metrics_at_checkpoint") for p in progresses]
    return metrics


def _churn_monitors(progresses: list[dict[str, Any]]) -> list[OutputChurn]:
    """Each run's output-churn monitor; its reference batch is the run's first probe, and its
    state lives in the run's progress, so checkpoints carry it."""
    return [OutputChurn(p.setdefault("churn", {})) for p in progresses]


def train_tasks(
    learner: Learner,
    writers: Sequence[SummaryWriter],
    control: RunControl,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Train on every task of a classification stream; returns each run's final results.

    Checkpoints at every task end and, when due (:class:`RunControl`), at the end of a chunk
    of examples mid-task (``progress["position"]``), from where a resumed run continues
    exactly as the uninterrupted one."""
    model, methods, progresses = learner.model, learner.methods, control.progresses
    stream, tc, batched = learner.streams[0], learner.cfgs[0].train, learner.batched
    num_tasks = len(stream.tasks)
    batch_size = 1 if stream.online else tc.batch_size
    test_sets: list[dict[int, tuple[Tensor, Tensor, Tensor | None]]] = [{} for _ in progresses]
    progress = progresses[0]  # task and step: the same in every run
    runs = torch.Size([learner.runs]) if batched else torch.Size()
    # one example per step: the hand-written backward reads the input layer once per block
    backprop = learner.backprop
    prefetch = backprop.prefetch if backprop is not None and batch_size == 1 else None
    churns = _churn_monitors(progresses)
    schedule = EpochSchedule(learner, tc, progresses)
    device, seeds = learner.device, [cfg.seed for cfg in learner.cfgs]
    for t in range(progress["task"], num_tasks):
        tasks = [s.tasks[t] for s in learner.streams]
        mask = run_class_mask(tasks, stream.num_classes, batched)
        n = len(tasks[0].train_y)
        sizes = [len(task.train_y) for task in tasks]
        require(sizes == [n] * len(tasks), f"task {t} training examples", sizes,
                "the same number in every batched run")  # fmt: skip
        order_gens = [task_order_generator(cfg.seed, t) for cfg in learner.cfgs]
        # a run continued mid-task starts where its checkpoint was written
        at = progress.get("position") or {"epoch": 0, "example": 0, "seen_online": 0,
                                           "loss_count": 0}  # fmt: skip
        positions = [p.get("position", {}) for p in progresses]
        correct_online = torch.tensor([at_run.get("correct_online", 0) for at_run in positions],
                                      device=device).reshape(runs)  # fmt: skip
        loss_sum = torch.tensor([at_run.get("loss_sum", 0.0) for at_run in positions],
                                device=device).reshape(runs)  # fmt: skip
        seen_online, loss_count = at["seen_online"], at["loss_count"]
        chunk = chunk_examples(n, learner.runs, batch_size, batched)
        batches = math.ceil(n / batch_size)
        bar = tqdm(total=tc.epochs_per_task * batches, desc=f"task {t + 1}/{num_tasks}",
                   initial=at["epoch"] * batches + at["example"] // batch_size,
                   disable=not show_progress, unit="step", leave=False)  # fmt: skip
        if not stream.online and at["epoch"] == at["example"] == 0:
            for method in methods.values():  # a single run: batched runs refuse task methods
                method.on_task_start(tasks[0], model)
        if stream.online and at["epoch"] == at["example"] == 0:
            # Dohare et al.: before the task, on the examples it starts with
            gradients = _gradient_metrics(learner, progresses)
            for run, (writer, p) in enumerate(zip(writers, progresses, strict=True)):
                probe = tasks[run].train_x[: tc.probe_size]
                record_plasticity(writer, learner.run_model(run), probe, p, t, "before_task",
                                  gradients[run], churns[run])  # fmt: skip
        model.train()
        for epoch in range(tc.epochs_per_task):
            # drawn for the epochs a continued run skips too, so later epochs match
            orders = [torch.arange(n) if stream.online else torch.randperm(n, generator=g)
                      for g in order_gens]  # fmt: skip
            if epoch < at["epoch"]:
                continue
            schedule.start_epoch(epoch)
            done = at["example"] if epoch == at["epoch"] else 0
            for x, y in run_batches(tasks, orders, batch_size, batched, prefetch, done):
                size = y.shape[-1] if batched else len(y)
                if tasks[0].augment is not None:
                    x = augment_batch(x, tasks, seeds, t, epoch, done // batch_size, batched)
                for method in methods.values():
                    x, y = method.on_batch(x, y)
                logits, losses = train_step(learner, x, y, "cross_entropy", mask)
                for p in progresses:
                    p["step"] += 1
                check_losses(losses, progresses)
                step = progress["step"]
                loss_sum, loss_count = loss_sum.add_(losses.detach()), loss_count + 1
                if stream.online:  # prediction made before this example's update
                    if logits.shape[-2] != size:  # the stream's examples, not those replayed
                        logits, y = logits[..., :size, :], y[..., :size]
                    correct_online += logits.argmax(-1).eq(y).sum(-1)
                    seen_online += size
                if step % tc.log_every_steps == 0:
                    mean_losses = _per_run(loss_sum / loss_count)
                    for writer, value in zip(writers, mean_losses, strict=True):
                        writer.add_scalar("cl/train_loss", value, step)
                    loss_sum, loss_count = torch.zeros(runs, device=device), 0
                    log_method_stats(writers, methods, step)
                if tc.eval_every_steps and step % tc.eval_every_steps == 0:
                    for run, writer in enumerate(writers):
                        run_stream, run_net = learner.streams[run], learner.run_model(run)
                        continual_eval(run_stream, run_net, methods, t, test_sets[run], tc,
                                       writer, step, progresses[run])  # fmt: skip
                bar.update()
                done += size
                if done == n:
                    end_epoch(model)  # e.g. Top-K's k annealing steps once per epoch
                    schedule.end_epoch(tasks, t, mask, writers)
                # a chunk end mid-task (the task's last chunk ends in the task-end checkpoint)
                last_chunk = done == n and epoch == tc.epochs_per_task - 1
                if (done % chunk == 0 or done == n) and not last_chunk and control.due():
                    next_epoch = done == n
                    for p, c, ls in zip(progresses, _per_run(correct_online),
                                        _per_run(loss_sum), strict=True):  # fmt: skip
                        p["position"] = {"epoch": epoch + next_epoch,
                                         "example": 0 if next_epoch else done,
                                         "seen_online": seen_online, "correct_online": int(c),
                                         "loss_sum": ls, "loss_count": loss_count}  # fmt: skip
                    control.checkpoint()
        bar.close()
        schedule.end_task()
        if stream.online:
            online = 100.0 * correct_online / max(seen_online, 1)
            for writer, p, value in zip(writers, progresses, _per_run(online), strict=True):
                p["online_accuracy"].append(value)
                writer.add_scalar("cl/online_accuracy", value, p["step"])
        gradients = _gradient_metrics(learner, progresses)
        for run, (writer, p) in enumerate(zip(writers, progresses, strict=True)):
            if not stream.online:
                run_net = learner.run_model(run)
                task_end_evaluation(learner.streams[run], run_net, methods, t, test_sets[run],
                                     writer, p, tc.evaluate_tasks)  # fmt: skip
                probe_idx = torch.randperm(n, generator=order_gens[run])[: tc.probe_size]
                record_plasticity(writer, run_net, tasks[run].train_x[probe_idx], p, t,
                                  "after_task", gradients[run], churns[run])  # fmt: skip
            p["task_end_steps"].append(p["step"])
            p["task"] = t + 1
            p.pop("position", None)
        del tasks
        control.checkpoint()
        if tc.stop_after_tasks is not None and progress["task"] >= tc.stop_after_tasks:
            if progress["task"] < num_tasks:
                return [{"stopped_after_tasks": p["task"]} for p in progresses]
    return [{**classification_results(stream, p, tc), **epoch_results(p)} for p in progresses]


def train_regression(
    learner: Learner,
    writers: Sequence[SummaryWriter],
    control: RunControl,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Online regression, one example per step; squared error logged per bin, a checkpoint
    after each bin (from which a resumed run continues exactly)."""
    model, batched, progresses = learner.model, learner.batched, control.progresses
    streams: list[RegressionStream] = learner.streams  # type: ignore[assignment]
    stream, progress = streams[0], progresses[0]
    for s, p in zip(streams, progresses, strict=True):
        if p.get("generator") is not None:
            s.generator.load_state_dict(p["generator"])
    bar = tqdm(total=stream.total_examples, initial=progress["step"], disable=not show_progress,
               unit="example")  # fmt: skip
    churns = _churn_monitors(progresses)
    model.train()
    while progress["step"] < stream.total_examples:
        count = min(stream.bin_size - progress["step"] % stream.bin_size,
                    stream.total_examples - progress["step"])  # fmt: skip
        samples = [tuple(t.to(learner.device) for t in s.generator.sample(count)) for s in streams]
        # Step-major: xs[i] is step i's input, (1, in) for a single run, (S, 1, in) batched.
        xs = torch.stack([x for x, _ in samples], 1) if batched else samples[0][0]
        ys = torch.stack([y for _, y in samples], 1) if batched else samples[0][1]
        steps = zip(xs.unsqueeze(-2).unbind(0), ys.unsqueeze(-2).unbind(0), strict=True)
        errors = torch.stack([train_step(learner, x, y, "mse")[1].detach() for x, y in steps])
        log_method_stats(writers, learner.methods, progress["step"] + count)
        gradients = _gradient_metrics(learner, progresses)
        bad = ~torch.isfinite(errors.reshape(count, -1))  # every step checked, once per bin
        for run, p in enumerate(progresses):
            if p["diverged_at_step"] is None and bool(bad[:, run].any()):
                p["diverged_at_step"] = p["step"] + 1 + int(bad[:, run].nonzero()[0])
        for run, (writer, p, error) in enumerate(
            zip(writers, progresses, _per_run(errors.mean(0)), strict=True)
        ):
            p["step"] += count
            p["bin_errors"].append(error)
            writer.add_scalar("cl/squared_error", error, p["step"])
            probe = samples[run][0][: learner.cfgs[run].train.probe_size]
            log_plasticity(writer, learner.run_model(run), probe, p["step"], gradients[run],
                           churns[run])  # fmt: skip
            p["generator"] = streams[run].generator.state_dict()
        bar.update(count)
        if all(p["diverged_at_step"] is not None for p in progresses):
            raise Diverged("the training loss", min(p["diverged_at_step"] for p in progresses))
        control.checkpoint()
    bar.close()
    return [{"bin_size": stream.bin_size, "squared_error_bins": p["bin_errors"]}
            for p in progresses]  # fmt: skip


def new_progress() -> dict[str, Any]:
    """Where a run stands: checkpointed at every task boundary (or regression bin), and
    mid-task at chunk ends (``position``: epoch, example and the partial sums)."""
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
        "churn": {},
    }


def train(
    cfg: SupervisedRunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    prepared: tuple[Any, nn.Module, torch.optim.Optimizer, dict[str, Method]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the configured stream; writes ``results.json`` and returns the results.

    Raises:
        ConfigError: no usable checkpoint to resume (nothing is written then), or another
            process trains ``run_dir``.
        Interrupted, Diverged, DiskFull: see :func:`train_runs`.
    """
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
    return _train(learner, [run_dir], [progress], show_progress)[0]


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
    ``status.json``, ``results.json``; ``wall_seconds`` is the time of all runs together).
    ``resume``: continue from the runs' checkpoints (:func:`load_run_checkpoints`).

    Raises:
        Interrupted: SIGINT, SIGTERM or SIGHUP; the runs checkpointed at the next safe point.
        Diverged: a run's training loss became NaN or infinite (every run's, for a single
            run at once; the others of a batched group train on and the error comes at the
            end). ``results.json`` and ``status.json`` of the run say ``diverged``.
        DiskFull: the disk filled up while writing a checkpoint (the previous one is kept).
    """
    torch.set_num_threads(1)
    learner = build_batched_learner(cfg, seeds) if prepared is None else prepared
    require(len(run_dirs) == learner.runs, "run_dirs", len(run_dirs), f"{learner.runs} dirs")
    if resume:
        progresses = load_run_checkpoints(learner, [d / CHECKPOINT for d in run_dirs])
    else:
        progresses = [new_progress() for _ in run_dirs]
    return _train(learner, list(run_dirs), progresses, show_progress)


def _train(learner: Learner, run_dirs: list[Path], progresses: list[dict[str, Any]],
           show_progress: bool) -> list[dict[str, Any]]:  # fmt: skip
    """The loop of the stream's kind for every run, then each run's ``results.json``; the run
    directories are locked meanwhile and ``status.json`` follows the runs."""
    with ExitStack() as stack:
        for run_dir in run_dirs:
            stack.enter_context(RunLock(run_dir))
        stop = stack.enter_context(StopSignals())
        for run_cfg, run_dir in zip(learner.cfgs, run_dirs, strict=True):
            write_text_atomic(run_dir / "config.yaml", recorded_config(run_cfg))
        control = RunControl(learner, run_dirs, progresses, stop,
                             learner.cfgs[0].train.checkpoint_every_steps,
                             progresses[0]["step"])  # fmt: skip
        for run_dir, p in zip(run_dirs, progresses, strict=True):
            write_status(run_dir, "running", step=p["step"], task=p["task"])
        control.started = time.time()
        try:
            all_results = _run_loop(learner, run_dirs, progresses, control, show_progress)
        except Diverged:
            write_results(learner, run_dirs, progresses, [{} for _ in run_dirs],
                          control.wall_seconds())  # fmt: skip
            raise
        except Interrupted as err:
            for run_dir, p in zip(run_dirs, progresses, strict=True):
                write_status(run_dir, "interrupted", step=err.step, task=p["task"],
                             checkpoint_step=err.step, signal=err.signum)  # fmt: skip
            raise
        except BaseException as err:
            for run_dir, p in zip(run_dirs, progresses, strict=True):
                write_status(run_dir, "failed", step=p["step"], task=p["task"],
                             checkpoint_step=control.last,
                             error=f"{type(err).__name__}: {err}"[:300])  # fmt: skip
            raise
    diverged = [p["diverged_at_step"] for p in progresses if p["diverged_at_step"] is not None]
    if diverged:  # some runs of a batched group; the others finished
        raise Diverged("the training loss", min(diverged))
    return all_results


def _run_loop(learner: Learner, run_dirs: list[Path], progresses: list[dict[str, Any]],
              control: RunControl, show_progress: bool) -> list[dict[str, Any]]:  # fmt: skip
    writers = [SummaryWriter(str(run_dir)) for run_dir in run_dirs]
    try:
        loop = train_regression if isinstance(learner.streams[0], RegressionStream) else train_tasks
        all_results = loop(learner, writers, control, show_progress)
        for writer, results, progress in zip(writers, all_results, progresses, strict=True):
            for key in ("average_accuracy", "average_forgetting", "backward_transfer"):
                if key in results and progress["diverged_at_step"] is None:
                    writer.add_scalar(f"cl/{key}", results[key], progress["step"])
    finally:
        for writer in writers:
            writer.close()
    write_results(learner, run_dirs, progresses, all_results, control.wall_seconds())
    return all_results
