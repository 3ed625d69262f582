"""Read many runs (TensorBoard scalars, ``results.json``, ``pruning.json``), group them by
setting, align their curves across seeds and summarise them with bootstrap confidence intervals.

Grouping: runs whose ``config.yaml`` are equal except for ``seed`` and ``data_dir`` are seeds of
one setting. A group is labelled with its runs' directory name without ``__s<seed>`` when they
share one that no other group has (the setting names of ``scripts/sweep.py``), else with its
agent preset's name plus the config keys whose values differ from the other groups of that
preset.

Alignment: curves of one group are used on their own steps when every seed logged the same
steps; otherwise they are linearly interpolated onto ``ALIGN_POINTS`` equally spaced steps
spanning the range every seed covers (from the largest first step to the smallest last step;
nothing is extrapolated). With ``x="tasks"`` the k-th logged value is put at task k (1-based),
for scalars logged once per task (``cl/online_accuracy``, ``cl/average_accuracy_seen``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from plasticity_rl.config import fill_defaults, load_yaml
from plasticity_rl.metrics.summary import bootstrap_ci
from plasticity_rl.registry import ConfigError, require
from plasticity_rl.rundir import FINISHED_STATES

ALIGN_POINTS = 500
GROUPING_IGNORED_KEYS = ("seed", "data_dir")
CURVE_RESAMPLES = 2_000
"""Bootstrap resamples per point of a curve (the table uses 10,000)."""
_SEED_SUFFIX = re.compile(r"^(?P<setting>.+)__s(?P<seed>\d+)$")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


@dataclass
class Run:
    """One run directory: its config, final results and (lazily) its TensorBoard scalars."""

    path: Path
    config: dict[str, Any]
    results: dict[str, Any] | None = None
    pruning: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    """``status.json`` (RL runs keep their ``wall_seconds`` there; they write no results)."""

    @property
    def kind(self) -> str:
        """``rl`` (the config has a ``ppo`` section) or ``supervised``."""
        return "rl" if "ppo" in self.config else "supervised"

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def unfinished(self) -> str | None:
        """Why the run is not finished, from its ``status.json`` (``"running at 301,056 env
        steps"``); None when it is: complete or diverged, ``results.json`` written, or no
        status at all (runs made before ``status.json`` existed count as finished)."""
        if self.results is not None or self.status is None:
            return None
        state = self.status.get("state")
        if state in FINISHED_STATES:
            return None
        steps = self.status.get("env_steps", self.status.get("step"))
        unit = "env steps" if "env_steps" in self.status else "steps"
        return f"{state}" + (f" at {steps:,} {unit}" if isinstance(steps, int) else "")

    @cached_property
    def _events(self) -> Any:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(self.path), size_guidance={"scalars": 0})
        events.Reload()
        return events

    def tags(self) -> list[str]:
        """The scalar tags the run logged."""
        return list(self._events.Tags()["scalars"])

    def scalars(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of a scalar tag, sorted by step, the last value kept for a step
        logged twice (a resumed run); empty arrays if the tag is missing."""
        if tag not in self.tags():
            return np.zeros(0), np.zeros(0)
        points = {e.step: e.value for e in self._events.Scalars(tag)}
        steps = np.array(sorted(points), dtype=np.float64)
        return steps, np.array([points[s] for s in sorted(points)], dtype=np.float64)


def find_runs(root: Path) -> list[Run]:
    """Every run directory (holding ``config.yaml``) under ``root``, sorted by path. A run
    whose ``config.yaml``, ``results.json`` or ``pruning.json`` cannot be read is skipped with
    a warning naming the file (one broken run does not cost the report). A config gets the
    schema's default for each field it lacks (:func:`~plasticity_rl.config.fill_defaults`), so
    runs made before a field existed group with newer runs of the same setting."""
    runs = []
    for config_path in sorted(Path(root).rglob("config.yaml")):
        path = config_path.parent
        try:
            config = load_yaml(config_path)
            if not isinstance(config, dict):
                raise ConfigError(str(config_path), type(config).__name__, "a YAML mapping")
            config = fill_defaults(config, _schema(config))
            files = [_read_json(path / name) for name in ("results.json", "pruning.json",
                                                          "status.json")]  # fmt: skip
            run = Run(path, config, *files)
        except ConfigError as err:
            print(f"warning: skipped run {path}: {err}", file=sys.stderr)
            continue
        runs.append(run)
    return runs


def _schema(config: Mapping[str, Any]) -> type:
    """The run config class of a saved config (an RL run's has a ``ppo`` section)."""
    if "ppo" in config:
        from plasticity_rl.agents.config import RLRunConfig

        return RLRunConfig
    from plasticity_rl.supervised.config import SupervisedRunConfig

    return SupervisedRunConfig


def _read_json(path: Path) -> dict[str, Any] | None:
    """A run's JSON file (None if there is none); ``ConfigError`` if it is not a JSON object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(str(path), "unreadable JSON", f"a JSON object ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), type(data).__name__, "a JSON object")
    return data


@dataclass
class Group:
    """The seeds of one setting."""

    label: str
    runs: list[Run] = field(default_factory=list)


def group_runs(runs: Sequence[Run], order: Sequence[str] = ()) -> list[Group]:
    """Group runs by config (seed aside) and label the groups (module doc).

    Groups whose label is in ``order`` come first, in that order; the others follow sorted.
    """
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(_grouping_key(run), []).append(run)
    groups = [
        Group(_setting_name(rs) or "", sorted(rs, key=lambda r: r.seed)) for rs in by_key.values()
    ]
    names = [g.label for g in groups]
    _label_by_config([g for g in groups if not g.label or names.count(g.label) > 1])
    rank = {name: i for i, name in enumerate(order)}
    return sorted(groups, key=lambda g: (rank.get(g.label, len(rank)), g.label))


def _grouping_key(run: Run) -> str:
    config = {k: v for k, v in run.config.items() if k not in GROUPING_IGNORED_KEYS}
    return json.dumps(config, sort_keys=True, default=str)


def _setting_name(runs: Sequence[Run]) -> str | None:
    matches = [_SEED_SUFFIX.match(r.path.name) for r in runs]
    names = {m["setting"] for m in matches if m is not None}
    return names.pop() if len(names) == 1 and all(matches) else None


def _label_by_config(groups: Sequence[Group]) -> None:
    """Label: agent preset's name, plus ``key=value`` for keys that differ within that preset."""
    by_agent: dict[str, list[Group]] = {}
    for group in groups:
        agent = Path(str(group.runs[0].config.get("agent_preset", "run"))).stem or "run"
        by_agent.setdefault(agent, []).append(group)
    for agent, members in by_agent.items():
        flat = [flatten(_without_ignored(g.runs[0].config)) for g in members]
        keys = sorted({k for f in flat for k in f if any(f.get(k) != o.get(k) for o in flat)})
        for group, values in zip(members, flat, strict=True):
            details = ", ".join(f"{k}={values.get(k)}" for k in keys)
            group.label = f"{agent} ({details})" if details else agent


def _without_ignored(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in GROUPING_IGNORED_KEYS}


def align(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Curves of several seeds on common steps: ``(steps, values[n_seeds, n_steps])``.

    Identical step arrays are kept; otherwise linear interpolation onto ``ALIGN_POINTS``
    equally spaced steps over the range all curves cover (module doc). Empty curves are dropped.
    """
    curves = [(s, v) for s, v in curves if len(s)]
    if not curves:
        return np.zeros(0), np.zeros((0, 0))
    first = curves[0][0]
    if all(len(s) == len(first) and np.array_equal(s, first) for s, _ in curves):
        return first, np.stack([v for _, v in curves])
    low, high = max(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
    if low > high:
        return np.zeros(0), np.zeros((len(curves), 0))
    steps = np.linspace(low, high, ALIGN_POINTS) if high > low else np.array([low])
    return steps, np.stack([np.interp(steps, s, v) for s, v in curves])


@dataclass
class Band:
    """Mean across seeds with its 95% bootstrap interval, on common x values."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: int


def curve_band(group: Group, tag: str, x: str = "steps") -> Band | None:
    """The group's mean curve of ``tag`` with a 95% bootstrap band across seeds (None if no
    run logged the tag). ``x`` is ``steps`` or ``tasks`` (module doc)."""
    curves = []
    for run in group.runs:
        steps, values = run.scalars(tag)
        if x == "tasks":
            steps = np.arange(1, len(values) + 1, dtype=np.float64)
        curves.append((steps, values))
    steps, values = align(curves)
    if values.size == 0:
        return None
    mean, low, high = bootstrap_ci(values, num_resamples=CURVE_RESAMPLES)
    return Band(steps, mean, low, high, len(values))


def lookup(tree: Any, path: str) -> Any:
    """``lookup(results, "stability_gap.task0_during_task2.gap_depth")``; integer parts index
    lists (``online_accuracy.-1`` is the last task). None if anything is missing."""
    node = tree
    for part in path.split("."):
        if isinstance(node, list) and re.fullmatch(r"-?\d+", part):
            index = int(part)
            node = node[index] if -len(node) <= index < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


LIST_REDUCERS: dict[str, Callable[[list[float]], float]] = {"mean": np.mean, "max": max, "min": min}
"""How a table column reduces a list in ``results.json`` (e.g. online accuracy per task)."""


def final_value(run: Run, column: Mapping[str, Any]) -> float | None:
    """One table column's number for one run.

    ``column`` has ``results: <dotted path>`` (into ``results.json``; a list is reduced by
    ``reduce``, one of :data:`LIST_REDUCERS` (default ``mean``), over its ``first: N`` or
    ``last: N`` items (default all), unless the path indexes it), or ``scalar: <tag>`` with
    ``last_fraction`` (default 0.1: the mean of the values logged in the last 10% of the run's
    steps) or ``steps: [from, to]`` (the mean of the values logged in that window of steps,
    ends included), or ``pruning: <fraction>`` (the average accuracy after pruning that
    fraction, from ``pruning.json``), or ``status: <dotted path>`` (into ``status.json``).
    """
    if "status" in column:
        value = lookup(run.status or {}, str(column["status"]))
        return None if value is None else float(value)
    if "results" in column:
        value = lookup(run.results or {}, str(column["results"]))
        if isinstance(value, list):
            reduce = str(column.get("reduce", "mean"))
            require(reduce in LIST_REDUCERS, "table.reduce", reduce, sorted(LIST_REDUCERS))
            numbers = [v for v in value if isinstance(v, int | float)]
            if "first" in column:
                numbers = numbers[: int(column["first"])]
            if "last" in column:
                numbers = numbers[-int(column["last"]) :]
            value = float(LIST_REDUCERS[reduce](numbers)) if numbers else None
        return None if value is None else float(value)
    if "scalar" in column:
        steps, values = run.scalars(str(column["scalar"]))
        if "steps" in column:  # a window [from, to] of steps
            low, high = (float(v) for v in column["steps"])
            inside = (steps >= low) & (steps <= high)
            return float(values[inside].mean()) if inside.any() else None
        if not len(steps):
            return None
        start = steps[-1] - float(column.get("last_fraction", 0.1)) * (steps[-1] - steps[0])
        return float(values[steps >= start].mean())
    if "pruning" in column:
        pruning = run.pruning or {}
        fractions = [round(f, 9) for f in pruning.get("fractions", [])]
        target = round(float(column["pruning"]), 9)
        return pruning["average_accuracy"][fractions.index(target)] if target in fractions else None
    raise ValueError(f"table column {dict(column)}: needs results, scalar, pruning or status")


def expand_per_task(column: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A scalar column with ``per_task: {every_steps: T, tasks: N, last_fraction: f}`` as N
    columns ``"<name>, task k"``, each the mean over the last fraction f (default 0.2) of task
    k's steps ``[(k - 1) T, k T]`` (e.g. the return at the end of each task of a shifting env);
    any other column as it is."""
    spec = column.get("per_task")
    if spec is None:
        return [dict(column)]
    every, tasks = int(spec["every_steps"]), int(spec["tasks"])
    fraction = float(spec.get("last_fraction", 0.2))
    require(every > 0 and tasks > 0 and 0 < fraction <= 1, "table.per_task", dict(spec),
            "every_steps > 0, tasks > 0, 0 < last_fraction <= 1")  # fmt: skip
    base = {k: v for k, v in column.items() if k not in ("per_task", "name")}
    name = column["name"]
    windows = [((k - fraction) * every, k * every) for k in range(1, tasks + 1)]
    return [{**base, "name": f"{name}, task {k}", "steps": list(window)}
            for k, window in enumerate(windows, start=1)]  # fmt: skip


def summarise(group: Group, column: Mapping[str, Any]) -> tuple[float, float, float, int] | None:
    """``(mean, low, high, seeds)`` of a column over the group's seeds (None if no run has it)."""
    values = [v for v in (final_value(r, column) for r in group.runs) if v is not None]
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return None
    mean, low, high = bootstrap_ci(values)
    return float(mean), float(low), float(high), len(values)


def format_estimate(estimate: tuple[float, float, float, int] | None) -> str:
    """``"76.40 [75.10, 77.80]"`` (mean [95% CI]); one seed has no interval."""
    if estimate is None:
        return "n/a"
    mean, low, high, seeds = estimate
    if seeds < 2:
        return f"{mean:.4g} (1 seed)"
    return f"{mean:.4g} [{low:.4g}, {high:.4g}]"


def published_value(published: Mapping[str, Any], label: str, column: str) -> str:
    """The published number for a setting: ``values[label]`` (a value, or ``{column: value}``)."""
    value = (published.get("values") or {}).get(label)
    if isinstance(value, dict):
        value = value.get(column)
    return "" if value is None else str(value)


def markdown_table(
    groups: Sequence[Group],
    columns: Sequence[Mapping[str, Any]],
    published: Mapping[str, Any] | None = None,
    title: str = "",
) -> str:
    """Final numbers per setting (mean [95% bootstrap CI] over seeds) next to the published ones.

    Each column is a :func:`final_value` spec with a ``name`` (its header, with the unit), or a
    ``per_task`` spec (:func:`expand_per_task`); a column gets a ``published:`` neighbour when
    the experiment has a published value for it.
    """
    published = published or {}
    columns = [expanded for column in columns for expanded in expand_per_task(column)]
    names = [str(c["name"]) for c in columns]
    with_published = {
        n for n in names if any(published_value(published, g.label, n) for g in groups)
    }
    header = ["setting", "seeds"]
    for name in names:
        header += [name, f"published: {name}"] if name in with_published else [name]
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        row = [group.label, str(len(group.runs))]
        for column, name in zip(columns, names, strict=True):
            row.append(format_estimate(summarise(group, column)))
            if name in with_published:
                row.append(published_value(published, group.label, name) or "-")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Mean over seeds with a 95% percentile-bootstrap interval [low, high] "
        "(10,000 resamples of the seeds).",
    ]
    diverged = [f"{group.label} seed {run.seed} at step {run.results['diverged_at_step']:,}"
                for group in groups for run in group.runs
                if (run.results or {}).get("diverged_at_step") is not None]  # fmt: skip
    if diverged:
        lines.append("Diverged (training loss NaN or infinite; no final numbers, left out): "
                     + "; ".join(diverged) + ".")  # fmt: skip
    if published.get("source"):
        lines.append(f"Published: {published['source']}")
    lines += [f"- {note}" for note in published.get("notes") or []]
    return "\n".join(lines) + "\n"
