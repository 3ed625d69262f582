"""The supervised continual-learning loop, on the same layers, optimisers and methods as PPO.

Read top to bottom: build the stream, the network, the optimiser and the methods; then, for each
task, train on its batches (methods act through their hooks; task-aware methods also see
``on_batch`` and ``on_task_end``), evaluate every task, log plasticity metrics on a probe of the
finished task, and checkpoint. Classification streams fill the accuracy matrix; online streams
(Online Permuted MNIST) report online accuracy per task; the slowly-changing regression reports
its squared error in bins. TensorBoard tags are ``cl/...`` and ``plasticity/net/<layer>/...``,
against optimiser steps (= examples for the online streams).

Batched runs (:func:`train_runs`): S runs of one config that differ in their seed (and
optionally in per-run values, :data:`PER_RUN_KEYS`) train as ONE batched network
(:mod:`plasticity_rl.nn.batched`) through the same loop: the data of each step are stacked
along a leading run dim, the loss is the sum of the runs' mean losses (so each run's gradient
is its single-run gradient), and everything after a step -- logging, evaluation, plasticity
metrics, checkpoints, results -- is done per run on :func:`~plasticity_rl.nn.run_module` /
:func:`~plasticity_rl.nn.run_state_dict` views, in the single-run format. Run s sees exactly
what a single run with its seed sees: its stream (:func:`run_stream_kwargs`), its example
order (:func:`task_order_generator`), its initial network and its random draws (a per-run
generator that continues the state ``torch.manual_seed(seed)`` gives a single run).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

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
from plasticity_rl.nn import (
    build_mlp,
    build_runs,
    run_module,
    run_state_dict,
    stack_run_state_dicts,
)
from plasticity_rl.nn.backprop import HandBackprop
from plasticity_rl.nn.cnn import build_cnn
from plasticity_rl.nn.sparse import end_epoch
from plasticity_rl.optim import make_optimizer
from plasticity_rl.optim.runs import (
    load_run_optimizer_states,
    make_run_optimizer,
    run_optimizer_state_dict,
)
from plasticity_rl.registry import ConfigError, require
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.regression import RegressionStream
from plasticity_rl.supervised.streams import STREAMS, Task, TaskStream, make_stream

CHECKPOINT = Path("checkpoints") / "latest.pt"
EVAL_BATCH = 4096
CHUNK_EXAMPLES = 4096
"""Training examples gathered per run at a time (then sliced into batches)."""

PER_RUN_KEYS = (
    ("optimizer", "lr"),
    ("method", "continual_backprop", "replacement_rate"),
    ("method", "continual_backprop", "maturity_threshold"),
)
"""Config values that batched runs may set per run, as a list with one value per run."""

Stream = TaskStream | RegressionStream


def run_stream_kwargs(cfg: SupervisedRunConfig) -> dict[str, Any]:
    """The stream's keyword arguments for the run with seed ``cfg.seed``.

    A stream that takes a ``seed`` (slowly-changing regression, permuted and online permuted
    MNIST) gets ``stream.kwargs.seed + seed``, so each run of a seed sweep has its own data
    (regression target and sequence, permutations, example orders); seed 0 keeps the preset's
    stream. Single and batched runs use this same mapping.
    """
    kwargs = dict(cfg.stream.kwargs)
    parameter = inspect.signature(STREAMS.get(cfg.stream.stream)).parameters.get("seed")
    if parameter is not None:
        kwargs["seed"] = kwargs.get("seed", parameter.default) + cfg.seed
    return kwargs


def build_stream(cfg: SupervisedRunConfig, dataset: Any = None) -> Stream:
    """The configured stream (the dataset is read from ``cfg.data_dir`` or the cache, unless
    given), with the run's seed mapping (:func:`run_stream_kwargs`)."""
    if dataset is None and cfg.stream.dataset is not None:
        from plasticity_rl.supervised.datasets import load_dataset

        dataset = load_dataset(cfg.stream.dataset, cfg.data_dir)
    return make_stream(cfg.stream.stream, dataset, **run_stream_kwargs(cfg))


def build_network(
    cfg: SupervisedRunConfig, input_shape: tuple[int, ...], out_dim: int
) -> nn.Module:
    """An MLP (flattened inputs) or a CNN with an MLP head, from ``cfg.network``."""
    mlp_kwargs = {k: v for k, v in asdict(cfg.network).items() if k not in ("kind", "channels")}
    if cfg.network.kind == "cnn":
        return build_cnn(input_shape, out_dim, cfg.network.channels, **mlp_kwargs)
    mlp = build_mlp(math.prod(input_shape), out_dim=out_dim, **mlp_kwargs)
    return mlp if len(input_shape) == 1 else nn.Sequential(nn.Flatten(), mlp)


def _make_methods(cfg: SupervisedRunConfig, stream: Stream) -> dict[str, Method]:
    regression = isinstance(stream, RegressionStream)
    methods = {name: make_method(name, **(kw or {})) for name, kw in cfg.method.items()}
    for name, method in methods.items():
        if method.uses_task_boundaries and (regression or stream.online):
            raise ConfigError(
                f"method.{name}", name, "methods without task boundaries for this stream"
            )
    return methods


def _out_dim(stream: Stream) -> int:
    return 1 if isinstance(stream, RegressionStream) else stream.num_classes


def build_learner(
    cfg: SupervisedRunConfig, stream: Stream
) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Method]]:
    """Network, optimiser (with its step hooks) and attached methods, seeded by ``cfg.seed``."""
    seed_everything(cfg.seed)
    model = build_network(cfg, tuple(stream.input_shape), _out_dim(stream))
    optimizer = make_optimizer(model, cfg.optimizer)
    methods = _make_methods(cfg, stream)
    for method in methods.values():
        method.attach(model, optimizer)
    return model, optimizer, methods


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Learner:
    """The runs trained together: one network, or S runs stacked in one batched network."""

    cfgs: list[SupervisedRunConfig]
    """One config per run (its own seed and per-run values)."""
    streams: list[Stream]
    """One stream per run (:func:`run_stream_kwargs`)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    methods: dict[str, Method]
    generators: list[torch.Generator] | None = None
    """Each batched run's random generator; None for a single run (torch's global RNG)."""
    backprop: HandBackprop | None = None
    """The hand-written backward of a plain MLP (``train.hand_backprop``), or None: autograd."""
    _run_view: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        use = self.cfgs[0].train.hand_backprop and HandBackprop.supports(self.model)
        if use and not any(m.needs_autograd for m in self.methods.values()):
            self.backprop = HandBackprop(self.model, self.optimizer)

    @property
    def runs(self) -> int:
        return len(self.cfgs)

    @property
    def batched(self) -> bool:
        """Whether tensors carry a leading run dim (inputs ``(S, B, ...)``)."""
        return self.generators is not None

    def rng_state(self, run: int) -> Tensor:
        """Run ``run``'s random state, as ``torch.get_rng_state()`` in a single run."""
        if self.generators is None:
            return torch.get_rng_state()
        return self.generators[run].get_state()

    def run_model(self, run: int) -> nn.Module:
        """Run ``run`` as a single-run network (the model itself for a single run).

        For batched runs this is one scratch network, loaded with run ``run``'s state at each
        call (:func:`~plasticity_rl.nn.run_module`): use it before asking for another run.
        Steps the hand-written backward has deferred are applied first (it reads the weights).
        """
        if self.backprop is not None:
            self.backprop.flush()
        if not self.batched:
            return self.model
        self._run_view = run_module(self.model, run, into=self._run_view)
        return self._run_view


def run_configs(cfg: SupervisedRunConfig, seeds: Sequence[int]) -> list[SupervisedRunConfig]:
    """One config per run: seed ``seeds[s]``, and the s-th value of each per-run list.

    Raises:
        ConfigError: duplicate seeds, or a per-run list (:data:`PER_RUN_KEYS`) whose length is
            not the number of runs.
    """
    seeds = list(seeds)
    require(len(set(seeds)) == len(seeds), "--seeds", seeds, "distinct seeds")
    cfgs = []
    for s, seed in enumerate(seeds):
        run_cfg = copy.deepcopy(cfg)
        run_cfg.seed = int(seed)
        for path in PER_RUN_KEYS:
            parent = _lookup(run_cfg, path[:-1])
            value = parent.get(path[-1]) if isinstance(parent, dict) else None
            if isinstance(value, list | tuple):
                require(len(value) == len(seeds), ".".join(path), list(value),
                        f"a number, or a list of {len(seeds)} (one per run)")  # fmt: skip
                parent[path[-1]] = value[s]
        cfgs.append(run_cfg)
    return cfgs


def group_config(cfgs: Sequence[SupervisedRunConfig]) -> SupervisedRunConfig:
    """The config of a batched group from its runs' configs: the inverse of
    :func:`run_configs` (per-run values that differ become lists again).

    Raises:
        ConfigError: the configs differ in more than the seed and :data:`PER_RUN_KEYS`.
    """
    group = copy.deepcopy(cfgs[0])
    for path in PER_RUN_KEYS:
        values = [_lookup(cfg, path) for cfg in cfgs]
        if any(value != values[0] for value in values):
            _lookup(group, path[:-1])[path[-1]] = values
    seeds = [cfg.seed for cfg in cfgs]
    if [to_yaml(cfg) for cfg in run_configs(group, seeds)] != [to_yaml(cfg) for cfg in cfgs]:
        raise ConfigError("--resume", f"runs with seeds {seeds}",
                          "the runs of one batched group (configs equal but for the seed and "
                          f"per-run values at {['.'.join(p) for p in PER_RUN_KEYS]})")  # fmt: skip
    return group


def _lookup(cfg: Any, path: Sequence[str]) -> Any:
    node = getattr(cfg, path[0])
    for key in path[1:]:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def build_batched_learner(cfg: SupervisedRunConfig, seeds: Sequence[int]) -> Learner:
    """S runs of ``cfg`` (seeds ``seeds``) as one batched network, optimiser and methods.

    Run s is built exactly as :func:`build_learner` builds a single run with seed ``seeds[s]``
    (:func:`~plasticity_rl.nn.build_runs`); per-run lists at :data:`PER_RUN_KEYS` give each run
    its own value (a per-run ``optimizer.lr`` needs SGD or SGDM).

    Every stream can be batched; the runs' tasks must have the same number of training
    examples (true of every stream preset: each run sees the same classes or the same images
    under its own permutation).

    Raises:
        ConfigError: a network or method that has no batched form (a CNN, SDM layers, Top-K's
            GABA switch; EWC, MAS, SI and replay, which act at task boundaries), bad per-run
            values.
    """
    cfgs = run_configs(cfg, seeds)
    dataset = None
    if cfg.stream.dataset is not None:
        from plasticity_rl.supervised.datasets import load_dataset

        dataset = load_dataset(cfg.stream.dataset, cfg.data_dir)
    streams = [build_stream(run_cfg, dataset) for run_cfg in cfgs]
    first = streams[0]
    generators = [torch.Generator().manual_seed(run_cfg.seed) for run_cfg in cfgs]
    input_shape, out_dim = tuple(first.input_shape), _out_dim(first)
    model = build_runs(lambda: build_network(cfgs[0], input_shape, out_dim), generators)
    lr = cfg.optimizer.get("lr") if isinstance(cfg.optimizer, dict) else None
    lrs = list(lr) if isinstance(lr, list | tuple) else None
    optimizer = make_run_optimizer(model, cfg.optimizer, len(cfgs), lrs)
    methods = _make_methods(cfg, first)
    for name, method in methods.items():
        require(not method.uses_task_boundaries, f"method.{name}", dict(cfg.method[name] or {}),
                "no task-boundary method (EWC, MAS, SI, replay) in batched runs: run one seed "
                "per process (--runs 1)")  # fmt: skip
        method.attach(model, optimizer)
    return Learner(cfgs, streams, model, optimizer, methods, generators)


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
        "rng": {"torch": learner.rng_state(run)},
        "progress": progress,
    }


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a training state; loadable with ``torch.load(weights_only=True)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    methods: dict[str, Method]) -> dict[str, Any]:  # fmt: skip
    """Restore a (single-run) checkpoint into a single run; returns the progress record.

    Each run of a batched run saves this format too, so it can be continued as a single run.
    """
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for name, method in methods.items():
        method.load_state_dict(state["methods"][name])
    torch.set_rng_state(state["rng"]["torch"])
    return state["progress"]


def load_run_checkpoints(learner: Learner, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Restore batched runs from their single-run checkpoints (run s from ``paths[s]``):
    network, optimiser, method states and random generators; returns each run's progress.

    Raises:
        ConfigError: the checkpoints are not at the same step (one batched group saves all
            its runs at the same task boundary).
    """
    states = [torch.load(path, weights_only=True) for path in paths]
    steps = [state["progress"]["step"] for state in states]
    dirs = [str(path.parent.parent) for path in paths]
    allowed = f"runs checkpointed at one step (got steps {steps}); resume them one by one"
    require(steps == [steps[0]] * len(steps), "--resume", dirs, allowed)
    model = learner.model
    model.load_state_dict(stack_run_state_dicts(model, [state["model"] for state in states]))
    load_run_optimizer_states(learner.optimizer, [state["optimizer"] for state in states])
    for name, method in learner.methods.items():
        method.load_run_state_dicts([state["methods"][name] for state in states])
    for generator, state in zip(learner.generators or [], states, strict=True):
        generator.set_state(state["rng"]["torch"])
    return [state["progress"] for state in states]


def _save_all(learner: Learner, run_dirs: Sequence[Path], progresses: list[dict]) -> None:
    for run, (run_dir, progress) in enumerate(zip(run_dirs, progresses, strict=True)):
        save_checkpoint(run_dir / CHECKPOINT, run_checkpoint(learner, run, progress))


def class_mask(task: Task, num_classes: int) -> Tensor | None:
    """Additive logit mask: 0 for the task's active classes, -inf for the others (or None)."""
    if len(task.active_classes) == num_classes:
        return None
    mask = torch.full((num_classes,), float("-inf"))
    mask[task.active_classes] = 0.0
    return mask


def run_class_mask(tasks: Sequence[Task], num_classes: int, batched: bool) -> Tensor | None:
    """:func:`class_mask` of the task of each run: ``(S, 1, classes)`` for batched runs (each
    run's own classes, broadcast over its batch), the single run's mask otherwise."""
    masks = [class_mask(task, num_classes) for task in tasks]
    if not batched or all(m is None for m in masks):
        return masks[0]
    zeros = torch.zeros(num_classes)
    return torch.stack([zeros if m is None else m for m in masks]).unsqueeze(1)


def task_order_generator(seed: int, task_index: int) -> torch.Generator:
    """The generator of a run's example orders (each epoch) and probe of task ``task_index``."""
    return torch.Generator().manual_seed(seed * 100_003 + task_index)


LOSSES: dict[str, Callable[..., Tensor]] = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def train_step(learner: Learner, x: Tensor, y: Tensor, loss: str,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One optimiser step on the batch (x, y): returns the output and each run's mean loss.

    Gradients come from autograd or, for a plain MLP, from the hand-written backward
    (:attr:`Learner.backprop`); batched runs descend on the sum of the runs' mean losses.
    ``mask`` is added to the output (class masks; it has no gradient).
    """
    batched = learner.batched
    if learner.backprop is None:
        optimizer = learner.optimizer
        optimizer.zero_grad(set_to_none=True)
        output = learner.model(x)
        if mask is not None:
            output = output + mask
        losses = run_losses(LOSSES[loss], output, y, batched)
        (losses.sum() if batched else losses).backward()
        optimizer.step()
    else:
        output, cache = learner.backprop.forward(x)
        if mask is not None:
            output = output + mask
        losses, grad_output = loss_and_gradient(loss, output, y, batched)
        learner.backprop.backward(cache, grad_output)
        learner.backprop.optimizer_step()  # optimizer.step() (or what is left of it, if fused)
    return output, losses


def loss_and_gradient(loss: str, output: Tensor, target: Tensor,
                      batched: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Each run's mean loss (as :func:`run_losses`) and the gradient of their sum by ``output``.

    MSE: d/d output of mean((output - target)^2) is 2 (output - target) / n; cross entropy:
    (softmax(output) - one_hot(target)) / n, with n the loss terms per run (masked logits at
    -inf get 0).
    """
    count = target.numel() // len(target) if batched else target.numel()  # terms per run
    if loss == "mse":
        diff = output - target
        squared = diff.square().reshape(len(diff) if batched else 1, -1)  # (runs, terms)
        # one term per run (one example, one output): the mean is that term
        losses = squared.select(1, 0) if count == 1 else squared.mean(1)
        return (losses if batched else losses.reshape(())), diff.mul_(2.0 / count)
    losses = run_losses(LOSSES[loss], output, target, batched)
    grad = torch.softmax(output, -1)
    grad.scatter_add_(-1, target.unsqueeze(-1), torch.full_like(grad[..., :1], -1.0))
    return losses, grad if count == 1 else grad.div_(count)


def run_losses(
    loss: Callable[..., Tensor], output: Tensor, target: Tensor, batched: bool
) -> Tensor:
    """Each run's mean loss: 0-d for a single run, ``(S,)`` for batched ``(S, B, ...)`` outputs.

    The batched runs train on the sum, whose gradient for run s is run s's mean-loss gradient.
    """
    if not batched:
        return loss(output, target)
    per_example = loss(output.flatten(0, 1), target.flatten(0, 1), reduction="none")
    return per_example.view(output.shape[0], -1).mean(1)


def run_batches(
    tasks: Sequence[Task],
    orders: Sequence[Tensor],
    batch_size: int,
    batched: bool,
    on_chunk: Callable[[Tensor], None] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch's training batches: run s's batches take ``tasks[s]`` in ``orders[s]``.

    Yields ``(x, y)`` of the single run, or of all runs stacked as ``(S, B, ...)``. Examples
    are gathered about :data:`CHUNK_EXAMPLES` at a time (over all runs) and then sliced, to
    keep per-step work small; batched runs gather into one buffer, so a batch is only valid
    until the next one is taken. ``on_chunk`` is called with each chunk's inputs before its
    batches are yielded (``(S, n, ...)`` or ``(n, ...)``; :meth:`HandBackprop.prefetch`).
    """
    n = len(orders[0])
    per_run = max(1, CHUNK_EXAMPLES // (len(tasks) * batch_size)) * batch_size
    chunk = min(n, per_run if batched else max(1, CHUNK_EXAMPLES // batch_size) * batch_size)
    dim = 1 if batched else 0
    first_x, first_y = tasks[0].train_x, tasks[0].train_y
    if batched:  # (S, chunk, ...), filled in place: no new chunk-sized tensor per chunk
        x_buffer = first_x.new_empty(len(tasks), chunk, *first_x.shape[1:])
        y_buffer = first_y.new_empty(len(tasks), chunk, *first_y.shape[1:])
    for start in range(0, n, chunk):
        indices = [order[start : start + chunk] for order in orders]
        if batched:
            size = len(indices[0])
            x, y = x_buffer[:, :size], y_buffer[:, :size]
            for s, (task, i) in enumerate(zip(tasks, indices, strict=True)):
                torch.index_select(task.train_x, 0, i, out=x[s])
                torch.index_select(task.train_y, 0, i, out=y[s])
        else:
            x, y = first_x[indices[0]], first_y[indices[0]]
        if on_chunk is not None:
            on_chunk(x)
        size = x.shape[dim]
        for i in range(0, size, batch_size):
            b = min(batch_size, size - i)
            yield x.narrow(dim, i, b), y.narrow(dim, i, b)


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


def log_method_stats(writers: Sequence[SummaryWriter], methods: dict[str, Method],
                     step: int) -> None:  # fmt: skip
    """Each run's method counters (:meth:`Method.run_stats`) to that run's writer."""
    for method in methods.values():
        for writer, stats in zip(writers, method.run_stats(len(writers)), strict=True):
            for key, value in stats.items():
                writer.add_scalar(f"plasticity/net/{key}", value, step)


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
            run_net = learner.run_model(run)
            if not stream.online:
                _task_end_evaluation(learner.streams[run], run_net, methods, t, test_sets[run],
                                     writer, p)  # fmt: skip
            probe_idx = torch.randperm(n, generator=order_gens[run])[: tc.probe_size]
            health = log_plasticity(writer, run_net, tasks[run].train_x[probe_idx], p["step"])
            p["plasticity"].append(health)
            p["task_end_steps"].append(p["step"])
            p["task"] = t + 1
        del tasks
        _save_all(learner, run_dirs, progresses)
        if tc.stop_after_tasks is not None and progress["task"] >= tc.stop_after_tasks:
            return [{"stopped_after_tasks": p["task"]} for p in progresses]
    return [classification_results(stream, p, tc) for p in progresses]


def _task_end_evaluation(stream: TaskStream, model: nn.Module, methods: dict[str, Method],
                         t: int, test_sets: dict[int, tuple[Tensor, Tensor, Tensor | None]],
                         writer: SummaryWriter, progress: dict[str, Any]) -> None:  # fmt: skip
    """Task-end hooks of the methods, then the row of the accuracy matrix after task ``t``."""
    task = stream.tasks[t]
    for method in methods.values():
        method.on_task_end(task, model)
    row = [accuracy(model, *test_set(stream, j, test_sets)) for j in range(len(stream.tasks))]
    progress["accuracy_matrix"].append(row)
    for j, value in enumerate(row[: t + 1]):
        writer.add_scalar(f"cl/accuracy/task{j}", value, progress["step"])
    writer.add_scalar("cl/average_accuracy_seen", float(np.mean(row[: t + 1])), progress["step"])


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
        _save_all(learner, run_dirs, progresses)
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
