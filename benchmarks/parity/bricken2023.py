"""Statistical parity with the code of Bricken et al. 2023 (SDMLP k = 10 vs ReLU), real MNIST.

Trains this project's presets ``sdmlp`` and ``relu-sgd`` on Split MNIST (class-incremental,
5 tasks of 2 digits, one 10-way head) with the reduced schedule the reference side ran: E epochs
per task instead of 500, and the GABA switch's T scaled by the same factor (5e6 * E / 500),
validation about once per epoch on the whole test sets of the seen tasks (as the code does; its
forwards advance the GABA counters), as the experiment preset ``bricken2023-split-mnist`` does.
The metric is the reference's ``val/accuracy`` after the last epoch: the accuracy on the union
of the 5 tasks' test sets (the whole MNIST test set), sum_t acc_t n_t / sum_t n_t. It is set
beside the reference code's per-seed numbers recorded in
``benchmarks/results/parity/bricken2023.json`` (provenance in ``bricken2023.md``). Each seed
is one run (neither the GABA switch nor the gradient-norm clip has a batched form). Writes
``bricken2023-project.json`` (per seed, incrementally; seeds already there are skipped) and the
table ``bricken2023.md``.

    python benchmarks/parity/bricken2023.py --data-dir /work/shared/data/mnist [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.metrics.continual import sample_weighted_accuracy
from plasticity_rl.metrics.summary import difference_ci95, mean_ci95
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.learner import build_stream
from plasticity_rl.supervised.trainer import train

RESULTS = Path(__file__).parents[1] / "results" / "parity"
PAPER_EPOCHS, PAPER_GABA_T = 500, 5_000_000
SETTINGS = {"SDM k=10": "sdmlp", "ReLU_SGD": "relu-sgd"}
"""Reference setting (its ``test_name``) -> this project's agent preset."""


def config(name: str, data_dir: str, epochs: int, seed: int) -> SupervisedRunConfig:
    """The setting at ``epochs`` per task, the GABA switch scaled to it."""
    agent = SETTINGS[name]
    gaba_t = PAPER_GABA_T * epochs // PAPER_EPOCHS
    overrides = [f"train.epochs_per_task={epochs}", "train.probe_size=1000",
                 "train.eval_every_steps=99", "train.eval_examples_per_task=2115"]  # fmt: skip
    if agent == "sdmlp":
        overrides.append(f"network.activation.gaba_switch_T={gaba_t}")
    return resolve(
        SupervisedRunConfig,
        {"stream": load_preset("envs", "split-mnist")},
        load_preset("agents", agent),
        {"data_dir": data_dir, "seed": seed},
        overrides=overrides,
    )


def val_accuracy(row: list[float], test_sizes: list[int], t: int) -> float:
    """The reference's ``val/accuracy`` (%) after task t (0-based) from per-task accuracies:
    the accuracy on the seen tasks' test sets times (t + 1) / number of tasks."""
    seen = sample_weighted_accuracy(row[: t + 1], test_sizes[: t + 1])
    return seen * (t + 1) / len(test_sizes)


def _cell(values: list[float]) -> str:
    mean, half = mean_ci95(values)
    return f"{mean:.1f} +- {half:.1f}"


def report(reference: dict, project: dict) -> str:
    """The Markdown page: provenance of both sides, then the side-by-side tables."""
    prov = reference["provenance"]
    epochs = reference["epochs_per_task"]
    lines = [
        "# Parity: Bricken et al. 2023 (SDMLP k = 10 vs ReLU), Split MNIST, real MNIST",
        "",
        f"Reduced schedule on both sides: {epochs} epochs per task instead of the paper's 500 "
        f"(5 tasks, {5 * epochs} epochs in all), the GABA switch's T scaled by the same "
        f"factor ({PAPER_GABA_T * epochs // PAPER_EPOCHS:,} instead of 5,000,000). Metric: the "
        "reference's `val/accuracy` after the last epoch, the accuracy on the whole MNIST test "
        "set (the union of the 5 tasks' test sets); mean and 95% Student-t interval over "
        "seeds, the difference with its 95% bootstrap interval (seeds resampled per side).",
        "",
        f"- Reference: {prov['repository']} at commit `{prov['commit']}`, `{prov['file']}`. "
        f"{prov['how']}",
        f"- Reference settings: {prov['settings']}",
        f"- Project: `python benchmarks/parity/bricken2023.py --data-dir DIR --seeds "
        f"{project.get('seeds')} --epochs-per-task {epochs}` (presets `sdmlp`, `relu-sgd`, "
        "seeds 0..N-1, one run per seed); wall time per setting: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in project.get("wall_seconds", {}).items())
        + ".",
        "",
        "Differences of protocol that remain (checked in the reference's source):",
        "",
        *[f"- {note}" for note in prov["notes"]],
        "",
        "| setting | reference (%) | project (%) | project - reference (p.p.) | n ref / ours |",
        "|---|---|---|---|---|",
    ]
    rows, ends = [], []
    for name in SETTINGS:
        ref_runs = reference["settings"].get(name, {})
        our_runs = project.get("settings", {}).get(name, {})
        ref = [100.0 * r["final_val_accuracy"] for r in ref_runs.values()]
        ours = [r["all_class_accuracy"] for r in our_runs.values()]
        if not ours or not ref:
            continue
        diff, low, high = difference_ci95(ours, ref)
        lines.append(
            f"| {name} | {_cell(ref)} | {_cell(ours)} | {diff:+.1f} [{low:+.1f}, {high:+.1f}] "
            f"| {len(ref)} / {len(ours)} |"
        )
        for t in range(5):
            ref_t = [100.0 * r["final_task_accuracy"][t] for r in ref_runs.values()]
            ours_t = [r["accuracy_matrix"][-1][t] for r in our_runs.values()]
            rows.append(f"| {name} | task {t + 1} | {_cell(ref_t)} | {_cell(ours_t)} |")
            ref_end = [100.0 * r["val_accuracy_per_epoch"][epochs * (t + 1) - 1]
                       for r in ref_runs.values()]  # fmt: skip
            ours_end = [val_accuracy(r["accuracy_matrix"][t], project["test_sizes"], t)
                        for r in our_runs.values()]  # fmt: skip
            diff, low, high = difference_ci95(ours_end, ref_end)
            ends.append(f"| {name} | {t + 1} | {_cell(ref_end)} | {_cell(ours_end)} | "
                        f"{diff:+.1f} [{low:+.1f}, {high:+.1f}] |")  # fmt: skip
    lines += [
        "",
        "Accuracy on each task's test set after the last task (%), mean and 95% interval:",
        "",
        "| setting | task | reference | project |",
        "|---|---|---|---|",
        *rows,
        "",
        "The reference's `val/accuracy` at the end of each task (the accuracy on the seen "
        "tasks' test sets times (t + 1) / 5; after task 5 the number above). It moves by "
        "several points from one epoch to the next (see the per-epoch values in the JSON), so "
        "single end points are noisy:",
        "",
        "| setting | after task | reference (%) | project (%) | project - reference (p.p.) |",
        "|---|---|---|---|---|",
        *ends,
        "",
        "Reference per-seed numbers: `bricken2023.json`; project per-seed numbers and accuracy "
        "matrices: `bricken2023-project.json`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="/work/shared/data/mnist")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per setting")
    parser.add_argument("--epochs-per-task", type=int, default=10)
    parser.add_argument("--report", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    reference = json.loads((RESULTS / "bricken2023.json").read_text())
    if args.epochs_per_task != reference["epochs_per_task"]:
        parser.error(f"--epochs-per-task: the reference ran {reference['epochs_per_task']}")
    out = RESULTS / "bricken2023-project.json"
    project = json.loads(out.read_text()) if out.exists() else {}
    if not args.report:
        if project.get("epochs_per_task") != args.epochs_per_task:
            project = {}  # runs of another schedule are not comparable: start afresh
        project.update(seeds=args.seeds, epochs_per_task=args.epochs_per_task)
        project.setdefault("settings", {})
        project.setdefault("wall_seconds", {})
        for seed in range(args.seeds):  # settings interleaved: partial results stay balanced
            for name in SETTINGS:
                if str(seed) in project["settings"].get(name, {}):
                    continue  # done in an earlier call (same schedule)
                cfg = config(name, args.data_dir, args.epochs_per_task, seed)
                test_sizes = [len(task.test_y) for task in build_stream(cfg).tasks]
                project["test_sizes"] = test_sizes
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    result = train(cfg, Path(tmp), show_progress=False)
                project["wall_seconds"][name] = project["wall_seconds"].get(name, 0.0) + (
                    time.perf_counter() - start
                )
                project["settings"].setdefault(name, {})[str(seed)] = {
                    "all_class_accuracy": sample_weighted_accuracy(
                        result["accuracy_matrix"][-1], test_sizes
                    ),
                    "average_accuracy": result["average_accuracy"],
                    "accuracy_matrix": result["accuracy_matrix"],
                }
                out.write_text(json.dumps(project, indent=1) + "\n")
                (RESULTS / "bricken2023.md").write_text(report(reference, project))
                print(name, seed, project["settings"][name][str(seed)]["all_class_accuracy"])
    text = report(reference, project)
    (RESULTS / "bricken2023.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
