"""Run an experiment preset's grid of trials (methods x settings x seeds), on Ray or locally.

Example:
    python scripts/sweep.py dohare2024-rl-hopper --scale small --logdir runs/sweeps
    python scripts/sweep.py keskinen2024-split-mnist --data-dir mnist=/data/mnist --dry-run
    python scripts/sweep.py bricken2023-split-fashion-mnist --executor local \\
        --data-dir /usr/share/datasets/fashion-mnist

Experiments are names of files in ``experiments/`` (or paths). Each run is an ordinary run of
``train_rl.py`` / ``train_supervised.py`` in ``<logdir>/<scale>/<experiment>/<setting>__s<seed>``
(its output in ``trial.log`` there). A trial is one script call: one run, or, for supervised
settings whose config the trainer can batch, all seeds of the setting as one batched network
(``train_supervised.py --seeds 0,1,2 --name <experiment>/<setting>``, the same run
directories); ``--no-batch`` runs every seed alone. A restarted sweep skips finished runs,
resumes unfinished ones from their checkpoint and restarts the others (the unfinished runs of a
batched setting are resumed together if all have a checkpoint, else restarted together).
``--executor ray`` (default) needs the sweep extra (``pip install -e ".[sweep]"``): without
``--address`` it starts a local Ray with one trial per core; with one it uses that cluster.
``--executor local`` runs the trials one after another in this process. Exit status: 0 if no
trial failed, 1 otherwise, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plasticity_rl.experiments.runner import (
    parse_data_dirs,
    plan,
    run_local,
    run_ray,
    summary,
)
from plasticity_rl.experiments.spec import SCALES, experiment_names, load_experiment
from plasticity_rl.registry import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help=f"experiment preset: {', '.join(experiment_names())}")
    parser.add_argument("--scale", choices=SCALES, default="small")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray")
    parser.add_argument("--address", help="Ray cluster address (auto, host:port, ray://...)")
    parser.add_argument("--max-concurrent", type=int, help="most trials at once (default: cores)")
    parser.add_argument("--logdir", type=Path, default=Path("runs/sweeps"))
    parser.add_argument(
        "--data-dir",
        action="append",
        default=[],
        metavar="[DATASET=]DIR",
        help="dataset directory for supervised trials, for all datasets or one (repeatable)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field in every trial (repeatable)",
    )
    parser.add_argument("--only", help="run only the runs whose name contains this text")
    parser.add_argument(
        "--no-batch", action="store_true", help="one trial per seed (no batched supervised runs)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the trials, run nothing")
    args = parser.parse_args(argv)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        parser.error("--max-concurrent must be >= 1")
    try:
        experiment = load_experiment(args.experiment, args.scale)
        trials = [t for t in experiment.trials if not args.only or args.only in t.run_name]
        logdir = args.logdir / args.scale
        data_dirs = parse_data_dirs(args.data_dir)
        jobs, settled = plan(
            experiment, logdir, args.overrides, data_dirs, trials, batch=not args.no_batch
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{experiment.title}\nscale {experiment.scale}: {experiment.budget}")
    batched = [job for job in jobs if job.batched]
    print(
        f"{len(trials)} runs in {logdir.resolve() / experiment.name}: "
        f"{sum(len(job.run_dirs) for job in jobs)} to run in {len(jobs)} "
        f"trial{'' if len(jobs) == 1 else 's'} "
        f"({len(batched)} batched), {len(settled)} settled"
    )
    for note in dict.fromkeys(job.note for job in jobs if job.note):
        print(f"  note: {note}")
    if args.dry_run:
        for job in jobs:
            print(f"  [{job.action}] {job.name}\n      {job.command_line()}")
        for outcome in settled:
            print(f"  [{outcome.status}] {outcome.name} {outcome.message}")
        return 0
    from plasticity_rl.experiments.spec import write_agent_preset

    preset_dir = logdir.resolve() / experiment.name / "presets"
    for trial in trials:
        write_agent_preset(trial, preset_dir)
    try:
        if args.executor == "local":
            results = run_local(jobs)
        else:
            results = run_ray(jobs, args.address, args.max_concurrent)
        outcomes = list(settled)
        for outcome in results:
            print(f"  {outcome.status}: {outcome.name} ({outcome.seconds:.0f} s)", flush=True)
            outcomes.append(outcome)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the sweep stopped (the running trial checkpointed); run the same "
              "command again to resume", file=sys.stderr)  # fmt: skip
        return 130
    print(summary(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
