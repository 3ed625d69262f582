"""Statistical parity with Dohare et al.'s code: the slowly-changing regression's binned error.

Runs only this project's code. The reference side (per-seed squared-error bins of the authors'
``lop/slowly_changing_regression/expr.py`` on data of their ``generate_problem_data``) is read
from ``benchmarks/results/parity/dohare2024-regression.json``, where its provenance is recorded.
For each setting and run length found there, this script trains the same number of seeds of
the matching preset here (one batched network, ``train_runs``), bins the per-example squared
error as the reference does (mean over consecutive 20,000-example bins) and prints, per setting,
the mean over the first 5 bins, the last 5 bins and all bins: mean over seeds and 95% CI (t)
for both sides (the table of ``benchmarks/results/parity/dohare2024-regression.md``). The
project's per-seed bins are written into the same JSON as each setting finishes.

    python benchmarks/parity/dohare2024_regression.py [--settings linear bp-relu] [--examples N]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.metrics.summary import mean_ci95
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.trainer import train_runs

RESULTS = Path(__file__).parents[1] / "results" / "parity"
JSON = RESULTS / "dohare2024-regression.json"
BIN = 20_000

SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": ("regression-linear", {}),
    "bp-relu": ("regression-bp", {}),
    # the reference ran maturity 10 (its expr.py reads "mt", the config sets
    # "maturity_threshold"); matched here so that the comparison is like for like
    "cbp-relu": ("regression-cbp", {"method": {"continual_backprop": {"maturity_threshold": 10}}}),
}
"""Reference setting name -> (this project's preset, overrides)."""

SUMMARIES = {"first 5 bins": slice(0, 5), "last 5 bins": slice(-5, None), "all bins": slice(None)}


def run_project(setting: str, examples: int, seeds: int) -> tuple[list[list[float]], float]:
    """Per-seed squared-error bins of ``seeds`` batched runs, and the wall time."""
    agent, overrides = SETTINGS[setting]
    stream = {"stream": load_preset("envs", "slowly-changing-regression")}
    length = {"stream": {"kwargs": {"total_examples": examples, "bin_size": BIN}}}
    cfg = resolve(SupervisedRunConfig, stream, load_preset("agents", agent), length, overrides)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"s{s}" for s in range(seeds)]
        for d in dirs:
            d.mkdir()
        results = train_runs(cfg, list(range(seeds)), dirs, show_progress=False)
    return [r["squared_error_bins"] for r in results], time.time() - start


def summary(bins: list[list[float]]) -> dict[str, dict[str, float]]:
    """Per summary: mean over seeds of each seed's mean over those bins, and the 95% CI."""
    out = {}
    for name, part in SUMMARIES.items():
        per_seed = [sum(b[part]) / len(b[part]) for b in bins]
        mean, half = mean_ci95(per_seed)
        out[name] = {"mean": mean, "ci95": half, "n": len(per_seed)}
    return out


def table(record: dict[str, Any]) -> str:
    """The side-by-side markdown table of every setting and length with both sides."""
    lines = [
        "| setting | examples | bins | reference mean (95% CI) | project mean (95% CI) "
        "| difference | n ref / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, lengths in record["reference"].items():
        for examples, ref in sorted(lengths.items(), key=lambda kv: int(kv[0])):
            ours = record.get("project", {}).get(setting, {}).get(examples)
            if ours is None:
                continue
            a, b = summary(ref["bins"]), summary(ours["bins"])
            # up to 5 bins: the three summaries are the same numbers, shown once
            names = list(SUMMARIES) if len(ref["bins"][0]) > 5 else ["first 5 bins"]
            for name in names:
                ra, pb = a[name], b[name]
                ci = "nan" if math.isnan(pb["ci95"]) else f"{pb['ci95']:.3f}"
                lines.append(
                    f"| {setting} | {int(examples):,} | {name} | {ra['mean']:.3f} "
                    f"(+-{ra['ci95']:.3f}) | {pb['mean']:.3f} (+-{ci}) "
                    f"| {pb['mean'] - ra['mean']:+.3f} | {ra['n']} / {pb['n']} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    lengths = "run lengths to do (default: every length the reference has)"
    parser.add_argument("--examples", type=int, nargs="*", default=None, help=lengths)
    args = parser.parse_args()
    record = json.loads(JSON.read_text())
    for setting in args.settings:
        for examples, ref in record["reference"].get(setting, {}).items():
            if args.examples and int(examples) not in args.examples:
                continue
            bins, seconds = run_project(setting, int(examples), len(ref["bins"]))
            record.setdefault("project", {}).setdefault(setting, {})[examples] = {
                "seeds": list(range(len(bins))), "bins": bins, "wall_seconds": round(seconds),
            }  # fmt: skip
            JSON.write_text(json.dumps(record, indent=1) + "\n")
            print(f"{setting} {examples}: {seconds:.0f} s", flush=True)
    print(table(record))


if __name__ == "__main__":
    main()
