"""What the training scripts share: common arguments, config resolution and run directories.

Both ``scripts/train_rl.py`` and ``scripts/train_supervised.py`` take an env (or stream) preset,
an agent preset, ``--seed``, ``--set key=value`` overrides, ``--logdir``/``--name`` and
``--resume RUN_DIR``; the resolved config is saved as ``config.yaml`` in the run directory.

The resume rule: ``--resume`` continues the run its ``config.yaml`` defines. ``--env``,
``--agent`` and ``--seed`` are refused with it, and ``--set`` only takes the keys that extend
or locate a run (each script's ``resume_keys``, e.g. ``total_steps``); the run's ``config.yaml``
is rewritten with them, so it always shows what ran.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from plasticity_rl.config import load_preset, load_yaml, resolve
from plasticity_rl.device import DEVICE_CHOICES
from plasticity_rl.registry import ConfigError
from plasticity_rl.rundir import STATUS, DiskFull, Diverged, Interrupted

T = TypeVar("T")


def common_parser(
    description: str, env_help: str, resume_runs: bool = False
) -> argparse.ArgumentParser:
    """A parser with the arguments every training script takes; ``resume_runs``: ``--resume``
    takes one or more run directories (a list; several are the runs of one batched group)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--env", help=env_help)
    parser.add_argument("--agent", help="agent preset name (agents/*.yaml) or path")
    parser.add_argument("--seed", type=int, help="random seed, an integer >= 0 (default 0)")
    parser.add_argument("--logdir", type=Path, default=Path("runs"), help="parent of run dirs")
    parser.add_argument("--name", help="run directory name (default: env__agent__sSEED__time)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. optimizer.lr=0.01 (repeatable)",
    )
    if resume_runs:
        parser.add_argument("--resume", type=Path, nargs="+", metavar="RUN_DIR",
                            help="continue this run, or these batched runs together")  # fmt: skip
    else:
        parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run")
    parser.add_argument("--device", help=f"where the networks train: {DEVICE_CHOICES} "
                        "(default: the config's, cpu; a resumed run may move)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def device_override(args: argparse.Namespace) -> list[str]:
    """``--device X`` as the override ``device=X`` (none without the flag)."""
    return [] if args.device is None else [f"device={args.device}"]


def check_required(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.resume is None and (args.env is None or args.agent is None):
        parser.error("--env and --agent are required (unless --resume)")


def resolve_run_config(
    schema: type[T],
    args: argparse.Namespace,
    env_field: str,
    overrides: Sequence[str],
    resume_keys: Sequence[str] = (),
) -> T:
    """The run config from ``--resume``'s saved config, or from the two presets + overrides.

    ``env_field`` is the config field the env preset fills (``env`` or ``stream``);
    ``resume_keys``: the only keys ``--set`` may change on ``--resume`` (the resume rule above).
    """
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        raise ConfigError("--seed", seed, "an integer >= 0")
    if args.resume is not None:
        for flag, value in (("--env", args.env), ("--agent", args.agent), ("--seed", args.seed)):
            if value is not None:
                raise ConfigError(flag, value, "not with --resume (the run's config.yaml "
                                  "defines the run; start a new run to change it)")  # fmt: skip
        for item in overrides:
            key = item.partition("=")[0]
            if key not in resume_keys:
                raise ConfigError("--set", item, f"with --resume only {', '.join(resume_keys)} "
                                  "(start a new run to change anything else)")  # fmt: skip
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise ConfigError("--resume", str(args.resume), "a run directory with config.yaml")
        try:
            data = load_yaml(saved)
        except ConfigError:
            raise ConfigError("--resume", str(saved), "a readable config.yaml") from None
        return resolve(schema, data, overrides=overrides)
    layers: list[dict[str, Any]] = [
        {env_field: load_preset("envs", args.env)},
        load_preset("agents", args.agent),
        {"seed": seed, "env_preset": str(args.env), "agent_preset": str(args.agent)},
    ]
    return resolve(schema, *layers, overrides=overrides)


def run_directory(args: argparse.Namespace, cfg: Any) -> Path:
    """``--resume``'s directory, or a new ``<logdir>/<env>__<agent>__s<seed>__<time>``."""
    if args.resume is not None:
        return args.resume
    name = args.name or (
        f"{Path(cfg.env_preset).stem}__{Path(cfg.agent_preset).stem}__s{cfg.seed}__"
        f"{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_dir = args.logdir / name
    if run_dir.exists():
        raise ConfigError("--name", name, f"a name not yet used in {args.logdir} (or --resume "
                          f"{run_dir} to continue that run)")  # fmt: skip
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise ConfigError("--logdir", str(args.logdir), f"a writable directory ({err.strerror})"
                          ) from None  # fmt: skip
    return run_dir


def check_logdir(logdir: Path) -> None:
    """Refuse a ``--logdir`` that cannot hold run directories, before anything is built.

    Raises:
        ConfigError: it is a file, under a file, or not writable (read-only, ``/proc``, ...).
    """
    node = logdir
    while not node.exists() and node != node.parent:
        node = node.parent
    if not node.is_dir():
        raise ConfigError("--logdir", str(logdir), f"a directory ({node} is a file)")
    if not os.access(node, os.W_OK | os.X_OK) or str(node.resolve()).startswith(("/proc", "/sys")):
        raise ConfigError("--logdir", str(logdir), f"a writable directory ({node} is not)")


def report_stop(err: BaseException, run_dir: Path) -> int:
    """Print the one line of a run that stopped early and return its exit status: 128 + the
    signal (interrupted, checkpointed), 3 (diverged), 1 (disk full), 2 (config error)."""
    if isinstance(err, Interrupted):
        name = signal.Signals(err.signum).name
        print(f"interrupted: {name} at step {err.step}; checkpoint saved, continue with "
              f"--resume {run_dir}", file=sys.stderr)  # fmt: skip
        return err.exit_code
    if isinstance(err, Diverged):
        print(f"diverged: {err}; stopped, {run_dir / STATUS} says diverged", file=sys.stderr)
        return err.exit_code
    if isinstance(err, DiskFull):
        print(f"error: {err}; the previous checkpoint is kept", file=sys.stderr)
        return 1
    if isinstance(err, ConfigError):
        print(f"error: {err}", file=sys.stderr)
        return 2
    raise err


def print_header(run_dir: Path, methods: Sequence[str]) -> None:
    print(f"run directory: {run_dir}")
    print(f"watch it:      tensorboard --logdir {run_dir.parent}")
    if methods:
        print(f"methods: {', '.join(methods)} (acting through optimiser-step hooks, once per step)")
