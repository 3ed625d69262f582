"""The typed config of one supervised continual-learning run.

A stream preset (``envs/*.yaml`` with ``stream``, ``dataset``, ``kwargs``) fills ``stream``; an
agent preset (``agents/*.yaml``) fills ``network``, ``optimizer``, ``method`` and ``train``.
Any field can be overridden with ``--set key=value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plasticity_rl.device import resolve_device
from plasticity_rl.nn import MLPConfig
from plasticity_rl.registry import require

NETWORK_KINDS = ("mlp", "cnn", "resnet18")
EVALUATE_TASKS = ("all", "current")


@dataclass
class StreamConfig:
    """Which task stream (``plasticity_rl.supervised.streams.STREAMS``) and dataset."""

    stream: str = "split"
    dataset: str | None = "mnist"
    """``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, or null for generated data."""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class NetworkConfig(MLPConfig):
    """An MLP (the :class:`MLPConfig` fields), a small CNN with an MLP head, or ResNet-18."""

    kind: str = "mlp"
    """``mlp``, ``cnn`` (conv blocks of ``channels``, then the MLP head) or ``resnet18``
    (Dohare et al. 2024's CIFAR ResNet-18, :mod:`plasticity_rl.nn.resnet`; it has no MLP
    options: they must keep their defaults)."""
    channels: list[int] = field(default_factory=lambda: [32, 64])
    """Conv channels of the CNN blocks (``kind: cnn`` only)."""
    kernel_sizes: list[int] | None = None
    """Kernel size of each CNN block (null: 3 for every block; ``kind: cnn`` only)."""
    conv_padding: str = "same"
    """``same`` or ``valid`` padding of the CNN's convs (``kind: cnn`` only)."""


@dataclass
class TrainConfig:
    batch_size: int = 64
    """Examples per optimiser step (online streams always use 1)."""
    epochs_per_task: int = 1
    eval_every_steps: int = 0
    """Continual evaluation (stability gap) every this many optimiser steps on a fixed subset
    of each task's test set; 0 = evaluate only at task ends."""
    eval_examples_per_task: int = 1000
    """Size of the fixed test subset per task used by continual evaluation."""
    probe_size: int = 2000
    """Training examples probed for the plasticity metrics at each task switch: online streams
    the first ones of the coming task, before it (Dohare et al.), other streams random ones of
    the finished task."""
    log_every_steps: int = 100
    """Training loss (and online accuracy) logged every this many optimiser steps."""
    stop_after_tasks: int | None = None
    """Stop (with a checkpoint) after this many tasks, e.g. to continue later with --resume.
    A pause of this invocation: not recorded in ``config.yaml``, so a plain ``--resume``
    finishes the run."""
    checkpoint_every_steps: int = 50_000
    """Also checkpoint mid-task, at the first chunk end (:func:`~plasticity_rl.supervised.steps.
    chunk_examples`) after this many optimiser steps since the last checkpoint (0: only at
    task ends and regression bins, which always checkpoint). SIGINT, SIGTERM and SIGHUP
    checkpoint at the next chunk end."""
    lr_drop_epochs: list[int] = field(default_factory=list)
    """Epochs of each task (from 0) at whose start the learning rate is multiplied by
    ``lr_drop_factor`` (:mod:`plasticity_rl.supervised.epochs`; Dohare et al.'s CIFAR-100:
    [60, 120, 160]); restarts at every task."""
    lr_drop_factor: float = 0.2
    """The multiplier of each learning-rate drop."""
    evaluate_tasks: str = "all"
    """At each task's end, the test accuracy on ``all`` tasks (the accuracy matrix) or only the
    ``current`` one (``task_accuracy``; for streams of thousands of tasks)."""
    evaluate_every_epoch: bool = False
    """Validation (if the stream holds some out) and test accuracy of the current task after
    every epoch; results get each task's best (``best_epoch_test_accuracy``)."""
    early_stopping: bool = False
    """At each task's end, go back to the network of its epoch with the best validation
    accuracy (needs validation data: ``class_incremental`` with ``validation_per_class``)."""
    hand_backprop: bool = True
    """Compute the gradients of a plain MLP without autograd (``plasticity_rl.nn.backprop``:
    autograd's own derivative kernels, fewer ops per step); other networks, and methods that
    need autograd (neuronal decay), always use autograd. False: always autograd."""


@dataclass
class SupervisedRunConfig:
    """Everything that defines one supervised run; saved as ``config.yaml``."""

    stream: StreamConfig = field(default_factory=StreamConfig)
    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(hidden_sizes=[1000]))
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "sgd", "lr": 0.01})
    """Optimiser preset and settings, ``update_clip`` included (see ``plasticity_rl.optim``)."""
    method: dict[str, Any] = field(default_factory=dict)
    """Interventions and continual-learning methods by name, with their settings."""
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    device: str = "cpu"
    """Where the network, its data and its updates live: ``auto``, ``cpu``, ``cuda`` or
    ``cuda:N`` (:mod:`plasticity_rl.device`). The CPU is the default, so that runs are
    bit-identical across machines unless asked."""
    data_dir: str | None = None
    """Directory with the dataset files (None: the download cache)."""
    env_preset: str = ""
    agent_preset: str = ""


def validate(cfg: SupervisedRunConfig) -> None:
    """Range checks that types alone cannot express; raises ``ConfigError``."""
    resolve_device(cfg.device)
    t = cfg.train
    require(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    require(t.epochs_per_task >= 1, "train.epochs_per_task", t.epochs_per_task, "an integer >= 1")
    require(t.eval_every_steps >= 0, "train.eval_every_steps", t.eval_every_steps, ">= 0")
    require(t.eval_examples_per_task >= 1, "train.eval_examples_per_task",
            t.eval_examples_per_task, "an integer >= 1")  # fmt: skip
    require(t.probe_size >= 1, "train.probe_size", t.probe_size, "an integer >= 1")
    require(t.log_every_steps >= 1, "train.log_every_steps", t.log_every_steps, ">= 1")
    require(
        t.stop_after_tasks is None or t.stop_after_tasks >= 1,
        "train.stop_after_tasks",
        t.stop_after_tasks,
        "null or an integer >= 1",
    )
    require(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps",
            t.checkpoint_every_steps, "an integer >= 0")  # fmt: skip
    require(cfg.network.kind in NETWORK_KINDS, "network.kind", cfg.network.kind, NETWORK_KINDS)
    require(t.evaluate_tasks in EVALUATE_TASKS, "train.evaluate_tasks", t.evaluate_tasks,
            EVALUATE_TASKS)  # fmt: skip
    drops = t.lr_drop_epochs
    require(isinstance(drops, list) and all(isinstance(e, int) and e >= 1 for e in drops),
            "train.lr_drop_epochs", drops, "a list of epochs >= 1")  # fmt: skip
    require(0 < t.lr_drop_factor <= 1, "train.lr_drop_factor", t.lr_drop_factor,
            "a number in (0, 1]")  # fmt: skip
    has_validation = cfg.stream.kwargs.get("validation_per_class", 0) > 0
    require(
        not t.early_stopping or has_validation,
        "train.early_stopping",
        t.early_stopping,
        "false for a stream without validation data (stream.kwargs.validation_per_class: 0)",
    )
