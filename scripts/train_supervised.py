"""Train a learner on a supervised continual-learning stream and log forgetting and plasticity.

Example:
    python scripts/train_supervised.py --env split-fashion-mnist --agent hard-ash-adagrad \\
        --seed 0 --data-dir /usr/share/datasets/fashion-mnist --logdir runs/

Stream presets live in ``envs/``, learner presets in ``agents/`` (names or paths); ``--set``
overrides any field of ``plasticity_rl.supervised.config.SupervisedRunConfig``. The run writes
TensorBoard logs (``cl/``, ``plasticity/``), ``config.yaml``, a checkpoint at every task
boundary (``--resume RUN_DIR`` continues from it) and ``results.json`` with the final numbers.

Many seeds in one process (batched runs, any stream; not with a CNN, SDM layers, Top-K's GABA
switch or the task-boundary methods EWC, MAS, SI and replay): ``--runs 30`` trains seeds
``--seed`` ... ``--seed + 29``, ``--seeds 0,1,2`` the listed ones, as one batched network.
Each run gets its own run directory (``<env>__<agent>__s<seed>__<time>``, or
``<name>__s<seed>`` with ``--name``) with the same files a single run writes;
``--set optimizer.lr=[0.01,0.003,...]`` (SGD/SGDM) and
``method.continual_backprop.{replacement_rate,maturity_threshold}`` take one value per run.
Exit status: 0 on success, 2 on a configuration or data error (nothing is written then).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
from plasticity_rl.supervised.learner import (
    build_batched_learner,
    build_learner,
    build_stream,
    group_config,
    run_configs,
)
from plasticity_rl.supervised.trainer import train, train_runs


def run_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds of the runs: ``--seeds``, or ``--runs`` consecutive seeds from ``--seed``."""
    if args.seeds is not None:
        if args.runs is not None:
            raise ConfigError("--runs", args.runs, "not with --seeds (give one of the two)")
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(
                "--seeds", args.seeds, "comma-separated integers, e.g. 0,1,2"
            ) from None
        return seeds
    runs = 1 if args.runs is None else args.runs
    if runs < 1:
        raise ConfigError("--runs", runs, "an integer >= 1")
    return [args.seed + i for i in range(runs)]


def main(argv: list[str] | None = None) -> int:
    parser = common_parser(__doc__.split("\n\n")[0], "stream preset name (envs/*.yaml) or path",
                           resume_runs=True)  # fmt: skip
    parser.add_argument("--data-dir", help="directory with the dataset files")
    parser.add_argument("--runs", type=int, help="train this many seeds (from --seed) batched")
    parser.add_argument("--seeds", help="train these comma-separated seeds batched, e.g. 0,1,2")
    args = parser.parse_args(argv)
    check_required(parser, args)
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data_dir={args.data_dir}")
    resume_dirs: list[Path] = args.resume or []
    args.resume = resume_dirs[0] if len(resume_dirs) == 1 else None  # one run: as before
    try:
        if len(resume_dirs) > 1:
            return _resume_batched(args, resume_dirs, overrides)
        seeds = run_seeds(args)
        if args.resume is not None and (len(seeds) > 1 or args.seeds is not None):
            raise ConfigError("--resume", str(args.resume), "not with --runs or --seeds (give "
                              "the run directories of a batched group to --resume)")  # fmt: skip
        cfg = resolve_run_config(SupervisedRunConfig, args, "stream", overrides)
        validate(cfg)
        if len(seeds) > 1:
            learner = build_batched_learner(cfg, seeds)
        else:
            cfg = run_configs(cfg, seeds)[0]  # picks a one-element per-run list
            stream = build_stream(cfg)
            model, optimizer, methods = build_learner(cfg, stream)
    except (ConfigError, DatasetNotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(seeds) > 1:
        return _main_batched(args, cfg, seeds, learner)
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


def _resume_batched(args: argparse.Namespace, run_dirs: list[Path], overrides: list[str]) -> int:
    """``--resume DIR DIR ...``: continue the runs of one batched group, batched."""
    cfgs = []
    for run_dir in run_dirs:
        run_args = argparse.Namespace(**{**vars(args), "resume": run_dir})
        cfgs.append(resolve_run_config(SupervisedRunConfig, run_args, "stream", overrides))
    cfg = group_config(cfgs)
    validate(cfg)
    seeds = [run_cfg.seed for run_cfg in cfgs]
    learner = build_batched_learner(cfg, seeds)
    print(f"resuming {len(seeds)} batched runs (seeds {seeds}):")
    for run_dir in run_dirs:
        print(f"  {run_dir}")
    return _train_batched(args, cfg, seeds, run_dirs, learner, resume=True)


def _main_batched(
    args: argparse.Namespace, cfg: SupervisedRunConfig, seeds: list[int], learner: object
) -> int:
    """Batched runs: one run directory per seed, named as the single runs would be."""
    run_dirs: list[Path] = []
    for run_cfg in learner.cfgs:  # type: ignore[attr-defined]
        name = None if args.name is None else f"{args.name}__s{run_cfg.seed}"
        run_dirs.append(run_directory(argparse.Namespace(**{**vars(args), "name": name}), run_cfg))
    print(f"{len(seeds)} batched runs (seeds {seeds}) in {args.logdir}:")
    for run_dir in run_dirs:
        print(f"  {run_dir}")
    return _train_batched(args, cfg, seeds, run_dirs, learner, resume=False)


def _train_batched(args: argparse.Namespace, cfg: SupervisedRunConfig, seeds: list[int],
                   run_dirs: list[Path], learner: object, resume: bool) -> int:  # fmt: skip
    print_header(run_dirs[0], list(learner.methods))  # type: ignore[attr-defined]
    all_results = train_runs(cfg, seeds, run_dirs, resume=resume, prepared=learner,  # type: ignore[arg-type]
                             show_progress=not args.no_progress)  # fmt: skip
    for run_dir, results in zip(run_dirs, all_results, strict=True):
        summary = {k: v for k, v in results.items() if isinstance(v, int | float)}
        print(f"done: {json.dumps(summary)}; results in {run_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
