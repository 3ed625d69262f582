"""Figures of grouped runs: mean curves with 95% bootstrap bands, accuracy matrices, pruning.

Layouts follow the seed papers' figures: RL (Dohare et al. 2024, Fig. 3/4) is a 2 x 2 grid of
return, srank, dormant units and weight magnitude against env steps; supervised runs plot
accuracy or online accuracy per task, squared error against examples, the accuracy matrix of
each setting, and accuracy against the fraction of weights pruned. Every figure is written as
PNG and PDF. matplotlib is an optional extra: ``pip install -e ".[plot]"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plasticity_rl.experiments.results import Group, curve_band
from plasticity_rl.metrics.summary import bootstrap_ci
from plasticity_rl.registry import ConfigError

RL_PANELS: list[dict[str, Any]] = [
    {"tag": "rollout/ep_rew_mean", "title": "Return", "ylabel": "mean episode return"},
    {
        "tag": "plasticity/pi/hidden2/srank99",
        "title": "srank: 99% singular-value mass (policy, last hidden layer)",
        "ylabel": "srank (units)",
    },
    {
        "tag": "plasticity/pi/hidden2/dormant_ratio",
        "title": "Dormant units (policy, last hidden layer)",
        "ylabel": "fraction of units",
    },
    {
        "tag": "plasticity/pi/weight_magnitude",
        "title": "Weight magnitude (policy)",
        "ylabel": "mean |w|",
    },
]
"""Dohare et al. 2024, Fig. 3/4 layout (policy network)."""

SUPERVISED_PANELS: list[dict[str, Any]] = [
    {
        "tag": "cl/online_accuracy",
        "title": "Online accuracy per task",
        "ylabel": "accuracy (%)",
        "x": "tasks",
    },
    {
        "tag": "cl/average_accuracy_seen",
        "title": "Average accuracy on the tasks seen",
        "ylabel": "accuracy (%)",
        "x": "tasks",
    },
    {
        "tag": "cl/squared_error",
        "title": "Squared error",
        "ylabel": "mean squared error per bin",
        "xlabel": "examples",
    },
    {
        "tag": "cl/eval/task0",
        "title": "Task 1 accuracy during training (continual evaluation)",
        "ylabel": "accuracy (%)",
    },
    {
        "tag": "plasticity/net/hidden1/dormant_ratio",
        "title": "Dormant units (first hidden layer)",
        "ylabel": "fraction of units",
    },
    {"tag": "plasticity/net/weight_magnitude", "title": "Weight magnitude", "ylabel": "mean |w|"},
]
"""The supervised panels drawn when an experiment names none (those some run logged)."""

X_LABELS = {"rl": "env steps", "supervised": "optimiser steps", "tasks": "tasks"}


def pyplot() -> Any:
    """matplotlib's pyplot with a file-only backend, or a clear error if it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plot", "matplotlib", 'matplotlib installed: pip install -e ".[plot]"'
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colors(count: int) -> list[Any]:
    """Distinct colours for ``count`` groups (tab10, or tab20 beyond 10)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def save(fig: Any, path_stem: Path) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf``; close the figure."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    pyplot().close(fig)
    return paths


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def plot_curves(
    groups: Sequence[Group],
    panels: Sequence[Mapping[str, Any]],
    title: str,
    path_stem: Path,
    kind: str = "supervised",
    columns: int = 2,
    change_every: float | None = None,
) -> list[Path]:
    """One panel per tag: each group's mean across seeds and its 95% bootstrap band.

    Args:
        groups: the settings to compare.
        panels: ``{tag, title, ylabel, x ("steps" | "tasks"), xlabel}`` each.
        title: the figure title.
        path_stem: output path without suffix.
        kind: ``rl`` or ``supervised`` (the default x-axis label).
        columns: panels per row.
        change_every: draw a dotted line every this many x units (e.g. env steps between
            friction changes); None for none.
    """
    plt = pyplot()
    from matplotlib.ticker import EngFormatter, MaxNLocator

    rows, cols = _grid(len(panels), columns)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    palette = colors(len(groups))
    seeds = sorted({len(g.runs) for g in groups})
    for ax, panel in zip(axes.flat, panels, strict=False):
        x_kind = panel.get("x", "steps")
        drawn = 0
        for group, color in zip(groups, palette, strict=True):
            band = curve_band(group, str(panel["tag"]), x_kind)
            if band is None:
                continue
            marker = "o" if len(band.x) <= 30 else None  # per-task points stay visible
            label = f"{group.label} (n={band.seeds})"
            ax.plot(band.x, band.mean, color=color, lw=1.5, marker=marker, ms=3, label=label)
            if band.seeds > 1:
                ax.fill_between(band.x, band.low, band.high, color=color, alpha=0.2, lw=0)
            drawn += 1
        if change_every and x_kind == "steps":
            for x in np.arange(change_every, ax.get_xlim()[1], change_every)[:100]:
                ax.axvline(x, color="0.6", lw=0.6, ls=":", zorder=0)
        ax.set_title(str(panel.get("title", panel["tag"])), fontsize=10)
        if x_kind == "steps":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 300000 -> 300k
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # task 1, 2, ...
        default_x = X_LABELS["tasks"] if x_kind == "tasks" else X_LABELS[kind]
        ax.set_xlabel(str(panel.get("xlabel", default_x)))
        ax.set_ylabel(str(panel.get("ylabel", panel["tag"])))
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(
                0.5,
                0.5,
                f"no run logged\n{panel['tag']}",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="0.4",
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:
        if len(ax.get_legend_handles_labels()[0]) > len(handles):
            handles, labels = ax.get_legend_handles_labels()
    note = "lines: mean over seeds; bands: 95% bootstrap CI"
    if change_every:
        note += f"; dotted: env changes (every {change_every:,.0f} steps)"
    seeds_text = "/".join(str(s) for s in seeds)
    fig.suptitle(f"{title}\n({note}; seeds per setting: {seeds_text})", fontsize=11)
    fig.tight_layout()
    if handles:  # below the panels (and their x labels); the saved figure extends to hold it
        fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), fontsize=8,
                   bbox_to_anchor=(0.5, 0.0), frameon=False)  # fmt: skip
    return save(fig, path_stem)


def plot_accuracy_matrices(groups: Sequence[Group], title: str, path_stem: Path) -> list[Path]:
    """Each group's accuracy matrix, averaged over seeds: row i = after training task i,
    column j = test accuracy (%) on task j (``results.json``'s ``accuracy_matrix``)."""
    plt = pyplot()
    matrices = []
    for group in groups:
        stack = [
            r.results["accuracy_matrix"]
            for r in group.runs
            if r.results and r.results.get("accuracy_matrix")
        ]
        if stack:
            matrices.append((group, np.mean(np.array(stack, dtype=float), axis=0), len(stack)))
    if not matrices:
        return []
    rows, cols = _grid(len(matrices), math.ceil(math.sqrt(len(matrices))))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (group, matrix, seeds) in zip(axes.flat, matrices, strict=False):
        image = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        size = matrix.shape[0]
        if size <= 10:
            for i in range(matrix.shape[0]):
                for j in range(matrix.shape[1]):
                    ax.text(
                        j,
                        i,
                        f"{matrix[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if matrix[i, j] < 60 else "black",
                    )
        ticks = np.arange(0, size, max(1, size // 10))
        ax.set_xticks(ticks, [str(t + 1) for t in ticks])
        ax.set_yticks(ticks, [str(t + 1) for t in ticks])
        ax.set_title(f"{group.label} (n={seeds})", fontsize=9)
    for ax in axes.flat:
        ax.set_xlabel("evaluated on task")
    for ax in axes[:, 0]:
        ax.set_ylabel("after training task")
    for ax in list(axes.flat)[len(matrices) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="test accuracy (%)")
    fig.suptitle(f"{title}\n(accuracy matrix, mean over seeds)", fontsize=11)
    return save(fig, path_stem)


def plot_pruning(groups: Sequence[Group], title: str, path_stem: Path) -> list[Path]:
    """Average test accuracy against the fraction of weights pruned by magnitude
    (``pruning.json``), mean over seeds with a 95% bootstrap band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for group, color in zip(groups, colors(len(groups)), strict=True):
        results = [r.pruning for r in group.runs if r.pruning]
        if not results:
            continue
        fractions = np.array(results[0]["fractions"]) * 100.0
        values = np.array([r["average_accuracy"] for r in results], dtype=float)
        mean, low, high = bootstrap_ci(values)
        ax.plot(
            fractions,
            mean,
            marker="o",
            ms=3,
            color=color,
            label=f"{group.label} (n={len(results)})",
        )
        if len(results) > 1:
            ax.fill_between(fractions, low, high, color=color, alpha=0.2, lw=0)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xlabel("weights pruned by magnitude (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\n(mean over seeds, 95% bootstrap CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path_stem)
