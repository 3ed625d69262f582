"""scripts/sweep.py: tiny supervised sweeps, run locally and on a local Ray."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from plasticity_rl.config import REPO_ROOT, to_yaml
from plasticity_rl.experiments.runner import (
    CHECKPOINT,
    TRIAL_LOCK,
    parse_data_dirs,
    plan,
    run_trial,
    summary,
)
from plasticity_rl.experiments.spec import load_experiment, resolve_trial
from plasticity_rl.rundir import LOCK

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from sweep import main  # noqa: E402

SPEC = {
    "title": "tiny sweep",
    "script": "supervised",
    "env": "split-mnist",
    "agents": [
        {"name": "adam", "agent": "relu-adam"},
        {"name": "sgd", "agent": "relu-adam", "config": {"optimizer": {"name": "sgd", "lr": 0.01}}},
        # 10 classes cannot be split into tasks of 3: the script fails when it builds the stream
        {"name": "broken", "agent": "relu-adam", "set": ["stream.kwargs.classes_per_task=3"]},
    ],
    "set": ["network.hidden_sizes=[8]", "train.probe_size=20"],
    "scales": {
        "small": {"budget": "one seed", "seeds": [0]},
        "paper": {"budget": "two seeds", "seeds": 2},
    },
}


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def sweep(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sweep_runs_skips_and_reports_failures(executor, experiment, tmp_path, mnist_dir, capsys):
    if executor == "ray":
        pytest.importorskip("ray")
    logdir = tmp_path / "sweeps"
    args = [str(experiment), "--executor", executor, "--max-concurrent", "2",
            "--logdir", str(logdir), "--data-dir", str(mnist_dir)]  # fmt: skip
    code, out, _ = sweep(capsys, *args)
    assert code == 1, out
    # one seed per setting: one trial per run
    assert "3 runs in" in out and "3 to run in 3 trials (0 batched)" in out
    assert "sweep summary (trials): 2 done (2 runs), 0 skipped (0 runs), 1 failed (1 run)" in out
    runs = logdir / "small" / "tiny"
    for name in ("adam__s0", "sgd__s0"):
        run = runs / name
        assert json.loads((run / "results.json").read_text())["average_accuracy"] >= 0
        assert list(run.glob("events.out.tfevents.*")) and (run / CHECKPOINT).is_file()
        assert "run directory:" in (run / "trial.log").read_text()
    config = yaml.safe_load((runs / "sgd__s0" / "config.yaml").read_text())
    assert config["optimizer"] == {"name": "sgd", "lr": 0.01}
    assert config["agent_preset"] == str(runs / "presets" / "sgd.yaml")
    assert config["data_dir"] == str(mnist_dir) and config["network"]["hidden_sizes"] == [8]
    # the failure is reported with the tail of its log, which is kept in the run directory
    assert "tiny/broken__s0 failed" in out and "classes_per_task" in out
    assert "classes_per_task" in (runs / "broken__s0" / "trial.log").read_text()
    assert not list(runs.glob("*.trial.log"))  # live logs were moved into the run directories
    # restarted: the finished trials are skipped, the failed one is tried again
    code, out, _ = sweep(capsys, *args)
    assert code == 1 and "summary (trials): 0 done (0 runs), 2 skipped (2 runs), 1 failed" in out


def test_dry_run_prints_the_trials_and_writes_nothing(experiment, tmp_path, capsys):
    logdir = tmp_path / "sweeps"
    code, out, _ = sweep(capsys, str(experiment), "--dry-run", "--scale", "paper",
                         "--logdir", str(logdir), "--only", "sgd")  # fmt: skip
    assert code == 0 and not logdir.exists()
    assert "2 runs in" in out and "[run] tiny/sgd__s1" in out and "--seed 1 " in out
    assert "--agent " + str((logdir / "paper" / "tiny" / "presets" / "sgd.yaml").resolve()) in out


def test_without_ray_the_error_says_how_to_install_it(experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, _, err = sweep(capsys, str(experiment), "--logdir", str(tmp_path), "--only", "adam")
    assert code == 2 and 'pip install -e ".[sweep]"' in err and "--executor" in err


def test_plan_skips_resumes_restarts_and_refuses_other_configs(experiment, tmp_path):
    exp = load_experiment(experiment, "paper")
    logdir = tmp_path.resolve()
    trials = {t.run_name: t for t in exp.trials}
    make_run(logdir, trials["tiny/adam__s0"], "results.json")  # finished
    make_run(logdir, trials["tiny/adam__s1"], str(CHECKPOINT))  # interrupted after a checkpoint
    make_run(logdir, trials["tiny/sgd__s0"])  # interrupted before one
    make_run(logdir, trials["tiny/sgd__s1"], "results.json", lr=0.5)  # made with another config
    jobs, settled = plan(exp, logdir, data_dirs=parse_data_dirs(["mnist=/data/m"]))
    actions = {j.name: j.action for j in jobs}
    # the dataset is not at /data/m: the seeds of a setting are not batched (one job each)
    assert actions == {"tiny/adam__s1": "resume", "tiny/sgd__s0": "restart",
                       "tiny/broken__s0": "run", "tiny/broken__s1": "run"}  # fmt: skip
    status = {o.name: o.status for o in settled}
    assert status == {"tiny/adam__s0": "skipped", "tiny/sgd__s1": "failed"}
    conflict = next(o for o in settled if o.status == "failed").message
    assert "optimizer.lr: 0.5 != 0.01" in conflict
    # the data directory goes to the dataset it was given for
    assert jobs[0].argv[-2:] == ["--data-dir", "/data/m"]


REGRESSION = {
    "title": "tiny regression",
    "script": "supervised",
    "env": "slowly-changing-regression",
    "agents": [
        {"name": "bp", "agent": "regression-bp"},
        {"name": "cbp", "agent": "regression-cbp"},
    ],
    # 300 examples in bins of 100: 3 bins, a checkpoint after each
    "set": ["stream.kwargs.total_examples=300", "stream.kwargs.bin_size=100"],
    "scales": {"small": {"budget": "3 seeds", "seeds": 3}, "paper": {"budget": "-", "seeds": 3}},
}
# Top-K with the GABA switch: single runs train it, the batched builder refuses it
TOPK = {
    "name": "topk",
    "agent": "regression-bp",
    "config": {
        "network": {
            "activation": {"name": "topk", "k": 2, "gaba_switch_T": 10.0},
            "init": "kaiming_uniform",
        }
    },
}


def write_spec(tmp_path: Path, spec: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_files(run_dir: Path) -> set[str]:
    """A run directory's files (TensorBoard event files by kind, their names hold times)."""
    return {
        "events" if p.name.startswith("events.") else p.relative_to(run_dir).as_posix()
        for p in run_dir.rglob("*")
    }


def test_batched_sweep_writes_the_runs_of_single_trials_and_reruns_missing_seeds(tmp_path, capsys):
    spec = write_spec(tmp_path, REGRESSION, "reg")
    args = [str(spec), "--executor", "local", "--logdir", str(tmp_path / "batched")]
    code, out, _ = sweep(capsys, *args)
    assert code == 0, out
    # 2 settings x 3 seeds: one batched trial per setting
    assert "6 runs in" in out and "6 to run in 2 trials (2 batched)" in out
    assert "sweep summary (trials): 2 done (6 runs), 0 skipped (0 runs), 0 failed (0 runs)" in out
    assert "done: reg/bp__s0,1,2" in out and "done: reg/cbp__s0,1,2" in out
    code, out, _ = sweep(capsys, str(spec), "--executor", "local", "--no-batch",
                         "--logdir", str(tmp_path / "single"))  # fmt: skip
    assert code == 0 and "6 to run in 6 trials (0 batched)" in out
    batched, single = tmp_path / "batched" / "small" / "reg", tmp_path / "single" / "small" / "reg"
    for setting in ("bp", "cbp"):
        for seed in range(3):
            run, alone = batched / f"{setting}__s{seed}", single / f"{setting}__s{seed}"
            assert run_files(run) == run_files(alone)
            assert (run / "config.yaml").read_text() == (alone / "config.yaml").read_text()
            results = json.loads((run / "results.json").read_text())
            expected = json.loads((alone / "results.json").read_text())
            assert results.keys() == expected.keys() and len(results["squared_error_bins"]) == 3
            # the batched run is the single run of its seed (same data, initial network, steps)
            errors = results["squared_error_bins"]
            assert errors == pytest.approx(expected["squared_error_bins"], rel=1e-4)
            assert "3 batched runs (seeds [0, 1, 2])" in (run / "trial.log").read_text()
    assert not list(batched.glob("*.trial.log"))  # live logs were moved into the run directories
    # rerun: every run is finished
    code, out, _ = sweep(capsys, *args)
    assert code == 0 and "0 to run in 0 trials" in out and "6 skipped (6 runs)" in out
    # one seed's run deleted: only that seed runs, on its own
    shutil.rmtree(batched / "cbp__s1")
    code, out, _ = sweep(capsys, *args)
    assert code == 0 and "1 to run in 1 trial (0 batched)" in out
    assert "sweep summary (trials): 1 done (1 run), 5 skipped (5 runs)" in out
    assert "done: reg/cbp__s1" in out and (batched / "cbp__s1" / "results.json").is_file()


def test_dry_run_shows_batched_commands_and_why_a_setting_is_not_batched(tmp_path, capsys):
    spec = write_spec(tmp_path, {**REGRESSION, "agents": [*REGRESSION["agents"], TOPK]}, "reg")
    logdir = tmp_path / "sweeps"
    code, out, _ = sweep(capsys, str(spec), "--dry-run", "--logdir", str(logdir))
    assert code == 0 and not logdir.exists()
    assert "9 to run in 5 trials (2 batched)" in out  # bp and cbp batched, topk one per seed
    assert "[run] reg/bp__s0,1,2" in out and "--seeds 0,1,2 --name reg/bp " in out
    assert "[run] reg/topk__s2" in out and "--seed 2 --name reg/topk__s2 " in out
    assert "note: reg/topk: seeds not batched: network.activation.gaba_switch_T" in out
    code, out, _ = sweep(capsys, str(spec), "--dry-run", "--no-batch", "--logdir", str(logdir))
    assert "9 to run in 9 trials (0 batched)" in out and "--seeds" not in out


def make_run(logdir: Path, trial, *files: str, lr: float | None = None) -> None:
    """A run directory of ``trial`` with its config (optionally another lr) and ``files``."""
    cfg = resolve_trial(trial, logdir / trial.experiment / "presets")
    if lr is not None:
        cfg.optimizer["lr"] = lr
    run = logdir / trial.run_name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    for file in files:
        (run / file).parent.mkdir(parents=True, exist_ok=True)
        (run / file).write_text("{}")


def test_plan_batches_the_unfinished_seeds_of_a_setting_and_restarts_them(tmp_path):
    exp = load_experiment(write_spec(tmp_path, REGRESSION, "reg"))
    logdir = tmp_path.resolve()
    trials = {t.run_name: t for t in exp.trials}
    make_run(logdir, trials["reg/bp__s0"], "results.json")  # finished
    make_run(logdir, trials["reg/bp__s1"], str(CHECKPOINT))  # interrupted after a checkpoint
    make_run(logdir, trials["reg/cbp__s0"], "results.json")
    make_run(logdir, trials["reg/cbp__s1"], "results.json")  # cbp: only seed 2 is missing
    jobs, settled = plan(exp, logdir)
    # bp: seeds 1 and 2 batched; seed 2 has no checkpoint, so both restart from scratch
    assert [(j.name, j.action) for j in jobs] == [("reg/bp__s1,2", "restart"),
                                                  ("reg/cbp__s2", "run")]  # fmt: skip
    assert jobs[0].run_dirs == [logdir / "reg" / "bp__s1", logdir / "reg" / "bp__s2"]
    assert "--seeds 1,2 --name reg/bp " in jobs[0].command_line()
    assert sorted(o.name for o in settled if o.status == "skipped") == [
        "reg/bp__s0", "reg/cbp__s0", "reg/cbp__s1"]  # fmt: skip
    # without batching the interrupted run is resumed from its checkpoint
    jobs, _ = plan(exp, logdir, batch=False)
    actions = {j.name: j.action for j in jobs}
    assert actions == {"reg/bp__s1": "resume", "reg/bp__s2": "run", "reg/cbp__s2": "run"}
    # once every unfinished seed has a checkpoint, they are resumed together
    make_run(logdir, trials["reg/bp__s2"], str(CHECKPOINT))
    jobs, _ = plan(exp, logdir)
    assert [(j.name, j.action) for j in jobs] == [("reg/bp__s1,2", "resume"),
                                                  ("reg/cbp__s2", "run")]  # fmt: skip
    bp = logdir / "reg" / "bp"
    assert f"--resume {bp}__s1 {bp}__s2 --no-progress" in jobs[0].command_line()


def test_a_run_made_before_a_config_field_existed_is_not_a_conflict(tmp_path):
    """A finished run whose config.yaml lacks a field added later: the same run when the
    trial holds that field's default (``device: cpu``), a conflict when it holds another."""
    exp = load_experiment(write_spec(tmp_path, REGRESSION, "reg"))
    logdir = tmp_path.resolve()
    trials = {t.run_name: t for t in exp.trials}
    make_run(logdir, trials["reg/bp__s0"], "results.json")
    config = logdir / "reg" / "bp__s0" / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    assert saved.pop("device") == "cpu"
    config.write_text(yaml.safe_dump(saved))
    _, settled = plan(exp, logdir)
    assert {o.name: o.status for o in settled} == {"reg/bp__s0": "skipped"}
    _, settled = plan(exp, logdir, extra=["device=auto"])
    conflict = next(o for o in settled if o.name == "reg/bp__s0")
    assert conflict.status == "failed" and "device: 'cpu' != 'auto'" in conflict.message


def test_a_run_another_process_trains_is_left_alone(tmp_path):
    exp = load_experiment(write_spec(tmp_path, REGRESSION, "reg"))
    logdir = tmp_path.resolve()
    trials = {t.run_name: t for t in exp.trials}
    for seed in range(3):  # bp: seed 0 trained by a live process (no checkpoint yet), 1-2 fresh
        make_run(logdir, trials[f"reg/cbp__s{seed}"], "results.json")
    make_run(logdir, trials["reg/bp__s0"], LOCK)
    (logdir / "reg" / "bp__s0" / LOCK).write_text(f"{os.getppid()}\n")
    jobs, settled = plan(exp, logdir)
    assert [(j.name, j.action, j.planned) for j in jobs] == [
        ("reg/bp__s1,2", "run", ["run", "run"])]  # fmt: skip
    held = next(o for o in settled if o.name == "reg/bp__s0")
    assert held.status == "skipped" and held.message == f"process {os.getppid()} trains it"
    # the lock of a process that is gone is no one's: the run restarts
    (logdir / "reg" / "bp__s0" / LOCK).write_text("999999999\n")
    jobs, _ = plan(exp, logdir)
    assert [(j.name, j.action) for j in jobs] == [("reg/bp__s0,1,2", "restart")]


@pytest.mark.parametrize("change", ["finished", "checkpointed", "started"])
def test_a_trial_whose_runs_changed_since_the_plan_is_skipped_untouched(change, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """Two sweeps of one experiment: what the other did after this one planned is kept."""
    exp = load_experiment(write_spec(tmp_path, REGRESSION, "reg"))
    logdir = tmp_path.resolve()
    trials = {t.run_name: t for t in exp.trials}
    make_run(logdir, trials["reg/bp__s0"])  # interrupted before a checkpoint
    jobs, _ = plan(exp, logdir)
    job = next(j for j in jobs if j.name == "reg/bp__s0,1,2")
    assert job.action == "restart" and job.planned == ["restart", "run", "run"]
    other = {"finished": ("bp__s0", "results.json"), "checkpointed": ("bp__s0", str(CHECKPOINT)),
             "started": ("bp__s2", "config.yaml")}[change]  # fmt: skip
    (logdir / "reg" / other[0] / other[1]).parent.mkdir(parents=True, exist_ok=True)
    (logdir / "reg" / other[0] / other[1]).write_text("{}")
    monkeypatch.setattr("plasticity_rl.experiments.runner.load_script_main",
                        lambda script: pytest.fail("the script ran"))  # fmt: skip
    outcome = run_trial(job)
    assert outcome.status == "skipped"
    after = {"finished": "restart -> skip", "checkpointed": "restart -> resume",
             "started": "run -> restart"}[change]  # fmt: skip
    assert f"{other[0]}: {after}" in outcome.message
    assert (logdir / "reg" / other[0] / other[1]).is_file()  # nothing deleted
    assert not list((logdir / "reg").glob("*trial.log"))  # nothing written
    # the summary says why
    assert "reg/bp__s0,1,2 skipped: its runs changed" in summary([outcome])


def test_a_trial_another_sweep_runs_is_skipped_and_its_lock_is_released(tmp_path, monkeypatch):
    """Two sweeps reaching one trial at once: both would pass :func:`state_change` (nothing
    changed yet) and the second would delete the run the first just started; the trial lock
    beside the run directories lets only one through."""
    exp = load_experiment(write_spec(tmp_path, REGRESSION, "reg"))
    logdir = tmp_path.resolve()
    trials = {t.run_name: t for t in exp.trials}
    make_run(logdir, trials["reg/bp__s1"])  # interrupted before a checkpoint: a restart
    jobs, _ = plan(exp, logdir, batch=False)
    job = next(j for j in jobs if j.name == "reg/bp__s1")
    assert job.action == "restart"
    lock = logdir / "reg" / f"bp__s1.{TRIAL_LOCK}"
    lock.write_text(f"{os.getppid()}\n")  # another live process runs the trial
    monkeypatch.setattr("plasticity_rl.experiments.runner.load_script_main",
                        lambda script: pytest.fail("the script ran"))  # fmt: skip
    outcome = run_trial(job)
    assert outcome.status == "skipped"
    assert outcome.message == f"another sweep runs bp__s1 (process {os.getppid()} holds {lock})"
    assert (logdir / "reg" / "bp__s1" / "config.yaml").is_file()  # nothing deleted
    # a lock whose process is gone is taken over; the lock is held while the script runs and
    # released after it
    lock.write_text("999999999\n")
    seen = []

    def script(argv):
        seen.append(lock.read_text())
        (logdir / "reg" / "bp__s1").mkdir()
        (logdir / "reg" / "bp__s1" / "results.json").write_text("{}")
        return 0

    monkeypatch.setattr("plasticity_rl.experiments.runner.load_script_main", lambda name: script)
    outcome = run_trial(job)
    assert outcome.status == "done", outcome.message
    assert seen == [f"{os.getpid()}\n"] and not lock.exists()


def test_online_permuted_settings_are_batched_when_their_dataset_is_on_disk(
    tmp_path, mnist_dir, capsys
):
    online = {**REGRESSION, "env": "online-permuted-mnist", "agents": ["bp"], "set": []}
    exp = load_experiment(write_spec(tmp_path, online, "online"))
    jobs, _ = plan(exp, tmp_path / "plan", data_dirs=parse_data_dirs([str(mnist_dir)]))
    assert [j.name for j in jobs] == ["online/bp__s0,1,2"]
    assert jobs[0].argv[-2:] == ["--data-dir", str(mnist_dir)]
    # run: 2 tasks of the first 50 of the 300 images each, so the tasks end at steps 50 and 100
    short = ["stream.kwargs.num_tasks=2", "stream.kwargs.examples_per_task=50",
             "network.hidden_sizes=[8]", "train.probe_size=20"]  # fmt: skip
    sets = [arg for item in short for arg in ("--set", item)]
    logdir = tmp_path / "sweeps"
    code, out, _ = sweep(capsys, str(tmp_path / "online.yaml"), "--executor", "local", *sets,
                         "--logdir", str(logdir), "--data-dir", str(mnist_dir))  # fmt: skip
    assert code == 0 and "1 done (3 runs)" in out, out
    for seed in range(3):
        results = json.loads(
            (logdir / "small" / "online" / f"bp__s{seed}" / "results.json").read_text()
        )
        assert results["task_end_steps"] == [50, 100] and len(results["online_accuracy"]) == 2
    # the check reads the dataset and never downloads it: without it the seeds run one by one
    empty = tmp_path / "empty"
    empty.mkdir()
    jobs, _ = plan(exp, tmp_path / "plan", data_dirs=parse_data_dirs([str(empty)]))
    assert [j.name for j in jobs] == ["online/bp__s0", "online/bp__s1", "online/bp__s2"]
    assert "seeds not batched: mnist" in jobs[0].note and "downloading is off" in jobs[0].note
    assert not list(empty.iterdir())


@pytest.mark.parametrize("bad", ["abc", "nan", "1e-3x"])
def test_one_bad_trial_fails_alone_and_the_others_run_batched(bad, tmp_path, capsys):
    broken = {"name": "bad", "agent": "regression-bp", "config": {"optimizer": {"lr": bad}}}
    spec = write_spec(tmp_path, {**REGRESSION, "agents": [REGRESSION["agents"][0], broken]}, "r")
    code, out, _ = sweep(capsys, str(spec), "--executor", "local", "--logdir", str(tmp_path / "s"))
    assert code == 1, out
    assert "sweep summary (trials): 1 done (3 runs), 0 skipped (0 runs)" in out
    assert "done: r/bp__s0,1,2" in out and "r/bad__s0" in out
    assert re.search(r"error: optimizer\.lr: got '?" + re.escape(bad), out), out


def test_a_trial_stopped_by_a_signal_stops_the_local_sweep(tmp_path, capsys, monkeypatch):
    calls = []

    def interrupted_script(argv):
        calls.append(argv)
        return 130  # what train_*.py returns after checkpointing on SIGINT

    monkeypatch.setattr("plasticity_rl.experiments.runner.load_script_main",
                        lambda script: interrupted_script)  # fmt: skip
    spec = write_spec(tmp_path, REGRESSION, "r")
    code, _, err = sweep(capsys, str(spec), "--executor", "local", "--logdir", str(tmp_path / "s"))
    assert code == 130 and len(calls) == 1
    assert err.startswith("interrupted: the sweep stopped") and "run the same command" in err
