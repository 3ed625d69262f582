"""scripts/sweep.py: tiny supervised sweeps, run locally and on a local Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from plasticity_rl.config import REPO_ROOT, to_yaml
from plasticity_rl.experiments.runner import CHECKPOINT, parse_data_dirs, plan
from plasticity_rl.experiments.spec import load_experiment, resolve_trial

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
    assert "sweep summary: 2 done, 0 skipped, 1 failed" in out
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
    assert code == 1 and "sweep summary: 0 done, 2 skipped, 1 failed" in out


def test_dry_run_prints_the_trials_and_writes_nothing(experiment, tmp_path, capsys):
    logdir = tmp_path / "sweeps"
    code, out, _ = sweep(capsys, str(experiment), "--dry-run", "--scale", "paper",
                         "--logdir", str(logdir), "--only", "sgd")  # fmt: skip
    assert code == 0 and not logdir.exists()
    assert "2 trials" in out and "[run] tiny/sgd__s1" in out
    assert "--agent " + str((logdir / "paper" / "tiny" / "presets" / "sgd.yaml").resolve()) in out


def test_without_ray_the_error_says_how_to_install_it(experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, _, err = sweep(capsys, str(experiment), "--logdir", str(tmp_path), "--only", "adam")
    assert code == 2 and 'pip install -e ".[sweep]"' in err and "--executor" in err


def test_plan_skips_resumes_restarts_and_refuses_other_configs(experiment, tmp_path):
    exp = load_experiment(experiment, "paper")
    logdir = tmp_path.resolve()
    presets = logdir / "tiny" / "presets"
    trials = {t.run_name: t for t in exp.trials}

    def make_run(name: str, *files: str, lr: float | None = None) -> None:
        cfg = resolve_trial(trials[name], presets)
        if lr is not None:
            cfg.optimizer["lr"] = lr
        run = logdir / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(to_yaml(cfg))
        for file in files:
            (run / file).parent.mkdir(parents=True, exist_ok=True)
            (run / file).write_text("{}")

    make_run("tiny/adam__s0", "results.json")  # finished
    make_run("tiny/adam__s1", str(CHECKPOINT))  # interrupted after a checkpoint
    make_run("tiny/sgd__s0")  # interrupted before one
    make_run("tiny/sgd__s1", "results.json", lr=0.5)  # made with another config
    jobs, settled = plan(exp, logdir, data_dirs=parse_data_dirs(["mnist=/data/m"]))
    actions = {j.name: j.action for j in jobs}
    assert actions == {"tiny/adam__s1": "resume", "tiny/sgd__s0": "restart",
                       "tiny/broken__s0": "run", "tiny/broken__s1": "run"}  # fmt: skip
    status = {o.name: o.status for o in settled}
    assert status == {"tiny/adam__s0": "skipped", "tiny/sgd__s1": "failed"}
    conflict = next(o for o in settled if o.status == "failed").message
    assert "optimizer.lr: 0.5 != 0.01" in conflict
    # the data directory goes to the dataset it was given for
    assert jobs[0].argv[-2:] == ["--data-dir", "/data/m"]
