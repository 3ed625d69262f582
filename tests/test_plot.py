"""scripts/plot.py and the run reading behind it, on runs written here (TensorBoard events,
config.yaml, results.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from plasticity_rl.config import REPO_ROOT
from plasticity_rl.experiments.plots import RL_PANELS
from plasticity_rl.experiments.results import (
    ALIGN_POINTS,
    align,
    expand_per_task,
    final_value,
    find_runs,
    group_runs,
    lookup,
    markdown_table,
)
from plasticity_rl.registry import ConfigError

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from plot import main  # noqa: E402


def write_run(root: Path, name: str, config: dict, scalars: dict, results: dict | None = None):
    """A run directory: config.yaml, TensorBoard scalars ``{tag: [(step, value), ...]}``."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with SummaryWriter(str(run)) as writer:
        for tag, points in scalars.items():
            for step, value in points:
                writer.add_scalar(tag, value, step)
    if results is not None:
        (run / "results.json").write_text(json.dumps(results))
    return run


def rl_config(agent: str, seed: int) -> dict:
    env = {"id": "plasticity_rl/HopperFriction-v5", "n_envs": 1,
           "kwargs": {"every_env_steps": 50_000}}  # fmt: skip
    return {"env": env, "ppo": {"n_steps": 2048}, "seed": seed, "agent_preset": agent,
            "env_preset": "hopper-friction", "total_steps": 300_000}  # fmt: skip


def rl_runs(root: Path) -> None:
    """ppo: returns 100, 200, 300 (one constant per seed); ppo-cbp-l2: 1000, 1000, 1000, one
    seed logged on other steps (the curves must then be interpolated)."""
    steps = range(0, 300_001, 10_000)
    for agent, returns in (("ppo", [100, 200, 300]), ("ppo-cbp-l2", [1000, 1000, 1000])):
        for seed, value in enumerate(returns):
            grid = range(5_000, 300_001, 10_000) if agent != "ppo" and seed == 2 else steps
            scalars = {p["tag"]: [(s, 0.5) for s in grid] for p in RL_PANELS}
            scalars["rollout/ep_rew_mean"] = [(s, value) for s in grid]
            write_run(root, f"{agent}__s{seed}", rl_config(agent, seed), scalars)


def test_rl_report_with_the_experiments_figure_and_published_numbers(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rl_runs(tmp_path / "runs")
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--experiment", "dohare2024-rl-hopper",
                 "--out", str(out)]) == 0  # fmt: skip
    for suffix in (".png", ".pdf"):
        assert (out / f"fig3-return-and-network-health{suffix}").stat().st_size > 10_000
    table = (out / "results.md").read_text()
    assert "| setting | seeds | final return (last 10% of env steps) " in table
    assert "| published: final return (last 10% of env steps) |" in table
    # returns 100, 200, 300: mean 200; a resample of the 3 seeds is all-100 with probability
    # 1/27 = 3.7% > 2.5%, so the 95% interval runs from 100 to 300
    assert "| ppo | 3 | 200 [100, 300] | (Ant) collapses |" in table
    assert "| ppo-cbp-l2 | 3 | 1000 [1000, 1000] | (Ant) best |" in table
    assert "published: srank" not in table  # no published srank, no column for it
    assert "Scale small:" in table and "Dohare et al. 2024 (Nature)" in table
    assert table in capsys.readouterr().out


def test_unfinished_runs_are_left_out_and_named_unless_asked_for(tmp_path, capsys):
    """A table made while a sweep runs: the running run's partial curve stays out of the mean."""
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    rl_runs(runs)
    for seed in range(3):
        (runs / f"ppo__s{seed}" / "status.json").write_text('{"state": "complete"}')
    (runs / "ppo__s2" / "status.json").write_text('{"state": "running", "env_steps": 150000}')
    (runs / "ppo-cbp-l2__s0" / "status.json").write_text('{"state": "interrupted"}')
    out = tmp_path / "report"
    assert main([str(runs), "--experiment", "dohare2024-rl-hopper", "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "| ppo | 2 | 150 [100, 200] |" in table  # seeds 0 and 1 (returns 100 and 200)
    # seeds 1 and 2 have no status.json (runs made before it existed): counted as finished
    assert "| ppo-cbp-l2 | 2 | 1000 [1000, 1000] |" in table
    assert ("Left out, not finished (2 runs): `ppo-cbp-l2__s0` (interrupted), `ppo__s2` "
            "(running at 150,000 env steps).") in table  # fmt: skip
    assert f"warning: left out {runs / 'ppo__s2'} (running at 150,000 env steps)" in (
        capsys.readouterr().err
    )
    assert main([str(runs), "--experiment", "dohare2024-rl-hopper", "--out", str(out),
                 "--include-unfinished"]) == 0  # fmt: skip
    table = (out / "results.md").read_text()
    assert "| ppo | 3 | 200 [100, 300] |" in table and "Left out" not in table
    for seed in range(3):
        (runs / f"ppo__s{seed}" / "status.json").write_text('{"state": "running"}')
    for seed in range(3):
        (runs / f"ppo-cbp-l2__s{seed}" / "status.json").write_text('{"state": "failed"}')
    assert main([str(runs), "--out", str(out)]) == 2
    assert "allowed: a directory containing finished runs (its 6 runs are not finished" in (
        capsys.readouterr().err
    )


def supervised_runs(root: Path) -> None:
    """Two learning rates x 2 seeds of one preset, named as the training script names runs."""
    for lr, level in ((0.01, 60.0), (0.001, 40.0)):
        for seed in (0, 1):
            config = {"seed": seed, "agent_preset": "relu-adam", "env_preset": "split-mnist",
                      "optimizer": {"name": "adam", "lr": lr}, "data_dir": f"/d{seed}"}  # fmt: skip
            matrix = [[level + seed, 0.0], [level, level + 10 + seed]]
            scalars = {"cl/average_accuracy_seen": [(100, level), (200, level + 5)]}
            results = {"accuracy_matrix": matrix, "average_accuracy": float(np.mean(matrix[-1]))}
            write_run(root, f"split-mnist__relu-adam__s{seed}__2026{lr}", config, scalars, results)


def test_supervised_report_groups_by_config_without_an_experiment(tmp_path):
    pytest.importorskip("matplotlib")
    supervised_runs(tmp_path / "runs")
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    for name in ("curves", "accuracy-matrices"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file()
    table = (out / "results.md").read_text()
    # seeds differ in seed and data_dir only; the label names the key that differs
    # lr 0.01: final rows [60, 70] and [60, 71] -> averages 65, 65.5, mean 65.25
    assert "| relu-adam (optimizer.lr=0.01) | 2 | 65.25 [65, 65.5] |" in table
    assert "| relu-adam (optimizer.lr=0.001) | 2 | 45.25 [45, 45.5] |" in table
    assert "published" not in table  # no experiment, no published column
    assert "online accuracy" not in table  # no run has a number for that default column
    assert "Diverged" not in table


def test_the_table_names_runs_that_diverged(tmp_path):
    for seed, diverged in ((0, None), (1, 1200)):
        config = {"seed": seed, "agent_preset": "bp"}
        results = {"status": "diverged", "diverged_at_step": diverged}
        if diverged is None:
            results = {"status": "complete", "average_accuracy": 10.0, "diverged_at_step": None}
        write_run(tmp_path / "runs", f"bp__s{seed}", config, {}, results)
    assert main([str(tmp_path / "runs")]) == 0
    table = (tmp_path / "runs" / "report" / "results.md").read_text()
    assert "| bp | 2 | 10 (1 seed) |" in table  # the diverged seed has no final number
    assert "no final numbers, left out): bp seed 1 at step 1,200." in table


@pytest.mark.parametrize("broken", ["results.json", "config.yaml"])
def test_a_broken_run_is_skipped_with_its_path_named(broken, tmp_path, capsys):
    for seed in (0, 1, 2):
        config = {"seed": seed, "agent_preset": "bp"}
        write_run(tmp_path / "runs", f"bp__s{seed}", config, {}, {"average_accuracy": 10.0 + seed})
    bad = tmp_path / "runs" / "bp__s1" / broken
    bad.write_bytes(b'{"average_accuracy": 1' if broken == "results.json" else b"\xff\xfe: [")
    assert main([str(tmp_path / "runs")]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipped run {bad.parent}: {bad}" in captured.err
    assert "| bp | 2 | 11 [10, 12] |" in captured.out


def test_mixed_rl_and_supervised_runs_get_one_report_each(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rl_runs(tmp_path / "runs" / "rl")
    supervised_runs(tmp_path / "runs" / "cl")
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert "| ppo | 3 |" in (out / "rl" / "results.md").read_text()
    assert "relu-adam (optimizer.lr=0.01) | 2 |" in (out / "supervised" / "results.md").read_text()
    assert list((out / "rl").glob("*.png")) and list((out / "supervised").glob("*.png"))


def test_plot_a_chosen_metric(tmp_path):
    pytest.importorskip("matplotlib")
    rl_runs(tmp_path / "runs")
    assert main([str(tmp_path / "runs"), "--metric", "rollout/ep_rew_mean"]) == 0
    assert (tmp_path / "runs" / "report" / "metrics.png").is_file()


def test_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "RUNS_DIR" in capsys.readouterr().err


def test_align_keeps_common_steps_and_interpolates_on_the_overlap():
    same = align([(np.array([0.0, 10.0]), np.array([1.0, 2.0]))] * 2)
    assert same[0].tolist() == [0.0, 10.0] and same[1].tolist() == [[1.0, 2.0], [1.0, 2.0]]
    # value = step on [0, 10] and on [5, 15]: common range [5, 10], both read value = step
    steps, values = align([(np.array([0.0, 10.0]), np.array([0.0, 10.0])),
                           (np.array([5.0, 15.0]), np.array([5.0, 15.0]))])  # fmt: skip
    assert len(steps) == ALIGN_POINTS and steps[0] == 5.0 and steps[-1] == 10.0
    assert np.allclose(values, steps)
    # disjoint ranges: nothing in common, nothing extrapolated
    assert (
        align([(np.array([0.0, 1.0]), np.zeros(2)), (np.array([2.0, 3.0]), np.zeros(2))])[0].size
        == 0
    )


def test_final_values_and_lookup(tmp_path):
    steps = [(s, float(s)) for s in range(0, 101, 10)]
    results = {"online_accuracy": [80.0, 90.0], "gap": {"t0": {"depth": 3.0}}}
    run_dir = write_run(tmp_path, "x__s0", {"seed": 0}, {"a": steps}, results)
    run = find_runs(tmp_path)[0]
    assert run.path == run_dir and group_runs([run])[0].label == "x"
    # last 10% of steps 0..100: steps 90 and 100 -> mean 95
    assert final_value(run, {"scalar": "a"}) == 95.0
    assert final_value(run, {"results": "online_accuracy"}) == 85.0  # a list is averaged
    assert final_value(run, {"results": "online_accuracy.-1"}) == 90.0
    assert final_value(run, {"results": "online_accuracy", "reduce": "max"}) == 90.0
    assert final_value(run, {"results": "online_accuracy", "reduce": "min", "last": 1}) == 90.0
    assert final_value(run, {"results": "online_accuracy", "reduce": "max", "first": 1}) == 80.0
    with pytest.raises(ConfigError, match="table.reduce: got 'median'"):
        final_value(run, {"results": "online_accuracy", "reduce": "median"})
    assert final_value(run, {"results": "gap.t0.depth"}) == 3.0
    assert final_value(run, {"results": "gap.t1.depth"}) is None
    assert final_value(run, {"scalar": "missing"}) is None
    assert lookup({"a": [1, 2]}, "a.5") is None
    # a window of steps, ends included: steps 20, 30, 40
    assert final_value(run, {"scalar": "a", "steps": [20, 40]}) == 30.0
    assert final_value(run, {"scalar": "a", "steps": [101, 200]}) is None
    (run_dir / "status.json").write_text('{"state": "complete", "wall_seconds": 12.5}')
    assert final_value(find_runs(tmp_path)[0], {"status": "wall_seconds"}) == 12.5


def test_per_task_columns(tmp_path):
    # two tasks of 50 steps; the last 20% of each: steps 40-50 and 90-100
    columns = expand_per_task({"name": "r", "scalar": "a",
                               "per_task": {"every_steps": 50, "tasks": 2}})  # fmt: skip
    assert [c["name"] for c in columns] == ["r, task 1", "r, task 2"]
    write_run(tmp_path, "x__s0", {"seed": 0}, {"a": [(s, float(s)) for s in range(0, 101, 10)]})
    run = find_runs(tmp_path)[0]
    assert [final_value(run, c) for c in columns] == [45.0, 95.0]
    table = markdown_table(
        group_runs([run]),
        [{"name": "r", "scalar": "a", "per_task": {"every_steps": 50, "tasks": 2}}],
    )
    assert "| setting | seeds | r, task 1 | r, task 2 |" in table and "| 45 (1 seed) | 95" in table
    with pytest.raises(ConfigError, match="table.per_task"):
        expand_per_task({"name": "r", "scalar": "a", "per_task": {"every_steps": 0, "tasks": 2}})


def test_runs_of_one_setting_name_with_other_configs_are_told_apart(tmp_path):
    for env in ("hopper", "ant"):
        config = {"seed": 0, "agent_preset": "ppo", "env_preset": env}
        write_run(tmp_path / env, "ppo__s0", config, {"a": [(0, 1.0)]})
    labels = [g.label for g in group_runs(find_runs(tmp_path))]
    assert labels == ["ppo (env_preset=ant)", "ppo (env_preset=hopper)"]


def test_a_run_made_before_a_config_field_existed_groups_with_newer_runs(tmp_path):
    # seed 0 saved before the device option existed, seed 1 with its default
    write_run(tmp_path, "x__s0", {"seed": 0, "agent_preset": "bp"}, {"a": [(0, 1.0)]})
    write_run(tmp_path, "x__s1", {"seed": 1, "agent_preset": "bp", "device": "cpu"},
              {"a": [(0, 1.0)]})  # fmt: skip
    write_run(tmp_path, "y__s0", {"seed": 0, "agent_preset": "bp", "device": "auto"},
              {"a": [(0, 1.0)]})  # fmt: skip
    groups = group_runs(find_runs(tmp_path))
    assert [(g.label, len(g.runs)) for g in groups] == [("x", 2), ("y", 1)]
    assert all(r.config["device"] in ("cpu", "auto") for g in groups for r in g.runs)


def test_pruning_report(tmp_path):
    pytest.importorskip("matplotlib")
    fractions = [0.0, 0.5, 0.9, 0.98, 0.995]
    for alpha, drop in (("alpha1", 8.0), ("alpha2", 2.0)):
        for seed in (0, 1):
            config = {"seed": seed, "agent_preset": "powerprop", "network": {"alpha": alpha}}
            run = write_run(tmp_path / "runs", f"{alpha}__s{seed}", config, {})
            accuracy = [90.0 - drop * i - seed for i in range(len(fractions))]
            pruning = {"fractions": fractions, "average_accuracy": accuracy}
            (run / "pruning.json").write_text(json.dumps(pruning))
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--experiment", "schwarz2021-pruning",
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out / "accuracy-vs-pruning.png").is_file()
    table = (out / "results.md").read_text()
    # alpha2, seeds 0, 1: unpruned 90 - seed -> 89.5; 90% pruned (3rd fraction) 90 - 2 * 2 -
    # seed -> 85.5; 98% pruned (4th) 90 - 2 * 3 - seed -> 83.5; two seeds: interval [min, max]
    row = "| alpha2 | 2 | 89.5 [89, 90] | 85.5 [85, 86] | 83.5 [83, 84] | higher than baseline |"
    assert row in table
    assert "[data:" not in table  # the runs do not say their dataset: no note


def test_a_report_says_when_the_runs_used_another_dataset_than_the_experiment(tmp_path):
    for dataset, name in (("fashion_mnist", "other"), ("mnist", "same")):
        config = {"seed": 0, "agent_preset": "relu", "stream": {"dataset": dataset}}
        write_run(tmp_path / name, "relu__s0", config, {}, {"average_accuracy": 50.0})
        assert main([str(tmp_path / name), "--experiment", "bricken2023-split-mnist",
                     "--out", str(tmp_path / f"{name}-report")]) == 0  # fmt: skip
    other = (tmp_path / "other-report" / "results.md").read_text()
    assert "[data: fashion_mnist, not the preset's mnist] (small scale)" in other
    assert "[data:" not in (tmp_path / "same-report" / "results.md").read_text()
