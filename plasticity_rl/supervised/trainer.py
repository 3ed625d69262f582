"""The supervised continual-learning loop, on the same layers, optimisers and methods as PPO.

Read top to bottom: build the stream, the network, the optimiser and the methods; then, for each
task, train on its batches (methods act through their hooks; task-aware methods also see
``on_batch`` and ``on_task_end``), evaluate every task, log plasticity metrics on a probe of the
finished task, and checkpoint. Classification streams fill the accuracy matrix; online streams
(Online Permuted MNIST) report online accuracy per task; the slowly-changing regression reports
its squared error in bins. TensorBoard tags are ``cl/...`` and ``plasticity/net/<layer>/...``,
against optimiser steps (= examples for the online streams).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from plasticity_rl.config import to_yaml
from plasticity_rl.methods import Method, make_method
from plasticity_rl.metrics import collect_activations, layer_health, weight_magnitude
from plasticity_rl.metrics.continual import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting,
    stability_gap,
)
from plasticity_rl.nn import build_mlp
from plasticity_rl.nn.cnn import build_cnn
from plasticity_rl.optim import make_optimizer
from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.regression import RegressionStream
from plasticity_rl.supervised.streams import Task, TaskStream, make_stream

CHECKPOINT = Path("checkpoints") / "latest.pt"
EVAL_BATCH = 4096


def build_stream(cfg: SupervisedRunConfig) -> TaskStream | RegressionStream:
    """The configured stream (the dataset is read from ``cfg.data_dir`` or the cache)."""
    dataset = None
    if cfg.stream.dataset is not None:
        from plasticity_rl.supervised.datasets import load_dataset

        dataset = load_dataset(cfg.stream.dataset, cfg.data_dir)
    return make_stream(cfg.stream.stream, dataset, **cfg.stream.kwargs)


def build_network(
    cfg: SupervisedRunConfig, input_shape: tuple[int, ...], out_dim: int
) -> nn.Module:
    """An MLP (flattened inputs) or a CNN with an MLP head, from ``cfg.network``."""
    mlp_kwargs = {k: v for k, v in asdict(cfg.network).items() if k not in ("kind", "channels")}
    if cfg.network.kind == "cnn":
        return build_cnn(input_shape, out_dim, cfg.network.channels, **mlp_kwargs)
    mlp = build_mlp(math.prod(input_shape), out_dim=out_dim, **mlp_kwargs)
    return mlp if len(input_shape) == 1 else nn.Sequential(nn.Flatten(), mlp)


def build_learner(
    cfg: SupervisedRunConfig, stream: TaskStream | RegressionStream
) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Method]]:
    """Network, optimiser (with its step hooks) and attached methods, seeded by ``cfg.seed``."""
    seed_everything(cfg.seed)
    regression = isinstance(stream, RegressionStream)
    out_dim = 1 if regression else stream.num_classes
    model = build_network(cfg, tuple(stream.input_shape), out_dim)
    optimizer = make_optimizer(model, cfg.optimizer)
    methods = {name: make_method(name, **(kw or {})) for name, kw in cfg.method.items()}
    for name, method in methods.items():
        if method.uses_task_boundaries and (regression or stream.online):
            raise ConfigError(
                f"method.{name}", name, "methods without task boundaries for this stream"
            )
        method.attach(model, optimizer)
    return model, optimizer, methods


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    methods: dict[str, Method], progress: dict[str, Any]) -> None:  # fmt: skip
    """Atomically write the training state; loadable with ``torch.load(weights_only=True)``."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "methods": {name: m.state_dict() for name, m in methods.items()},
        "rng": {"torch": torch.get_rng_state()},
        "progress": progress,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    methods: dict[str, Method]) -> dict[str, Any]:  # fmt: skip
    """Restore a checkpoint written by :func:`save_checkpoint`; returns the progress record."""
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for name, method in methods.items():
        method.load_state_dict(state["methods"][name])
    torch.set_rng_state(state["rng"]["torch"])
    return state["progress"]


def class_mask(task: Task, num_classes: int) -> Tensor | None:
    """Additive logit mask: 0 for the task's active classes, -inf for the others (or None)."""
    if len(task.active_classes) == num_classes:
        return None
    mask = torch.full((num_classes,), float("-inf"))
    mask[task.active_classes] = 0.0
    return mask


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor | None) -> float:
    """Accuracy in % of ``model`` on (x, y), evaluated in eval mode in batches."""
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])
        if mask is not None:
            logits = logits + mask
        correct += int((logits.argmax(dim=1) == y[i : i + EVAL_BATCH]).sum())
    model.train(was_training)
    return 100.0 * correct / len(y)


def log_plasticity(writer: SummaryWriter, model: nn.Module, probe: Tensor, step: int) -> dict:
    """``plasticity/net/<layer>/<metric>`` and ``plasticity/net/weight_magnitude`` at ``step``."""
    values: dict[str, float] = {"weight_magnitude": weight_magnitude(model)}
    for layer, h in collect_activations(model, probe).items():
        for metric, value in layer_health(h).items():
            values[f"{layer}/{metric}"] = value
    for key, value in values.items():
        writer.add_scalar(f"plasticity/net/{key}", value, step)
    return values


def log_method_stats(writer: SummaryWriter, methods: dict[str, Method], step: int) -> None:
    for method in methods.values():
        for key, value in method.stats().items():
            writer.add_scalar(f"plasticity/net/{key}", value, step)


def train_tasks(
    cfg: SupervisedRunConfig,
    stream: TaskStream,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    methods: dict[str, Method],
    writer: SummaryWriter,
    run_dir: Path,
    progress: dict[str, Any],
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train on every task of a classification stream; returns the final results."""
    from tqdm import tqdm

    num_tasks, tc = len(stream.tasks), cfg.train
    batch_size = 1 if stream.online else tc.batch_size
    test_sets: dict[int, tuple[Tensor, Tensor, Tensor | None]] = {}
    for t in range(progress["task"], num_tasks):
        task = stream.tasks[t]
        mask = class_mask(task, stream.num_classes)
        n = len(task.train_y)
        order_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + t)
        correct_online, seen_online, loss_sum, loss_count = 0, 0, 0.0, 0
        steps_in_task = tc.epochs_per_task * math.ceil(n / batch_size)
        bar = tqdm(total=steps_in_task, desc=f"task {t + 1}/{num_tasks}", disable=not show_progress,
                   unit="step", leave=False)  # fmt: skip
        model.train()
        for _epoch in range(tc.epochs_per_task):
            order = torch.arange(n) if stream.online else torch.randperm(n, generator=order_gen)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                x, y = task.train_x[idx], task.train_y[idx]
                for method in methods.values():
                    x, y = method.on_batch(x, y)
                logits = model(x)
                if mask is not None:
                    logits = logits + mask
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress["step"] += 1
                step = progress["step"]
                loss_sum, loss_count = loss_sum + loss.detach(), loss_count + 1
                if stream.online:  # prediction made before this example's update
                    correct_online += int(logits[: len(idx)].argmax(1).eq(y[: len(idx)]).sum())
                    seen_online += len(idx)
                if step % tc.log_every_steps == 0:
                    writer.add_scalar("cl/train_loss", float(loss_sum) / loss_count, step)
                    loss_sum, loss_count = 0.0, 0
                    log_method_stats(writer, methods, step)
                if tc.eval_every_steps and step % tc.eval_every_steps == 0:
                    continual_eval(stream, model, t, test_sets, tc, writer, step, progress)
                bar.update()
        bar.close()
        if stream.online:
            online = 100.0 * correct_online / max(seen_online, 1)
            progress["online_accuracy"].append(online)
            writer.add_scalar("cl/online_accuracy", online, progress["step"])
        else:
            for method in methods.values():
                method.on_task_end(task, model)
            row = [accuracy(model, *test_set(stream, j, test_sets)) for j in range(num_tasks)]
            progress["accuracy_matrix"].append(row)
            for j, value in enumerate(row[: t + 1]):
                writer.add_scalar(f"cl/accuracy/task{j}", value, progress["step"])
            writer.add_scalar("cl/average_accuracy_seen", float(np.mean(row[: t + 1])),
                              progress["step"])  # fmt: skip
        probe_idx = torch.randperm(n, generator=order_gen)[: tc.probe_size]
        health = log_plasticity(writer, model, task.train_x[probe_idx], progress["step"])
        progress["plasticity"].append(health)
        progress["task_end_steps"].append(progress["step"])
        progress["task"] = t + 1
        save_checkpoint(run_dir / CHECKPOINT, model, optimizer, methods, progress)
        if tc.stop_after_tasks is not None and progress["task"] >= tc.stop_after_tasks:
            return {"stopped_after_tasks": progress["task"]}
    return classification_results(stream, progress, tc)


def test_set(
    stream: TaskStream, j: int, cache: dict[int, tuple[Tensor, Tensor, Tensor | None]]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Task ``j``'s test inputs, labels and class mask, built once (tasks are built lazily)."""
    if j not in cache:
        task = stream.tasks[j]
        cache[j] = (task.test_x, task.test_y, class_mask(task, stream.num_classes))
    return cache[j]


def continual_eval(stream: TaskStream, model: nn.Module, current: int,
                   cache: dict[int, tuple[Tensor, Tensor, Tensor | None]], tc: Any,
                   writer: SummaryWriter, step: int, progress: dict[str, Any]) -> None:  # fmt: skip
    """Accuracy on a fixed test subset of every task seen so far (De Lange et al. 2023),
    with the current task's class mask (the output units the learner has at this point)."""
    mask = test_set(stream, current, cache)[2]
    n = tc.eval_examples_per_task
    for j in range(current + 1):
        x, y, _ = test_set(stream, j, cache)
        value = accuracy(model, x[:n], y[:n], mask)
        progress["curves"].setdefault(str(j), []).append([step, value])
        writer.add_scalar(f"cl/eval/task{j}", value, step)


def classification_results(stream: TaskStream, progress: dict[str, Any], tc: Any) -> dict:
    """Final numbers: accuracy matrix, average accuracy, forgetting, BWT, stability gaps."""
    results: dict[str, Any] = {"task_end_steps": progress["task_end_steps"]}
    if stream.online:
        results["online_accuracy"] = progress["online_accuracy"]
        return results
    matrix = torch.tensor(progress["accuracy_matrix"])
    results.update(
        accuracy_matrix=progress["accuracy_matrix"],
        average_accuracy=average_accuracy(matrix),
        forgetting=forgetting(matrix),
        average_forgetting=average_forgetting(matrix),
        backward_transfer=backward_transfer(matrix),
    )
    if progress["curves"]:
        ends = progress["task_end_steps"]
        gaps = {}
        for j, curve in progress["curves"].items():
            steps, values = zip(*curve, strict=True)
            for t in range(int(j) + 1, len(ends)):
                switch, length = ends[t - 1], ends[t] - ends[t - 1]
                gap = stability_gap(list(steps), list(values), switch, length)
                gaps[f"task{j}_during_task{t}"] = gap
        results["stability_gap"] = gaps
    return results


def train_regression(
    cfg: SupervisedRunConfig,
    stream: RegressionStream,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    methods: dict[str, Method],
    writer: SummaryWriter,
    run_dir: Path,
    progress: dict[str, Any],
    show_progress: bool = True,
) -> dict[str, Any]:
    """Online regression, one example per step; squared error logged per bin."""
    from tqdm import tqdm

    generator = stream.generator
    if progress.get("generator") is not None:
        generator.load_state_dict(progress["generator"])
    bar = tqdm(total=stream.total_examples, initial=progress["step"], disable=not show_progress,
               unit="example")  # fmt: skip
    model.train()
    while progress["step"] < stream.total_examples:
        count = min(stream.bin_size - progress["step"] % stream.bin_size,
                    stream.total_examples - progress["step"])  # fmt: skip
        xs, ys = generator.sample(count)
        errors = torch.empty(count)
        for i in range(count):
            prediction = model(xs[i : i + 1])
            loss = F.mse_loss(prediction, ys[i : i + 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            errors[i] = loss.detach()
        progress["step"] += count
        progress["bin_errors"].append(float(errors.mean()))
        writer.add_scalar("cl/squared_error", progress["bin_errors"][-1], progress["step"])
        log_method_stats(writer, methods, progress["step"])
        log_plasticity(writer, model, xs[: cfg.train.probe_size], progress["step"])
        progress["generator"] = generator.state_dict()
        save_checkpoint(run_dir / CHECKPOINT, model, optimizer, methods, progress)
        bar.update(count)
    bar.close()
    return {"bin_size": stream.bin_size, "squared_error_bins": progress["bin_errors"]}


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
    }


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
    if resume:
        progress = load_checkpoint(run_dir / CHECKPOINT, model, optimizer, methods)
    else:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        progress = new_progress()
    start = time.time()
    with SummaryWriter(str(run_dir)) as writer:
        loop = train_regression if isinstance(stream, RegressionStream) else train_tasks
        results = loop(cfg, stream, model, optimizer, methods, writer, run_dir, progress,
                       show_progress)  # fmt: skip
        for key in ("average_accuracy", "average_forgetting", "backward_transfer"):
            if key in results:
                writer.add_scalar(f"cl/{key}", results[key], progress["step"])
    results.update(
        stream=getattr(stream, "description", {}),
        steps=progress["step"],
        wall_seconds=round(time.time() - start, 1),
        final_plasticity=progress["plasticity"][-1] if progress["plasticity"] else {},
    )
    if "stopped_after_tasks" not in results:
        (run_dir / "results.json").write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    return results


def _json_safe(value: Any) -> Any:
    """Plain JSON: NaN (e.g. a time-to-recover that never came) becomes null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
