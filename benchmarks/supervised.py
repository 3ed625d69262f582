"""Supervised fidelity benchmark: Split Fashion-MNIST and the slowly-changing regression.

1. Split Fashion-MNIST, class-incremental (5 tasks of 2 classes, one 10-way head), one epoch
   per task, ``relu-adam`` vs ``topk-adagrad`` vs ``hard-ash-adagrad``: final accuracy over all
   10 classes (the mean of the per-task test accuracies, equal-sized test sets), mean and 95% CI
   over seeds. Compare with Keskinen 2024's Split MNIST table.
2. Slowly-changing regression (Dohare et al. 2024): ``regression-bp`` (ReLU, SGD 0.01) vs
   ``regression-cbp`` over 1M examples, squared error per 20,000-example bin.

Needs the real Fashion-MNIST files (Debian: ``apt-get install dataset-fashion-mnist``).

    python benchmarks/supervised.py [--data-dir /usr/share/datasets/fashion-mnist] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.metrics.summary import mean_ci95
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.trainer import train

RESULTS = Path(__file__).parent / "results"
LEARNERS = ["relu-adam", "topk-adagrad", "hard-ash-adagrad"]


def run(stream: str, agent: str, seed: int, extra: dict | None = None, **top) -> dict:
    cfg = resolve(
        SupervisedRunConfig,
        {"stream": load_preset("envs", stream)},
        load_preset("agents", agent),
        {"seed": seed, **top},
        extra or {},
    )
    with tempfile.TemporaryDirectory() as run_dir:
        return train(cfg, Path(run_dir), show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 100k regression examples")
    args = parser.parse_args()
    seeds = range(2 if args.quick else 5)
    examples = 100_000 if args.quick else 1_000_000
    start = time.perf_counter()
    split: dict[str, list[float]] = {}
    for agent in LEARNERS:
        for seed in seeds:
            result = run("split-fashion-mnist", agent, seed, data_dir=args.data_dir)
            split.setdefault(agent, []).append(result["average_accuracy"])
            print(f"{agent} seed {seed}: {result['average_accuracy']:.2f}%", flush=True)
    split_seconds = time.perf_counter() - start
    regression: dict[str, list[float]] = {}
    for agent in ("regression-bp", "regression-cbp"):
        kwargs = {"stream": {"kwargs": {"total_examples": examples}}}
        result = run("slowly-changing-regression", agent, 0, kwargs)
        regression[agent] = result["squared_error_bins"]
        print(f"{agent}: bins {[round(e, 3) for e in result['squared_error_bins']]}", flush=True)
    wall = time.perf_counter() - start

    today = date.today().isoformat()
    suffix = "-quick" if args.quick else ""
    lines = [
        f"# Supervised benchmark, {today}",
        "",
        f"Machine: {platform.machine()}, 1 torch thread, Python {platform.python_version()}, "
        f"torch {torch.__version__}. Command: `python benchmarks/supervised.py"
        f"{' --quick' if args.quick else ''}`. Wall time {wall / 60:.1f} min "
        f"(Split Fashion-MNIST part {split_seconds / 60:.1f} min).",
        "",
        f"## Split Fashion-MNIST, class-incremental, 1 epoch per task, {len(seeds)} seeds",
        "",
        "| learner | final accuracy, 10 classes (%) | per seed |",
        "|---|---|---|",
    ]
    for agent, values in split.items():
        mean, half = mean_ci95(values)
        per_seed = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"| `{agent}` | {mean:.1f} +- {half:.1f} | {per_seed} |")
    lines += [
        "",
        f"## Slowly-changing regression, {examples:,} examples, squared error per 20,000",
        "",
        "| learner | first bin | lowest bin | last bin |",
        "|---|---|---|---|",
    ]
    for agent, bins in regression.items():
        lines.append(f"| `{agent}` | {bins[0]:.3f} | {min(bins):.3f} | {bins[-1]:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"supervised_{today}{suffix}.md").write_text(text)
    raw = {"split_fashion_mnist": split, "regression_bins": regression, "wall_seconds": wall}
    (RESULTS / f"supervised_{today}{suffix}.json").write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
