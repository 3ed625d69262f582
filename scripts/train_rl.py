"""Train a PPO agent on a (non-stationary) MuJoCo task and log its plasticity to TensorBoard.

Example:
    python scripts/train_rl.py --env hopper-friction --agent ppo-cbp-l2 --seed 0 \\
        --total-steps 1e6 --logdir runs/ --set method.continual_backprop.replacement_rate=1e-5

Presets are names of files in ``envs/`` and ``agents/`` (or paths to YAML files); ``--set``
overrides any field of the resolved config (``plasticity_rl.agents.config.RLRunConfig``).
``--resume RUN_DIR`` continues an interrupted run from its latest checkpoint.
Exit status: 0 on success, 2 on a configuration error (nothing is written then).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from plasticity_rl.agents import RLRunConfig, build_agent, make_env, train, validate
from plasticity_rl.config import load_preset, resolve
from plasticity_rl.registry import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="env preset name (envs/*.yaml) or path")
    parser.add_argument("--agent", help="agent preset name (agents/*.yaml) or path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-steps", type=float, help="env steps to train for, e.g. 1e6")
    parser.add_argument("--logdir", type=Path, default=Path("runs"), help="parent of run dirs")
    parser.add_argument("--name", help="run directory name (default: env__agent__sSEED__time)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. ppo.n_steps=1024 (repeatable)",
    )
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.resume is None and (args.env is None or args.agent is None):
        parser.error("--env and --agent are required (unless --resume)")
    return args


def resolve_config(args: argparse.Namespace) -> RLRunConfig:
    overrides = list(args.overrides)
    if args.total_steps is not None:
        overrides.append(f"total_steps={int(args.total_steps)}")
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise ConfigError("--resume", str(args.resume), "a run directory with config.yaml")
        cfg = resolve(RLRunConfig, yaml.safe_load(saved.read_text()), overrides=overrides)
    else:
        layers = [
            {"env": load_preset("envs", args.env)},
            load_preset("agents", args.agent),
            {"seed": args.seed, "env_preset": str(args.env), "agent_preset": str(args.agent)},
        ]
        cfg = resolve(RLRunConfig, *layers, overrides=overrides)
    validate(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        env = make_env(cfg)
        model, methods = build_agent(cfg, env)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.resume is not None:
        run_dir = args.resume
    else:
        stem = lambda p: Path(p).stem  # noqa: E731
        name = args.name or (
            f"{stem(cfg.env_preset)}__{stem(cfg.agent_preset)}__s{cfg.seed}__"
            f"{time.strftime('%Y%m%d-%H%M%S')}"
        )
        run_dir = args.logdir / name
        run_dir.mkdir(parents=True, exist_ok=False)
    print(f"run directory: {run_dir}")
    print(f"watch it:      tensorboard --logdir {run_dir.parent}")
    if methods:
        print(f"interventions: {', '.join(methods)} (each acts once per optimiser step)")
    train(
        cfg,
        run_dir,
        resume=args.resume is not None,
        progress_bar=not args.no_progress,
        prepared=(env, model, methods),
    )
    print(f"done: {cfg.total_steps} env steps; logs and checkpoint in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
