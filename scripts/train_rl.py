"""Train a PPO agent on a (non-stationary) MuJoCo task and log its plasticity to TensorBoard.

Example:
    python scripts/train_rl.py --env hopper-friction --agent ppo-cbp-l2 --seed 0 \\
        --total-steps 1e6 --logdir runs/ --set method.continual_backprop.replacement_rate=1e-5

Presets are names of files in ``envs/`` and ``agents/`` (or paths to YAML files); ``--set``
overrides any field of the resolved config (``plasticity_rl.agents.config.RLRunConfig``).
``--resume RUN_DIR`` continues an interrupted run from its latest checkpoint, as its
``config.yaml`` defines it (only ``--total-steps`` / ``--set total_steps=...`` and
``--device`` may change).
``status.json`` follows the run (running, complete, interrupted, diverged, failed);
SIGINT/SIGTERM/SIGHUP checkpoint at the next rollout start.
Exit status: 0 on success, 2 on a configuration error (nothing is written then), 3 when the
policy's parameters became NaN or infinite (``diverged``), 128 + the signal number when
interrupted (130, 143, 129), 1 when the disk is full.
"""

from __future__ import annotations

import math
import sys

from plasticity_rl.agents import RLRunConfig, build_agent, make_env, train, validate
from plasticity_rl.cli import (
    check_logdir,
    check_required,
    common_parser,
    device_override,
    print_header,
    report_stop,
    resolve_run_config,
    run_directory,
)
from plasticity_rl.registry import ConfigError
from plasticity_rl.rundir import DiskFull, Diverged, Interrupted

MAX_TOTAL_STEPS = 10**12
"""More env steps than any run could take (a typo guard: 1e30 is refused)."""


def main(argv: list[str] | None = None) -> int:
    parser = common_parser(__doc__.split("\n\n")[0], "env preset name (envs/*.yaml) or path")
    parser.add_argument("--total-steps", type=float, help="env steps to train for, e.g. 1e6")
    args = parser.parse_args(argv)
    check_required(parser, args)
    overrides = list(args.overrides)
    env = None
    try:
        if args.total_steps is not None:
            steps = args.total_steps
            whole = math.isfinite(steps) and steps == int(steps)
            if not (whole and 1 <= steps <= MAX_TOTAL_STEPS):
                allowed = f"a whole number of env steps in [1, {MAX_TOTAL_STEPS:.0e}]"
                raise ConfigError("--total-steps", steps, allowed)
            overrides.append(f"total_steps={int(steps)}")
        check_logdir(args.logdir)
        overrides += device_override(args)
        cfg = resolve_run_config(RLRunConfig, args, "env", overrides, ("total_steps", "device"))
        validate(cfg)
        env = make_env(cfg)
        model, methods = build_agent(cfg, env)
        run_dir = run_directory(args, cfg)
    except ConfigError as err:
        if env is not None:
            env.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_header(run_dir, list(methods))
    try:
        train(
            cfg,
            run_dir,
            resume=args.resume is not None,
            progress_bar=not args.no_progress,
            prepared=(env, model, methods),
        )
    except (Interrupted, Diverged, DiskFull, ConfigError) as err:
        return report_stop(err, run_dir)
    print(f"done: {model.num_timesteps} env steps; logs and checkpoint in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
