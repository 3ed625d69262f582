"""A report of many runs: the figures of an experiment and a table of final numbers with 95%
bootstrap intervals next to the published ones (what ``scripts/plot.py`` writes).

Without an experiment preset the figures are the defaults of the runs' kind (RL: the 2 x 2
grid of Dohare et al. 2024; supervised: the panels some run logged, the accuracy matrices and
the pruning curve when there are any) and the table has the default final numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plasticity_rl.config import load_preset
from plasticity_rl.experiments.plots import (
    RL_PANELS,
    SUPERVISED_PANELS,
    plot_accuracy_matrices,
    plot_curves,
    plot_pruning,
)
from plasticity_rl.experiments.results import (
    Group,
    Run,
    final_value,
    find_runs,
    group_runs,
    markdown_table,
)
from plasticity_rl.experiments.spec import Experiment
from plasticity_rl.registry import ConfigError, require

RL_TABLE = [
    {"name": "final return (last 10% of env steps)", "scalar": "rollout/ep_rew_mean"},
    {
        "name": "dormant fraction (policy, last hidden layer, last 10%)",
        "scalar": "plasticity/pi/hidden2/dormant_ratio",
    },
]
SUPERVISED_TABLE = [
    {"name": "average accuracy (%)", "results": "average_accuracy"},
    {"name": "online accuracy, last task (%)", "results": "online_accuracy.-1"},
    {"name": "squared error, last bin", "results": "squared_error_bins.-1"},
]
FIGURE_KINDS = ("curves", "accuracy_matrix", "pruning")


def default_figures(kind: str, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The figures drawn when no experiment names any (module doc)."""
    if kind == "rl":
        return [{"name": "rl-returns-and-health", "panels": RL_PANELS}]
    logged = {tag for run in runs for tag in run.tags()}
    panels = [p for p in SUPERVISED_PANELS if p["tag"] in logged]
    figures: list[dict[str, Any]] = []
    if panels:
        figures.append({"name": "curves", "panels": panels})
    if any(r.results and r.results.get("accuracy_matrix") for r in runs):
        figures.append({"name": "accuracy-matrices", "kind": "accuracy_matrix"})
    if any(r.pruning for r in runs):
        figures.append({"name": "pruning", "kind": "pruning"})
    return figures


def change_points(runs: Sequence[Run], kind: str) -> float | None:
    """Env steps between env changes (physics, permutations, reward targets; RL:
    ``every_env_steps``, the run's env steps over all copies), else None."""
    if kind != "rl":
        return None
    env = runs[0].config.get("env") or {}
    every = (env.get("kwargs") or {}).get("every_env_steps")
    return None if every is None else float(every)


def dataset_note(runs: Sequence[Run], experiment: Experiment | None) -> str:
    """`` [data: X, not the preset's Y]`` when the runs used another dataset than the
    experiment's stream preset (e.g. Fashion-MNIST standing in for MNIST), else ``""``."""
    if experiment is None or experiment.script != "supervised":
        return ""
    expected = load_preset("envs", experiment.env).get("dataset")
    used = {(r.config.get("stream") or {}).get("dataset") for r in runs} - {None}
    if not used or used == {expected}:
        return ""
    return f" [data: {', '.join(sorted(used))}, not the preset's {expected}]"


def table_columns(kind: str, groups: Sequence[Group], plot: Mapping[str, Any]) -> list[dict]:
    """The experiment's ``plot.table`` columns, else the defaults some run has a number for."""
    if plot.get("table"):
        return [dict(c) for c in plot["table"]]
    defaults = RL_TABLE if kind == "rl" else SUPERVISED_TABLE
    runs = [r for g in groups for r in g.runs]
    return [c for c in defaults if any(final_value(r, c) is not None for r in runs)]


def write_report(
    runs_dir: Path,
    out_dir: Path,
    experiment: Experiment | None = None,
    metrics: Sequence[str] = (),
    include_unfinished: bool = False,
) -> list[Path]:
    """Draw the figures and write ``results.md`` for the runs under ``runs_dir``.

    Args:
        runs_dir: searched recursively for run directories (``config.yaml``).
        out_dir: where the PNG/PDF figures and ``results.md`` go.
        experiment: its figures, table columns, published numbers and setting order.
        metrics: TensorBoard tags to plot instead of the experiment's figures.
        include_unfinished: also use runs whose ``status.json`` says they have not finished
            (running, interrupted, failed: :attr:`Run.unfinished`). By default they are left
            out, named on stderr and in ``results.md``, so that a table made while a sweep runs
            does not mix partial runs into its means.

    Returns:
        The files written. Runs of both kinds (RL and supervised) get one report each, in
        ``out_dir/rl`` and ``out_dir/supervised``.
    """
    runs = find_runs(runs_dir)
    require(bool(runs), "RUNS_DIR", str(runs_dir), "a directory containing run directories")
    left_out: list[Run] = []
    if not include_unfinished:
        left_out = [r for r in runs if r.unfinished]
        runs = [r for r in runs if not r.unfinished]
        allowed = (f"a directory containing finished runs (its {len(left_out)} runs are not "
                   "finished; --include-unfinished uses them)")  # fmt: skip
        require(bool(runs), "RUNS_DIR", str(runs_dir), allowed)
        for run in left_out:
            print(f"warning: left out {run.path} ({run.unfinished})", file=sys.stderr)
    kinds = sorted({r.kind for r in runs})
    if len(kinds) == 1:
        return _write_kind_report(runs, kinds[0], runs_dir, out_dir, experiment, metrics,
                                  left_out)  # fmt: skip
    written: list[Path] = []
    for kind in kinds:  # the experiment (figures, published numbers) goes to its own kind
        own = experiment if experiment is not None and experiment.script == kind else None
        of_kind = [r for r in runs if r.kind == kind]
        left_of_kind = [r for r in left_out if r.kind == kind]
        written += _write_kind_report(of_kind, kind, runs_dir, out_dir / kind, own, metrics,
                                      left_of_kind)  # fmt: skip
    return written


def _write_kind_report(runs: Sequence[Run], kind: str, runs_dir: Path, out_dir: Path,
                       experiment: Experiment | None, metrics: Sequence[str],
                       left_out: Sequence[Run]) -> list[Path]:  # fmt: skip
    """:func:`write_report` for runs of one kind."""
    groups = group_runs(runs, experiment.settings if experiment else ())
    plot_spec = experiment.plot if experiment else {}
    title = (experiment.title if experiment else f"Runs in {runs_dir}") + dataset_note(
        runs, experiment
    )
    if metrics:
        figures = [{"name": "metrics", "panels": [{"tag": t} for t in metrics]}]
    else:
        figures = list(plot_spec.get("figures") or default_figures(kind, runs))
    written: list[Path] = []
    for figure in figures:
        written += draw_figure(figure, groups, kind, title, out_dir, change_points(runs, kind))
    table_title = title + (f" ({experiment.scale} scale)" if experiment else "")
    columns = table_columns(kind, groups, plot_spec)
    table = markdown_table(
        groups, columns, experiment.published if experiment else None, table_title
    )
    if experiment:
        table += f"\nScale {experiment.scale}: {experiment.budget}\n"
    if left_out:
        names = ", ".join(f"`{r.path.name}` ({r.unfinished})" for r in left_out)
        table += f"\nLeft out, not finished ({len(left_out)} runs): {names}.\n"
    path = out_dir / "results.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    return [*written, path]


def draw_figure(
    figure: Mapping[str, Any],
    groups: Sequence[Group],
    kind: str,
    title: str,
    out_dir: Path,
    change_every: float | None,
) -> list[Path]:
    """One figure of an experiment's ``plot.figures`` (``kind``: curves, accuracy_matrix,
    pruning)."""
    figure_kind = figure.get("kind", "curves")
    require(figure_kind in FIGURE_KINDS, "plot.figures.kind", figure_kind, FIGURE_KINDS)
    stem = out_dir / str(figure.get("name", figure_kind))
    figure_title = str(figure.get("title", title))
    if figure_kind == "accuracy_matrix":
        return plot_accuracy_matrices(groups, figure_title, stem)
    if figure_kind == "pruning":
        return plot_pruning(groups, figure_title, stem)
    panels = figure.get("panels")
    if panels == "default" or panels is None:
        panels = RL_PANELS if kind == "rl" else SUPERVISED_PANELS
    if not isinstance(panels, list) or not all(isinstance(p, dict) and "tag" in p for p in panels):
        raise ConfigError("plot.figures.panels", panels, "default, or a list of {tag, ...}")
    return plot_curves(
        groups, panels, figure_title, stem, kind, int(figure.get("columns", 2)), change_every
    )
