"""The benchmark suite: PPO and supervised speed, and peak memory, measured side by side.

One entry point for the speed benchmarks. Every measurement runs in a fresh Python process
(one torch thread), one after the other, in this order (repeats interleave the variants, so a
slow drift of the machine hits all of them alike; the median over repeats is reported):

(a) PPO env steps/s on ``hopper-friction`` (plain SB3 PPO, ``lop`` and every agent preset,
    bare and full) and on ``ant-friction`` (plain SB3, ``lop`` and two fast presets), see
    :mod:`rl_speed`; the report adds what the paper's 50M-step run costs at each speed;
(b) supervised training examples/s, aggregated over runs, in steady state: for each case of
    :data:`batched_speed.CASES` the plain trainer loop (autograd), a minimal PyTorch loop, the
    single-run trainer and batched runs (:func:`batched_speed.measure`);
(c) peak memory of each measurement: the process reports its own peak resident set size,
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux), right after its imports
    and after the measurement. The first is the baseline every process pays (Python, torch,
    and SB3 for PPO); the difference is what the measurement itself added at its peak.

    python benchmarks/run.py            # full suite, about 15 minutes on 2 cores
    python benchmarks/run.py --quick    # under 5 minutes
    python benchmarks/run.py --smoke    # seconds; exercises the machinery, numbers meaningless

Prints and writes ``benchmarks/results/suite_<date>[-quick|-smoke].md`` (and ``.json`` with
every repeat), including the issue's speed targets and whether they are met. Run it on a quiet
machine: it measures wall time. ``--only TEXT`` (repeatable) keeps the measurements whose
label (``"ppo: <variant>"`` or ``"supervised: <case>: <variant>"``) contains TEXT.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
PAPER_ENV_STEPS = 50_000_000
"""Env steps of one run of Dohare et al.'s RL experiments (its cost is in the PPO tables)."""


@dataclass(frozen=True)
class Budget:
    """How long each measurement trains."""

    ppo_steps: int
    """Env steps per PPO run."""
    regression_examples: int
    """Examples per run of one regression length (a bin) in the steady-state measurement."""
    image_examples: int
    """Examples per run of one Online Permuted MNIST length (a task)."""
    repeats: int
    ppo: dict[str, Any] = field(default_factory=dict)
    """PPO settings overriding the presets' (only to make smoke runs tiny)."""


BUDGETS = {
    "full": Budget(ppo_steps=10_240, regression_examples=20_000, image_examples=5_000, repeats=2),
    "quick": Budget(ppo_steps=4_096, regression_examples=4_000, image_examples=1_000, repeats=1),
    "smoke": Budget(
        ppo_steps=256,
        regression_examples=200,
        image_examples=100,
        repeats=1,
        ppo={"n_steps": 8, "batch_size": 8, "n_epochs": 1},  # >= 2 rollouts of every layout
    ),  # fmt: skip
}


@dataclass(frozen=True)
class Measurement:
    """One variant to time in its own process: ``group`` "ppo" or "supervised"."""

    group: str
    variant: str
    case: str = ""

    @property
    def label(self) -> str:
        return f"{self.group}: {self.case + ': ' if self.case else ''}{self.variant}"


def measurements() -> list[Measurement]:
    """Every measurement of the suite, in order: PPO variants, then supervised cases."""
    sys.path.insert(0, str(BENCHMARKS))
    import batched_speed
    import rl_speed

    ppo = [Measurement("ppo", variant, env) for env in rl_speed.ENV_PRESETS
           for variant in rl_speed.variants(env)]  # fmt: skip
    supervised = [
        Measurement("supervised", variant, case)
        for case in batched_speed.CASES
        for variant in batched_speed.VARIANTS
    ]
    return ppo + supervised


def run_child(measurement: Measurement, budget: Budget) -> dict[str, float]:
    """Time ``measurement`` in this process: its rate, and peak RSS after imports and at the end.

    Only the modules of the measurement's group are imported, so a supervised measurement's
    baseline has no SB3 in it.
    """
    import resource

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(BENCHMARKS))
    if measurement.group == "ppo":
        import rl_speed

        def measure() -> float:
            return rl_speed.measure(measurement.variant, budget.ppo_steps, budget.ppo,
                                    measurement.case)  # fmt: skip
    else:
        import batched_speed

        case = batched_speed.CASES[measurement.case]
        examples = budget.regression_examples if case.regression else budget.image_examples

        def measure() -> float:
            return batched_speed.measure(measurement.case, measurement.variant, examples)

    import_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rate = measure()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rate": rate, "peak_rss_mib": peak_kib / 1024, "import_rss_mib": import_kib / 1024}


def in_fresh_process(measurement: Measurement, budget: Budget) -> dict[str, Any]:
    """:func:`run_child` in a new Python process; ``{"error": ...}`` if it fails."""
    spec = json.dumps({"measurement": asdict(measurement), "budget": asdict(budget)})
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                f"exit code {done.returncode}"}  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Row:
    """A measurement's results over the repeats."""

    measurement: Measurement
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> str | None:
        return next((r["error"] for r in self.runs if "error" in r), None)

    @property
    def rate(self) -> float:
        return statistics.median(r["rate"] for r in self.runs)

    @property
    def peak_mib(self) -> float:
        return max(r["peak_rss_mib"] for r in self.runs)

    @property
    def import_mib(self) -> float:
        return max(r["import_rss_mib"] for r in self.runs)


def run_suite(budget: Budget, only: list[str] | None = None) -> list[Row]:
    """Every selected measurement, ``budget.repeats`` times, interleaved, each in a new process."""
    rows = [Row(m) for m in measurements() if not only or any(t in m.label for t in only)]
    for repeat in range(budget.repeats):
        for row in rows:
            result = in_fresh_process(row.measurement, budget)
            row.runs.append(result)
            shown = result.get("error") or (
                f"{result['rate']:10.0f}/s  peak RSS {result['peak_rss_mib']:6.0f} MiB"
            )
            print(f"[{repeat + 1}/{budget.repeats}] {row.measurement.label:70s} {shown}",
                  flush=True)  # fmt: skip
    return rows


def targets() -> list[tuple[str, str, str, float]]:
    """The issues' targets, ``(case, variant, reference variant, minimum ratio)`` of rates.

    PPO: the fast layout as ``train_rl.py`` runs it (``ppo-fast full``) >= 2.5x the env
    steps/s of plain SB3 PPO with the paper's settings on Hopper. Supervised: 30 regression
    seeds >= 50x and 10 Online Permuted MNIST seeds >= 5x the examples/s of a plain
    per-example loop, and one run at least as fast as it. The issue's "plain loop" was
    measured as the trainer with autograd; the stricter minimal torch loop is checked too.
    """
    import batched_speed
    import rl_speed

    ppo = [(rl_speed.ENV_PRESETS[0], "ppo-fast full", rl_speed.PLAIN, 2.5)]

    references = ("plain loop", "minimal torch loop")
    batched = [(name, "batched", ref, 50.0 if case.regression else 5.0)
               for name, case in batched_speed.CASES.items() for ref in references]  # fmt: skip
    single = [(name, "single run", ref, 1.0) for name in batched_speed.CASES for ref in references]
    return ppo + batched + single


def report(rows: list[Row], budget: Budget, mode: str, wall: float, command: str) -> str:
    """The markdown report: targets, PPO table, supervised table."""
    import torch

    done = {(r.measurement.case, r.measurement.variant): r for r in rows if not r.failed}
    lines = [
        f"# Benchmark suite, {date.today().isoformat()}",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, 1 torch thread per "
        f"process, Python {platform.python_version()}, torch {torch.__version__}. Command: "
        f"`{command}` ({mode}); wall time of the suite {wall / 60:.1f} min. Every measurement "
        f"ran in a fresh process, median of {budget.repeats} interleaved repeat(s). Peak RSS: "
        "the process's own `ru_maxrss` after the measurement; *above imports*: minus its "
        "`ru_maxrss` right after importing Python, torch (and SB3 for PPO).",
        "",
    ]
    failed = [r for r in rows if r.failed]
    if failed:
        lines += ["**Failed:** " + "; ".join(f"{r.measurement.label}: {r.failed}"
                                             for r in failed), ""]  # fmt: skip
    measured = [t for t in targets() if (t[0], t[1]) in done and (t[0], t[2]) in done]
    if measured:
        lines += ["## Targets", ""]
        if mode != "full":  # short lengths: per-length costs (metrics, checkpoints) weigh more
            lines += ["Indicative only: the targets are judged on the full suite, whose longer "
                      "steady-state lengths amortise the per-bin and per-task costs of every "
                      "run that this mode's short lengths do not.", ""]  # fmt: skip
        lines += ["| case | variant | vs | measured | target | met |", "|---|---|---|---|---|---|"]
        for case, variant, reference, minimum in measured:
            ratio = done[case, variant].rate / done[case, reference].rate
            lines.append(f"| {case} | {variant} | {reference} | {ratio:.1f}x | >= {minimum:g}x "
                         f"| {'yes' if ratio >= minimum else 'NO'} |")  # fmt: skip
        lines.append("")
    for env in dict.fromkeys(r.measurement.case for r in rows if r.measurement.group == "ppo"):
        ppo = {r.measurement.variant: r for r in rows
               if r.measurement.group == "ppo" and r.measurement.case == env}  # fmt: skip
        plain = ppo.get("plain SB3 PPO")
        lines += [
            f"## PPO: env steps/s, `{env}`, {budget.ppo_steps:,} env steps per run",
            "",
            "*bare*: the preset's network, optimiser and PPO settings with no interventions, "
            "callback, metrics or checkpoints; *full*: as `train_rl.py` runs it. *50M steps*: "
            "the hours the paper's 50M-env-step run takes at that speed on this machine.",
            "",
            "| variant | env steps/s | vs plain SB3 PPO | 50M steps (h) | peak RSS (MiB) "
            "| above imports (MiB) |",
            "|---|---|---|---|---|---|",
        ]
        for variant, row in ppo.items():
            lines.append(_row(variant, row, plain))
        lines.append("")
    supervised = [r for r in rows if r.measurement.group == "supervised"]
    if supervised:
        lines += [
            f"## Supervised: examples/s (all runs), {budget.regression_examples:,} regression "
            f"/ {budget.image_examples:,} image examples per run and length",
            "",
            "Steady state (see `benchmarks/batched_speed.py`). *plain loop*: the trainer with "
            "autograd; *minimal torch loop*: `nn.Sequential` + `torch.optim.SGD` + "
            "`backward()` (+ CBP's hooks), data drawn beforehand, no trainer.",
            "",
            "| case | variant | runs | examples/s | vs plain loop | vs minimal torch loop "
            "| peak RSS (MiB) | above imports (MiB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in supervised:
            m = row.measurement
            runs = _runs(m)
            if row.failed:
                lines.append(f"| {m.case} | {m.variant} | {runs} | failed | | | | |")
                continue
            plain, minimal = (
                done.get((m.case, "plain loop")),
                done.get((m.case, "minimal torch loop")),
            )
            lines.append(f"| {m.case} | {m.variant} | {runs} | {row.rate:,.0f} | "
                         f"{_ratio(row, plain)} | {_ratio(row, minimal)} | {row.peak_mib:,.0f} "
                         f"| {row.peak_mib - row.import_mib:,.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _runs(m: Measurement) -> int:
    import batched_speed

    return batched_speed.CASES[m.case].runs if m.variant == "batched" else 1


def _ratio(row: Row, reference: Row | None) -> str:
    if reference is None or reference is row:
        return ""
    return f"{row.rate / reference.rate:.1f}x"


def _row(variant: str, row: Row, plain: Row | None) -> str:
    if row.failed:
        return f"| {variant} | failed | | | | |"
    vs = "" if plain is None or plain.failed or plain is row else f"{row.rate / plain.rate:.2f}x"
    hours = PAPER_ENV_STEPS / row.rate / 3600
    return (f"| {variant} | {row.rate:,.0f} | {vs} | {hours:.1f} | {row.peak_mib:,.0f} | "
            f"{row.peak_mib - row.import_mib:,.0f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="shorter runs: under 5 minutes")
    mode.add_argument("--smoke", action="store_true", help="tiny runs: tests the machinery")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="keep the measurements whose label contains TEXT")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        result = run_child(Measurement(**spec["measurement"]), Budget(**spec["budget"]))
        print(json.dumps(result))
        return 0
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    budget = BUDGETS[name]
    start = time.perf_counter()
    rows = run_suite(budget, args.only)
    wall = time.perf_counter() - start
    flags = "".join(f" --only '{t}'" for t in args.only or [])
    command = f"python benchmarks/run.py{'' if name == 'full' else ' --' + name}{flags}"
    text = report(rows, budget, name, wall, command)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"suite_{date.today().isoformat()}{'' if name == 'full' else '-' + name}"
    (args.results_dir / f"{stem}.md").write_text(text)
    raw = {"budget": asdict(budget), "wall_seconds": wall, "command": command,
           "rows": [{**asdict(r.measurement), "runs": r.runs} for r in rows]}  # fmt: skip
    (args.results_dir / f"{stem}.json").write_text(json.dumps(raw, indent=2) + "\n")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
