"""Statistical parity with the code of Keskinen 2024 (Hard ASH), Table 3, on real MNIST.

Trains this project's Keskinen presets (``hard-ash-adagrad``, ``topk-adagrad``, ``relu-adam``,
and the code's other Top-K and Adam values, :data:`SETTINGS`) on Split MNIST, class-incremental,
one epoch per task, inputs standardised, as the experiment preset ``keskinen2024-split-mnist``
does; the seeds of a setting train as one batched network.
The metric is the reference's: after the last task, the accuracy on the whole MNIST test set
(all 10 classes, sample-weighted), i.e. sum_t acc_t n_t / sum_t n_t over the per-task test
accuracies acc_t and test-set sizes n_t. It is set beside the reference code's per-seed numbers,
recorded in ``benchmarks/results/parity/keskinen2024.json`` (provenance in ``keskinen2024.md``).
Writes ``keskinen2024-project.json`` (per seed, incrementally) and the table ``keskinen2024.md``.

    python benchmarks/parity/keskinen2024.py --data-dir /work/shared/data/mnist [--seeds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.metrics.continual import sample_weighted_accuracy
from plasticity_rl.metrics.summary import difference_ci95, mean_ci95
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.learner import build_stream
from plasticity_rl.supervised.trainer import train_runs

RESULTS = Path(__file__).parents[1] / "results" / "parity"
SETTINGS = {
    "hard_ash+adagrad": ("hard-ash-adagrad", []),
    "topk_k96_lr3e-4+adagrad": ("topk-adagrad", []),
    "topk_k64_lr2e-4+adagrad": ("topk-adagrad", ["network.activation.k=64", "optimizer.lr=2e-4"]),
    "topk_k96_lr2e-4+adagrad": ("topk-adagrad", ["optimizer.lr=2e-4"]),
    "relu+adam_b0.99_lr8e-6": ("relu-adam", []),
    "relu+adam_b0.98_lr1e-5": ("relu-adam", ["optimizer.betas=[0.98,0.9995]", "optimizer.lr=1e-5"]),
}
"""Setting name (as in the reference JSON) -> this project's agent preset and overrides."""


def config(name: str, data_dir: str) -> SupervisedRunConfig:
    """The setting on Split MNIST with standardised inputs (the experiment preset's ``set``)."""
    agent, overrides = SETTINGS[name]
    return resolve(
        SupervisedRunConfig,
        {"stream": load_preset("envs", "split-mnist")},
        load_preset("agents", agent),
        {"data_dir": data_dir},
        overrides=["stream.kwargs.normalize=true", *overrides],
    )


def report(reference: dict, project: dict) -> str:
    """The Markdown page: provenance of both sides, then the side-by-side table."""
    prov = reference["provenance"]
    lines = [
        "# Parity: Keskinen 2024 (Hard ASH), Table 3 protocol, real MNIST",
        "",
        "Final accuracy on the whole MNIST test set (10 classes) after the 5th task of Split",
        "MNIST (class-incremental, 2 digits per task, 1 epoch per task, batch 64): mean and 95%",
        "Student-t interval over seeds; the difference with its 95% bootstrap interval.",
        "",
        f"- Reference: {prov['repository']} at commit `{prov['commit']}`, `{prov['file']}`,",
        f"  function `{prov['function']}`. {prov['how']}",
        f"- Reference settings: {prov['settings']}",
        "- Project: this project's presets, seeds 0..n-1 of a setting trained as one batched "
        "network, on this 2-core machine shared with other jobs (wall times are not speeds):",
        *[
            f"  - {project['commands'][name]} ({name}: {minutes:.0f} min)"
            for name, minutes in ((n, project["wall_seconds"][n] / 60) for n in project["settings"])
        ],
        "",
        "What the reference code does beyond the presets (checked in its source):",
        "",
        *[f"- {note}" for note in prov["notes"]],
        "",
    ]
    lines += [
        "| setting | reference (%) | project (%) | project - reference (p.p.) | n ref / ours |",
        "|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        ref = [100.0 * r["final_accuracy"] for r in reference["settings"].get(name, {}).values()]
        ours = [r["all_class_accuracy"] for r in project["settings"].get(name, {}).values()]
        if not ours or not ref:
            continue
        (rm, rh), (pm, ph) = mean_ci95(ref), mean_ci95(ours)
        diff, low, high = difference_ci95(ours, ref)
        lines.append(
            f"| {name} | {rm:.1f} +- {rh:.1f} | {pm:.1f} +- {ph:.1f} | "
            f"{diff:+.1f} [{low:+.1f}, {high:+.1f}] | {len(ref)} / {len(ours)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="/work/shared/data/mnist")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per setting")
    parser.add_argument("--only", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--report", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    reference = json.loads((RESULTS / "keskinen2024.json").read_text())
    out = RESULTS / "keskinen2024-project.json"
    project = json.loads(out.read_text()) if out.exists() else {}
    if args.report:
        (RESULTS / "keskinen2024.md").write_text(report(reference, project))
        return
    for key in ("settings", "wall_seconds", "commands"):
        project.setdefault(key, {})
    seeds = list(range(args.seeds))
    for name in args.only:
        cfg = config(name, args.data_dir)
        test_sizes = [len(task.test_y) for task in build_stream(cfg).tasks]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            dirs = [Path(tmp) / f"s{seed}" for seed in seeds]
            for run_dir in dirs:
                run_dir.mkdir()
            results = train_runs(cfg, seeds, dirs, show_progress=False)
        seconds = time.perf_counter() - start
        project["settings"][name] = {
            str(seed): {
                "all_class_accuracy": sample_weighted_accuracy(
                    r["accuracy_matrix"][-1], test_sizes
                ),
                "average_accuracy": r["average_accuracy"],
                "accuracy_matrix": r["accuracy_matrix"],
            }
            for seed, r in zip(seeds, results, strict=True)
        }
        project["wall_seconds"][name] = seconds
        argv = " ".join(sys.argv[1:])
        project["commands"][name] = f"`python benchmarks/parity/keskinen2024.py {argv}`"
        out.write_text(json.dumps(project, indent=1) + "\n")
        text = report(reference, project)
        (RESULTS / "keskinen2024.md").write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
