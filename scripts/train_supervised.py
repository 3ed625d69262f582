"""Train a learner on a supervised continual-learning stream and log forgetting and plasticity.

Example:
    python scripts/train_supervised.py --env split-fashion-mnist --agent hard-ash-adagrad \\
        --seed 0 --data-dir /usr/share/datasets/fashion-mnist --logdir runs/

Stream presets live in ``envs/``, learner presets in ``agents/`` (names or paths); ``--set``
overrides any field of ``plasticity_rl.supervised.config.SupervisedRunConfig``. The run writes
TensorBoard logs (``cl/``, ``plasticity/``), ``config.yaml``, ``status.json``, a checkpoint at
every task boundary and regression bin, and mid-task every ``train.checkpoint_every_steps``
(``--resume RUN_DIR`` continues from it exactly) and ``results.json`` with the final numbers.

Many seeds in one process (batched runs, any stream; not with a CNN, SDM layers, Top-K's GABA
switch or the task-boundary methods EWC, MAS, SI and replay): ``--runs 30`` trains seeds
``--seed`` ... ``--seed + 29``, ``--seeds 0,1,2`` the listed ones, as one batched network.
Each run gets its own run directory (``<env>__<agent>__s<seed>__<time>``, or
``<name>__s<seed>`` with ``--name``) with the same files a single run writes;
``--set optimizer.lr=[0.01,0.003,...]`` (SGD/SGDM) and
``method.continual_backprop.{replacement_rate,maturity_threshold}`` take one value per run.
``--resume`` continues a run as its ``config.yaml`` defines it (``--set`` only ``data_dir`` and
``train.stop_after_tasks``). ``status.json`` follows the run (running, complete, stopped,
interrupted, diverged, failed); SIGINT/SIGTERM/SIGHUP checkpoint at the next chunk end.
Exit status: 0 on success, 2 on a configuration or data error (nothing is written then),
3 when the training loss became NaN or infinite (``diverged``), 128 + the signal number when
interrupted (130, 143, 129), 1 when the disk is full.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

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
from plasticity_rl.supervised.config import SupervisedRunConfig, validate
from plasticity_rl.supervised.datasets import SOURCES, DatasetFormatError, DatasetNotFound
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
    first = 0 if args.seed is None else args.seed
    if first < 0:
        raise ConfigError("--seed", first, "an integer >= 0")
    return [first + i for i in range(runs)]


RESUME_KEYS = ("data_dir", "train.stop_after_tasks", "device")
"""What ``--set`` may change on ``--resume``: where the data is, where to pause, the device."""
STOPPED = (Interrupted, Diverged, DiskFull, ConfigError)


def main(argv: list[str] | None = None) -> int:
    parser = common_parser(__doc__.split("\n\n")[0], "stream preset name (envs/*.yaml) or path",
                           resume_runs=True)  # fmt: skip
    parser.add_argument("--data-dir", help="directory with the dataset files")
    parser.add_argument("--runs", type=int, help="train this many seeds (from --seed) batched")
    parser.add_argument("--seeds", help="train these comma-separated seeds batched, e.g. 0,1,2")
    args = parser.parse_args(argv)
    check_required(parser, args)
    overrides = [*args.overrides, *device_override(args)]
    if args.data_dir is not None:
        overrides.append(f"data_dir={args.data_dir}")
    resume_dirs: list[Path] = args.resume or []
    args.resume = resume_dirs[0] if len(resume_dirs) == 1 else None  # one run: as before
    try:
        check_logdir(args.logdir)
        if len(resume_dirs) > 1:
            return _resume_batched(args, resume_dirs, overrides)
        seeds = run_seeds(args)
        if args.resume is not None and (len(seeds) > 1 or args.seeds is not None):
            raise ConfigError("--resume", str(args.resume), "not with --runs or --seeds (give "
                              "the run directories of a batched group to --resume)")  # fmt: skip
        cfg = resolve_run_config(SupervisedRunConfig, args, "stream", overrides, RESUME_KEYS)
        validate(cfg)
        if args.resume is not None:
            seeds = [cfg.seed]  # the run's own seed, from its config.yaml
        if len(seeds) > 1:
            check_memory(cfg, seeds)
            learner = build_batched_learner(cfg, seeds)
        else:
            cfg = run_configs(cfg, seeds)[0]  # picks a one-element per-run list
            stream = build_stream(cfg)
            model, optimizer, methods = build_learner(cfg, stream)
    except (ConfigError, DatasetNotFound, DatasetFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(seeds) > 1:
        return _main_batched(args, cfg, seeds, learner)
    try:
        run_dir = run_directory(args, cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_header(run_dir, list(methods))
    try:
        results = train(
            cfg,
            run_dir,
            resume=args.resume is not None,
            show_progress=not args.no_progress,
            prepared=(stream, model, optimizer, methods),
        )
    except STOPPED as err:
        return report_stop(err, run_dir)
    report_done(run_dir, results)
    return 0


def report_done(run_dir: Path, results: dict) -> None:
    """``done: {numbers}; results in ...``, or how to continue a run stopped after N tasks."""
    if "stopped_after_tasks" in results:
        print(f"stopped after {results['stopped_after_tasks']} tasks (checkpoint saved); "
              f"continue with --resume {run_dir}")  # fmt: skip
        return
    summary = {k: v for k, v in results.items() if isinstance(v, int | float)}
    print(f"done: {json.dumps(summary)}; results in {run_dir / 'results.json'}")


def check_memory(cfg: SupervisedRunConfig, seeds: list[int]) -> None:
    """Refuse a batched run whose networks would not fit in memory, with the estimate.

    The estimate counts, per run, the MLP's parameters times 6 (weights, gradients, two
    optimiser moments, method statistics, a checkpoint copy) in float32, against the machine's
    available memory (``/proc/meminfo``; no check where it cannot be read).
    """
    available = _available_bytes()
    if available is None:
        return
    source = SOURCES.get(cfg.stream.dataset or "")
    inputs, outputs = (784, 10) if source is None else (math.prod(source.image_shape),
                                                        source.num_classes)  # fmt: skip
    sizes = [inputs, *cfg.network.hidden_sizes, outputs]  # generated streams: MNIST-sized
    params = sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))
    needed = 6 * 4 * params * len(seeds)
    if needed > 0.8 * available:
        raise ConfigError("--runs", len(seeds), f"at most {int(0.8 * available // (24 * params))}"
                          f" runs of this network here (estimate {needed / 2**30:.1f} GiB for "
                          f"{len(seeds)}; {available / 2**30:.1f} GiB available)")  # fmt: skip


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _resume_batched(args: argparse.Namespace, run_dirs: list[Path], overrides: list[str]) -> int:
    """``--resume DIR DIR ...``: continue the runs of one batched group, batched."""
    cfgs = []
    for run_dir in run_dirs:
        run_args = argparse.Namespace(**{**vars(args), "resume": run_dir})
        cfgs.append(resolve_run_config(SupervisedRunConfig, run_args, "stream", overrides,
                                       RESUME_KEYS))  # fmt: skip
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
    named = [argparse.Namespace(**{**vars(args), "name": None if args.name is None else
                                   f"{args.name}__s{run_cfg.seed}"})
             for run_cfg in learner.cfgs]  # type: ignore[attr-defined]  # fmt: skip
    try:
        for run_args in named:  # every name is checked before any directory is made
            if run_args.name is not None and (run_args.logdir / run_args.name).exists():
                raise ConfigError("--name", run_args.name, f"a name not yet used in "
                                  f"{run_args.logdir}")  # fmt: skip
        for run_args, run_cfg in zip(named, learner.cfgs, strict=True):  # type: ignore[attr-defined]
            run_dirs.append(run_directory(run_args, run_cfg))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(seeds)} batched runs (seeds {seeds}) in {args.logdir}:")
    for run_dir in run_dirs:
        print(f"  {run_dir}")
    return _train_batched(args, cfg, seeds, run_dirs, learner, resume=False)


def _train_batched(args: argparse.Namespace, cfg: SupervisedRunConfig, seeds: list[int],
                   run_dirs: list[Path], learner: object, resume: bool) -> int:  # fmt: skip
    print_header(run_dirs[0], list(learner.methods))  # type: ignore[attr-defined]
    try:
        all_results = train_runs(cfg, seeds, run_dirs, resume=resume, prepared=learner,  # type: ignore[arg-type]
                                 show_progress=not args.no_progress)  # fmt: skip
    except Diverged as err:
        for run_dir in run_dirs:
            results = json.loads((run_dir / "results.json").read_text())
            if results.get("status") == "diverged":
                print(f"diverged: the training loss became NaN or infinite at step "
                      f"{results['diverged_at_step']}; {run_dir / 'status.json'} says "
                      "diverged", file=sys.stderr)  # fmt: skip
            else:
                report_done(run_dir, results)
        return err.exit_code
    except STOPPED as err:
        return report_stop(err, run_dirs[0].parent)
    for run_dir, results in zip(run_dirs, all_results, strict=True):
        report_done(run_dir, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
