"""Statistical parity with Dohare et al. 2024's Online Permuted MNIST code (project side only).

Runs the project's Online Permuted MNIST (``envs/online-permuted-mnist`` with the learner preset
of a setting recorded in the JSON, narrowed and shortened as the setting says) as one batched
group of seeds, and compares per task with the reference numbers recorded in
``benchmarks/results/parity/dohare2024-online-permuted-mnist.json`` (per-seed numbers of the
authors' ``lop/permuted_mnist/online_expr.py``; provenance in the ``.md`` beside it):

- online accuracy of each task (% of the task's examples predicted right before their update);
- before each task, on its first 2,000 examples: effective rank, approximate rank (99% of the
  squared singular values), srank99 (their "abs" approximate rank) of each hidden layer, and
  dead units of the whole network (count).

Writes the project's per-seed numbers into the JSON (key ``project``) and the side-by-side
table (mean and 95% Student-t CI of each side, difference of means, seeds) into the ``.md``.
Needs the real MNIST IDX files:

    python benchmarks/parity/dohare2024_online_permuted_mnist.py --data-dir DIR \
        [--setting bp] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.metrics.summary import mean_ci95
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.trainer import train_runs

RESULTS = Path(__file__).resolve().parents[1] / "results" / "parity"
NAME = "dohare2024-online-permuted-mnist"
RANKS = ("effective_rank", "approximate_rank", "srank99")
"""Our names of their ``effective_ranks``, ``approximate_ranks``, ``abs_approximate_ranks``."""


def project_config(settings: dict[str, Any], data_dir: str) -> SupervisedRunConfig:
    """The setting's learner preset, narrowed and shortened to the recorded settings."""
    width, layers = settings["num_features"], settings["num_hidden_layers"]
    return resolve(
        SupervisedRunConfig,
        {"stream": load_preset("envs", "online-permuted-mnist")},
        load_preset("agents", settings["preset"]),
        {
            "stream": {
                "kwargs": {
                    "num_tasks": settings["num_tasks"],
                    "examples_per_task": settings["examples_per_task"],
                }
            },
            "network": {"hidden_sizes": [width] * layers},
            "optimizer": {"lr": settings["step_size"]},
            "train": {"probe_size": settings["probe_size"]},
            "data_dir": data_dir,
        },
    )


def run_project(settings: dict[str, Any], data_dir: str, seeds: list[int]) -> list:
    """Per-seed numbers of the project, in the reference JSON's layout."""
    cfg = project_config(settings, data_dir)
    layers = settings["num_hidden_layers"]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"s{seed}" for seed in seeds]
        for d in dirs:
            d.mkdir()
        start = time.time()
        all_results = train_runs(cfg, seeds, dirs, show_progress=False)
        wall = round(time.time() - start, 1)
    runs = []
    for seed, results in zip(seeds, all_results, strict=True):
        before = [e for e in results["plasticity"] if e["timing"] == "before_task"]
        run: dict[str, Any] = {"seed": seed, "wall_seconds_all_seeds": wall,
                               "online_accuracy": results["online_accuracy"]}  # fmt: skip
        for metric in RANKS:
            run[metric] = [[e["metrics"][f"hidden{i + 1}/{metric}"] for i in range(layers)]
                           for e in before]  # fmt: skip
        width = settings["num_features"]
        run["dead_units"] = [
            sum(round(e["metrics"][f"hidden{i + 1}/dead_fraction"] * width) for i in range(layers))
            for e in before
        ]
        runs.append(run)
    return runs


def cell(values: list[float], digits: int) -> str:
    mean, half = mean_ci95(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def table(reference: list[dict], project: list[dict], settings: dict[str, Any]) -> list[str]:
    """Rows ``quantity | task | reference | project | difference | n``."""
    rows = ["| quantity | task | reference (mean ± 95% CI) | project (mean ± 95% CI) | "
            "project - reference | n (ref / project) |", "|---|---|---|---|---|---|"]  # fmt: skip
    n = f"{len(reference)} / {len(project)}"

    def add(name: str, task: int, ref: list[float], ours: list[float], digits: int) -> None:
        diff = mean_ci95(ours)[0] - mean_ci95(ref)[0]
        rows.append(f"| {name} | {task} | {cell(ref, digits)} | {cell(ours, digits)} | "
                    f"{diff:+.{digits}f} | {n} |")  # fmt: skip

    for t in range(settings["num_tasks"]):
        add("online accuracy (%)", t, [r["online_accuracy"][t] for r in reference],
            [r["online_accuracy"][t] for r in project], 2)  # fmt: skip
    for metric in RANKS:
        for layer in range(settings["num_hidden_layers"]):
            for t in range(settings["num_tasks"]):
                add(f"{metric}, hidden{layer + 1}, before task", t,
                    [r[metric][t][layer] for r in reference],
                    [r[metric][t][layer] for r in project], 1)  # fmt: skip
    for t in range(settings["num_tasks"]):
        add("dead units (all layers), before task", t, [r["dead_units"][t] for r in reference],
            [r["dead_units"][t] for r in project], 1)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="directory with the MNIST IDX files")
    parser.add_argument("--setting", default="bp", help="a setting recorded in the JSON")
    parser.add_argument("--runs", type=int, default=5, help="seeds 0 .. runs-1, batched")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = RESULTS / f"{NAME}.json"
    record = json.loads(path.read_text())
    setting = record["settings"][args.setting]
    record.setdefault("project", {})[args.setting] = run_project(
        setting, args.data_dir, list(range(args.runs))
    )
    record.setdefault("project_machine", {})[args.setting] = (
        f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}"
    )
    path.write_text(json.dumps(record, indent=1) + "\n")
    sections = []
    for name, settings in record["settings"].items():
        if name in record.get("project", {}) and name in record["reference"]:
            title = f"### {name} (preset `{settings['preset']}`, step {settings['step_size']})"
            rows = table(record["reference"][name], record["project"][name], settings)
            sections += [title, "", *rows, ""]
    md = RESULTS / f"{NAME}.md"
    head = md.read_text().split("<!-- table -->")[0] if md.exists() else ""
    md.write_text(head + "<!-- table -->\n\n" + "\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
