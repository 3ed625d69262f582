"""The benchmark suite's machinery runs end to end on tiny budgets (no speed is asserted)."""

from __future__ import annotations

import json
import math
import sys

import pytest

from plasticity_rl.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import batched_speed  # noqa: E402
import rl_speed  # noqa: E402
import run as suite  # noqa: E402

SMOKE = suite.BUDGETS["smoke"]


def test_suite_times_each_measurement_in_a_fresh_process_and_writes_the_tables(tmp_path):
    only = ["ppo: ant-friction: ppo-fast full", "Online Permuted MNIST 3x100, CBP: batched"]
    args = ["--smoke", "--results-dir", str(tmp_path)]
    assert suite.main(args + [a for text in only for a in ("--only", text)]) == 0
    [table] = tmp_path.glob("suite_*-smoke.md")
    [raw] = tmp_path.glob("suite_*-smoke.json")
    rows = json.loads(raw.read_text())["rows"]
    assert [(r["group"], r["variant"]) for r in rows] == [("ppo", "ppo-fast full"),
                                                          ("supervised", "batched")]  # fmt: skip
    for row in rows:
        [result] = row["runs"]
        assert math.isfinite(result["rate"])
        # the child's own ru_maxrss: torch alone takes > 100 MiB; the peak includes the imports
        assert result["peak_rss_mib"] >= result["import_rss_mib"] > 100
    text = table.read_text()
    assert "## PPO: env steps/s, `ant-friction`" in text and "| ppo-fast full |" in text
    assert "| Online Permuted MNIST 3x100, CBP | batched | 10 |" in text


@pytest.mark.parametrize("variant", batched_speed.VARIANTS)
@pytest.mark.parametrize(
    "case, examples",
    [("regression, continual backprop", 100), ("Online Permuted MNIST 3x100, backprop", 50)],
)
def test_every_supervised_variant_trains(case, examples, variant):
    assert math.isfinite(batched_speed.measure(case, variant, examples))


@pytest.mark.parametrize("variant", [rl_speed.PLAIN, "lop bare", "ppo-cbp-l2-fast full"])
def test_ppo_variants_train(variant):
    assert rl_speed.measure(variant, SMOKE.ppo_steps, SMOKE.ppo) > 0


def _row(case: str, variant: str, rate: float, group: str = "supervised") -> suite.Row:
    runs = [{"rate": rate, "peak_rss_mib": 400.0, "import_rss_mib": 300.0}]
    return suite.Row(suite.Measurement(group, variant, case), runs)


def test_report_checks_the_targets_against_both_references():
    bp, opm = "regression, backprop", "Online Permuted MNIST 3x100, backprop"
    rows = [
        _row("hopper-friction", rl_speed.PLAIN, 800.0, "ppo"),
        _row("hopper-friction", "ppo full", 600.0, "ppo"),
        _row("hopper-friction", "ppo-fast full", 2_400.0, "ppo"),
        _row(bp, "plain loop", 5_000.0),
        _row(bp, "minimal torch loop", 6_000.0),
        _row(bp, "single run", 10_000.0),
        _row(bp, "batched", 300_000.0),
        _row(opm, "plain loop", 2_000.0),
        _row(opm, "minimal torch loop", 2_500.0),
        _row(opm, "single run", 1_500.0),
        _row(opm, "batched", 9_000.0),
    ]
    text = suite.report(rows, SMOKE, "smoke", 60.0, "python benchmarks/run.py --smoke")
    # 300,000 / 5,000 = 60x and / 6,000 = 50x (>= 50: met); 9,000 / 2,000 = 4.5x, / 2,500 = 3.6x
    assert f"| {bp} | batched | plain loop | 60.0x | >= 50x | yes |" in text
    assert f"| {bp} | batched | minimal torch loop | 50.0x | >= 50x | yes |" in text
    assert f"| {opm} | batched | plain loop | 4.5x | >= 5x | NO |" in text
    assert f"| {opm} | batched | minimal torch loop | 3.6x | >= 5x | NO |" in text
    assert f"| {opm} | single run | plain loop | 0.8x | >= 1x | NO |" in text  # 1,500 / 2,000
    # 600 / 800; 50M / 600 / 3600 = 23.1 h; 400 - 300 MiB
    assert "| ppo full | 600 | 0.75x | 23.1 | 400 | 100 |" in text
    assert "| hopper-friction | ppo-fast full | plain SB3 PPO | 3.0x | >= 2.5x | yes |" in text
    assert f"| {bp} | batched | 30 | 300,000 | 60.0x | 50.0x | 400 | 100 |" in text
    assert "wall time of the suite 1.0 min" in text


def test_a_failed_measurement_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "in_fresh_process", lambda m, b: {"error": "RuntimeError: boom"})
    args = ["--smoke", "--results-dir", str(tmp_path), "--only", "ppo: hopper-friction: ppo bare"]
    assert suite.main(args) == 1
    [table] = tmp_path.glob("suite_*.md")
    text = table.read_text()
    assert "**Failed:** ppo: hopper-friction: ppo bare: RuntimeError: boom" in text
    assert "| ppo bare | failed |" in text
