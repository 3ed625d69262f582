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

import sys

from plasticity_rl.agents import RLRunConfig, build_agent, make_env, train, validate
from plasticity_rl.cli import (
    check_required,
    common_parser,
    print_header,
    resolve_run_config,
    run_directory,
)
from plasticity_rl.registry import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = common_parser(__doc__.split("\n\n")[0], "env preset name (envs/*.yaml) or path")
    parser.add_argument("--total-steps", type=float, help="env steps to train for, e.g. 1e6")
    args = parser.parse_args(argv)
    check_required(parser, args)
    overrides = list(args.overrides)
    if args.total_steps is not None:
        overrides.append(f"total_steps={int(args.total_steps)}")
    try:
        cfg = resolve_run_config(RLRunConfig, args, "env", overrides)
        validate(cfg)
        env = make_env(cfg)
        model, methods = build_agent(cfg, env)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = run_directory(args, cfg)
    print_header(run_dir, list(methods))
    train(
        cfg,
        run_dir,
        resume=args.resume is not None,
        progress_bar=not args.no_progress,
        prepared=(env, model, methods),
    )
    print(f"done: {model.num_timesteps} env steps; logs and checkpoint in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
