"""Building what a supervised run trains: its stream, network, optimiser and methods.

A single run (:func:`build_learner`) or S runs of one config that differ in their seed (and
optionally in per-run values, :data:`PER_RUN_KEYS`) stacked as ONE batched network
(:func:`build_batched_learner`, :mod:`plasticity_rl.nn.batched`). Run s of a batched learner is
built exactly as a single run with its seed: its stream (:func:`run_stream_kwargs`), its initial
network and its random draws (a per-run generator that continues the state
``torch.manual_seed(seed)`` gives a single run).
"""

from __future__ import annotations

import copy
import inspect
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from plasticity_rl.config import to_yaml
from plasticity_rl.device import resolve_device
from plasticity_rl.methods import Method, make_method
from plasticity_rl.nn import (
    build_mlp,
    build_runs,
    run_module,
)
from plasticity_rl.nn.backprop import HandBackprop
from plasticity_rl.nn.cnn import build_cnn
from plasticity_rl.nn.resnet import build_resnet18
from plasticity_rl.optim import make_optimizer
from plasticity_rl.optim.runs import (
    make_run_optimizer,
)
from plasticity_rl.optim.sam import is_sharpness_aware
from plasticity_rl.registry import ConfigError, require
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.regression import RegressionStream
from plasticity_rl.supervised.streams import STREAMS, LazyTasks, TaskStream, make_stream

Stream = TaskStream | RegressionStream


PER_RUN_KEYS = (
    ("optimizer", "lr"),
    ("method", "continual_backprop", "replacement_rate"),
    ("method", "continual_backprop", "maturity_threshold"),
)
"""Config values that batched runs may set per run, as a list with one value per run."""


def run_stream_kwargs(cfg: SupervisedRunConfig) -> dict[str, Any]:
    """The stream's keyword arguments for the run with seed ``cfg.seed``.

    A stream that takes a ``seed`` (slowly-changing regression, permuted and online permuted
    MNIST) gets ``stream.kwargs.seed + seed``, so each run of a seed sweep has its own data
    (regression target and sequence, permutations, example orders); seed 0 keeps the preset's
    stream. Likewise a shuffled class order (``shuffle_classes_seed`` not null) is drawn with
    ``shuffle_classes_seed + seed``: each run of class-incremental CIFAR-100 has its own class
    order, as Dohare et al.'s runs do. Single and batched runs use this same mapping.
    """
    kwargs = dict(cfg.stream.kwargs)
    parameters = inspect.signature(STREAMS.get(cfg.stream.stream)).parameters
    for key in ("seed", "shuffle_classes_seed"):
        parameter = parameters.get(key)
        if parameter is not None and kwargs.get(key, parameter.default) is not None:
            kwargs[key] = kwargs.get(key, parameter.default) + cfg.seed
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
    """An MLP (flattened inputs), a CNN with an MLP head or ResNet-18, from ``cfg.network``."""
    conv_keys = ("kind", "channels", "kernel_sizes", "conv_padding")
    mlp_kwargs = {k: v for k, v in asdict(cfg.network).items() if k not in conv_keys}
    if cfg.network.kind == "resnet18":
        defaults = asdict(SupervisedRunConfig().network)
        changed = sorted(k for k, v in mlp_kwargs.items() if v != defaults[k])
        require(not changed, "network", f"resnet18 with {', '.join(changed)}",
                "resnet18 without MLP options (hidden_sizes, activation, init, ...)")  # fmt: skip
        return build_resnet18(input_shape, out_dim)
    if cfg.network.kind == "cnn":
        return build_cnn(input_shape, out_dim, cfg.network.channels,
                         kernel_sizes=cfg.network.kernel_sizes,
                         padding=cfg.network.conv_padding, **mlp_kwargs)  # fmt: skip
    mlp = build_mlp(math.prod(input_shape), out_dim=out_dim, **mlp_kwargs)
    return mlp if len(input_shape) == 1 else nn.Sequential(nn.Flatten(), mlp)


def make_methods(cfg: SupervisedRunConfig, stream: Stream) -> dict[str, Method]:
    regression = isinstance(stream, RegressionStream)
    methods = {name: make_method(name, **(kw or {})) for name, kw in cfg.method.items()}
    for name, method in methods.items():
        if method.uses_task_boundaries and (regression or stream.online):
            raise ConfigError(
                f"method.{name}", name, "methods without task boundaries for this stream"
            )
    return methods


def output_width(stream: Stream) -> int:
    return 1 if isinstance(stream, RegressionStream) else stream.num_classes


def build_learner(
    cfg: SupervisedRunConfig, stream: Stream
) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Method]]:
    """Network, optimiser (with its step hooks) and attached methods, seeded by ``cfg.seed``,
    on ``cfg.device`` (built on the CPU and moved; the stream's tasks move as they are built)."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = move(build_network(cfg, tuple(stream.input_shape), output_width(stream)), device)
    place_stream(stream, device)
    optimizer = make_optimizer(model, cfg.optimizer)
    methods = make_methods(cfg, stream)
    for method in methods.values():
        method.attach(model, optimizer)
    return model, optimizer, methods


def move(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; left where it was built for the CPU (so a network built on the
    meta device, as the sweep's batching check does, stays there)."""
    return model if device.type == "cpu" else model.to(device)


def place_stream(stream: Stream, device: torch.device) -> None:
    """Have ``stream``'s tasks built onto ``device`` (a regression stream's examples are moved
    by the trainer)."""
    if isinstance(stream, TaskStream) and isinstance(stream.tasks, LazyTasks):
        stream.tasks.device = device


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
        # the hand-written backward is a CPU optimisation; autograd on other devices
        use = self.cfgs[0].train.hand_backprop and HandBackprop.supports(self.model)
        use = use and self.device.type == "cpu"
        use = use and not is_sharpness_aware(self.optimizer)  # two passes a step: autograd's
        if use and not any(m.needs_autograd for m in self.methods.values()):
            self.backprop = HandBackprop(self.model, self.optimizer)

    @property
    def runs(self) -> int:
        return len(self.cfgs)

    @property
    def device(self) -> torch.device:
        """Where the network lives (``cfg.device``, resolved)."""
        return next(self.model.parameters()).device

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
            GABA switch; EWC, MAS, SI and replay, which act at task boundaries), early
            stopping, bad per-run values.
    """
    cfgs = run_configs(cfg, seeds)
    require(not cfg.train.early_stopping, "train.early_stopping", True,
            "false in batched runs (each run would go back to its own best network): run one "
            "seed per process (--runs 1)")  # fmt: skip
    dataset = None
    if cfg.stream.dataset is not None:
        from plasticity_rl.supervised.datasets import load_dataset

        dataset = load_dataset(cfg.stream.dataset, cfg.data_dir)
    streams = [build_stream(run_cfg, dataset) for run_cfg in cfgs]
    first = streams[0]
    generators = [torch.Generator().manual_seed(run_cfg.seed) for run_cfg in cfgs]
    input_shape, out_dim = tuple(first.input_shape), output_width(first)
    device = resolve_device(cfg.device)
    model = move(build_runs(lambda: build_network(cfgs[0], input_shape, out_dim), generators),
                 device)  # fmt: skip
    for stream in streams:
        place_stream(stream, device)
    lr = cfg.optimizer.get("lr") if isinstance(cfg.optimizer, dict) else None
    lrs = list(lr) if isinstance(lr, list | tuple) else None
    optimizer = make_run_optimizer(model, cfg.optimizer, len(cfgs), lrs)
    methods = make_methods(cfg, first)
    for name, method in methods.items():
        require(not method.uses_task_boundaries, f"method.{name}", dict(cfg.method[name] or {}),
                "no task-boundary method (EWC, MAS, SI, replay) in batched runs: run one seed "
                "per process (--runs 1)")  # fmt: skip
        method.attach(model, optimizer)
    return Learner(cfgs, streams, model, optimizer, methods, generators)
