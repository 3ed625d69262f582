"""Plot many runs (mean and 95% bootstrap band across seeds) and tabulate their final numbers.

Example:
    python scripts/plot.py runs/sweeps/small/dohare2024-rl-hopper \\
        --experiment dohare2024-rl-hopper --out reports/hopper-small
    python scripts/plot.py runs/ --metric rollout/ep_rew_mean --metric env/friction

Reads every run directory under RUNS_DIR (TensorBoard events, ``config.yaml``,
``results.json``, ``pruning.json``), groups the seeds of each setting, and writes PNG and PDF
figures and ``results.md`` (final numbers with 95% bootstrap intervals, next to the published
ones of ``--experiment``) into ``--out`` (into ``--out``/rl and ``--out``/supervised when RUNS_DIR
holds both kinds). A run whose ``config.yaml`` or ``results.json`` is broken is skipped with a
warning naming the file; a run whose ``status.json`` says it has not finished (running,
interrupted, failed) is left out and named, unless ``--include-unfinished``. Needs the plot
extra: ``pip install -e ".[plot]"``.
Exit status: 0 on success, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plasticity_rl.experiments.report import write_report
from plasticity_rl.experiments.spec import SCALES, load_experiment
from plasticity_rl.registry import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR")
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="TAG",
        help="TensorBoard tag to plot (repeatable); default: the experiment's",
    )
    parser.add_argument("--experiment", help="experiment preset: figures, table, published numbers")
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="small",
        help="the experiment's scale the runs were made at (for the table)",
    )
    parser.add_argument("--out", type=Path, help="output directory (default: RUNS_DIR/report)")
    parser.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also use runs whose status.json says they have not finished (left out and named "
        "by default)",
    )
    args = parser.parse_args(argv)
    out = args.out or args.runs_dir / "report"
    try:
        experiment = load_experiment(args.experiment, args.scale) if args.experiment else None
        written = write_report(args.runs_dir, out, experiment, args.metric, args.include_unfinished)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    for path in written:
        if path.name == "results.md":
            print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
