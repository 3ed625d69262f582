"""What the training scripts share: common arguments, config resolution and run directories.

Both ``scripts/train_rl.py`` and ``scripts/train_supervised.py`` take an env (or stream) preset,
an agent preset, ``--seed``, ``--set key=value`` overrides, ``--logdir``/``--name`` and
``--resume RUN_DIR``; the resolved config is saved as ``config.yaml`` in the run directory.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.registry import ConfigError

T = TypeVar("T")


def common_parser(
    description: str, env_help: str, resume_runs: bool = False
) -> argparse.ArgumentParser:
    """A parser with the arguments every training script takes; ``resume_runs``: ``--resume``
    takes one or more run directories (a list; several are the runs of one batched group)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--env", help=env_help)
    parser.add_argument("--agent", help="agent preset name (agents/*.yaml) or path")
    parser.add_argument("--seed", type=int, default=0)
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_required(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.resume is None and (args.env is None or args.agent is None):
        parser.error("--env and --agent are required (unless --resume)")


def resolve_run_config(
    schema: type[T], args: argparse.Namespace, env_field: str, overrides: Sequence[str]
) -> T:
    """The run config from ``--resume``'s saved config, or from the two presets + overrides.

    ``env_field`` is the config field the env preset fills (``env`` or ``stream``).
    """
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise ConfigError("--resume", str(args.resume), "a run directory with config.yaml")
        return resolve(schema, yaml.safe_load(saved.read_text()), overrides=overrides)
    layers: list[dict[str, Any]] = [
        {env_field: load_preset("envs", args.env)},
        load_preset("agents", args.agent),
        {"seed": args.seed, "env_preset": str(args.env), "agent_preset": str(args.agent)},
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
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def print_header(run_dir: Path, methods: Sequence[str]) -> None:
    print(f"run directory: {run_dir}")
    print(f"watch it:      tensorboard --logdir {run_dir.parent}")
    if methods:
        print(f"methods: {', '.join(methods)} (acting through optimiser-step hooks, once per step)")
