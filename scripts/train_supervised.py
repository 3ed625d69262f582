"""Train a learner on a supervised continual-learning stream and log forgetting and plasticity.

Example:
    python scripts/train_supervised.py --env split-fashion-mnist --agent hard-ash-adagrad \\
        --seed 0 --data-dir /usr/share/datasets/fashion-mnist --logdir runs/

Stream presets live in ``envs/``, learner presets in ``agents/`` (names or paths); ``--set``
overrides any field of ``plasticity_rl.supervised.config.SupervisedRunConfig``. The run writes
TensorBoard logs (``cl/``, ``plasticity/``), ``config.yaml``, a checkpoint at every task
boundary (``--resume RUN_DIR`` continues from it) and ``results.json`` with the final numbers.
Exit status: 0 on success, 2 on a configuration or data error (nothing is written then).
"""

from __future__ import annotations

import json
import sys

from plasticity_rl.cli import (
    check_required,
    common_parser,
    print_header,
    resolve_run_config,
    run_directory,
)
from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised.config import SupervisedRunConfig, validate
from plasticity_rl.supervised.datasets import DatasetNotFound
from plasticity_rl.supervised.trainer import build_learner, build_stream, train


def main(argv: list[str] | None = None) -> int:
    parser = common_parser(__doc__.split("\n\n")[0], "stream preset name (envs/*.yaml) or path")
    parser.add_argument("--data-dir", help="directory with the dataset files")
    args = parser.parse_args(argv)
    check_required(parser, args)
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data_dir={args.data_dir}")
    try:
        cfg = resolve_run_config(SupervisedRunConfig, args, "stream", overrides)
        validate(cfg)
        stream = build_stream(cfg)
        model, optimizer, methods = build_learner(cfg, stream)
    except (ConfigError, DatasetNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = run_directory(args, cfg)
    print_header(run_dir, list(methods))
    results = train(
        cfg,
        run_dir,
        resume=args.resume is not None,
        show_progress=not args.no_progress,
        prepared=(stream, model, optimizer, methods),
    )
    summary = {k: v for k, v in results.items() if isinstance(v, int | float)}
    print(f"done: {json.dumps(summary)}; results in {run_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
