"""The supervised script end to end on small files in the real formats."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from plasticity_rl.config import REPO_ROOT, load_preset, preset_names

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from train_supervised import main  # noqa: E402

SUPERVISED_AGENTS = [n for n in preset_names("agents") if "network" in load_preset("agents", n)]
QUIET = ["--no-progress", "--set", "train.probe_size=50", "--set", "train.log_every_steps=1"]


def run(tmp_path: Path, name: str, *args: str) -> dict:
    assert main([*args, "--logdir", str(tmp_path), "--name", name, *QUIET]) == 0
    return json.loads((tmp_path / name / "results.json").read_text())


def tags(run_dir: Path) -> set[str]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def stream_for(agent: str, dirs: dict[str, Path]) -> list[str]:
    """A small stream that suits the preset's learner."""
    if agent.startswith("regression"):
        examples = ["stream.kwargs.total_examples=600", "stream.kwargs.bin_size=200"]
        return ["--env", "slowly-changing-regression", *sets(examples)]
    if agent in ("bp", "l2", "snp", "cbp"):
        small = ["stream.kwargs.num_tasks=2", "network.hidden_sizes=[32,32,32]"]
        return ["--env", "online-permuted-mnist", "--data-dir", str(dirs["mnist"]), *sets(small)]
    return ["--env", "split-mnist", "--data-dir", str(dirs["mnist"])]


@pytest.mark.parametrize("agent", SUPERVISED_AGENTS)
def test_each_supervised_preset_runs_end_to_end(agent, tmp_path, mnist_dir):
    results = run(tmp_path, "r", *stream_for(agent, {"mnist": mnist_dir}), "--agent", agent)
    names = tags(tmp_path / "r")
    assert "plasticity/net/weight_magnitude" in names
    # the linear learner has no hidden layer, so no hidden-layer metrics
    assert ("plasticity/net/hidden1/srank99" in names) == (agent != "regression-linear")
    if agent.startswith("regression"):
        assert len(results["squared_error_bins"]) == 3 and "cl/squared_error" in names
    elif "online_accuracy" in results:
        assert len(results["online_accuracy"]) == 2 and "cl/online_accuracy" in names
    else:
        matrix = torch.tensor(results["accuracy_matrix"])
        assert matrix.shape == (5, 5)
        assert results["average_accuracy"] == pytest.approx(matrix[-1].mean().item())
        assert {"cl/accuracy/task0", "cl/average_accuracy", "cl/train_loss"} <= names


@pytest.mark.parametrize("env", ["split-mnist", "slowly-changing-regression"])
def test_a_diverging_run_says_when_its_loss_became_non_finite(env, tmp_path, mnist_dir):
    if env.startswith("slowly"):
        args = [*stream_for("regression-bp", {}), "--agent", "regression-bp"]
    else:  # Dohare et al.'s SGD learner, narrowed
        args = ["--env", env, "--data-dir", str(mnist_dir), "--agent", "bp",
                *sets(["network.hidden_sizes=[32,32]"])]  # fmt: skip
    assert run(tmp_path, "fine", *args)["diverged_at_step"] is None
    # SGD with step 1e12 overflows the weights within a few steps
    blown = run(tmp_path, "blown", *args, *sets(["optimizer.lr=1e12"]))
    assert isinstance(blown["diverged_at_step"], int) and blown["diverged_at_step"] >= 1


def test_class_incremental_cifar100_with_a_cnn_and_ewc(tmp_path, cifar100_dir):
    results = run(
        tmp_path, "c", "--env", "class-incremental-cifar100", "--agent", "relu-adam",
        "--data-dir", str(cifar100_dir), "--set", "network.kind=cnn",
        "--set", "network.channels=[4]", "--set", "network.hidden_sizes=[16]",
        "--set", "method.ewc={samples: 20}", "--set", "train.eval_examples_per_task=10",
    )  # fmt: skip
    assert len(results["accuracy_matrix"]) == 20
    assert results["stream"]["stream"] == "class_incremental"


def test_stability_gap_is_measured_with_continual_evaluation(tmp_path, mnist_dir):
    results = run(
        tmp_path, "g", "--env", "rotated-mnist", "--agent", "relu-adam",
        "--data-dir", str(mnist_dir), "--set", "train.batch_size=16",
        "--set", "train.eval_every_steps=2", "--set", "method.replay={}",
    )  # fmt: skip
    gaps = results["stability_gap"]
    assert set(gaps) == {"task0_during_task1", "task0_during_task2", "task1_during_task2"}
    assert all("gap_depth" in g and "time_to_recover" in g for g in gaps.values())
    assert "cl/eval/task0" in tags(tmp_path / "g")


def test_resume_at_a_task_boundary_reproduces_the_uninterrupted_run(tmp_path, mnist_dir):
    args = ["--env", "split-mnist", "--agent", "topk-adagrad", "--data-dir", str(mnist_dir),
            "--set", "method.replay={capacity: 50}", "--set", "train.batch_size=16"]  # fmt: skip
    whole = run(tmp_path, "whole", *args)
    assert main([*args, "--logdir", str(tmp_path), "--name", "cut", *QUIET,
                 "--set", "train.stop_after_tasks=2"]) == 0  # fmt: skip
    assert not (tmp_path / "cut" / "results.json").exists()
    resume = ["--resume", str(tmp_path / "cut"), "--set", "train.stop_after_tasks=null"]
    assert main([*resume, "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    a = torch.load(tmp_path / "whole/checkpoints/latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut/checkpoints/latest.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "split-mnist", "--agent", "relu-adam", "--data-dir", "/nonexistent"],
         r"train-images-idx3-ubyte.*/nonexistent"),
        (["--env", "split-mnist", "--agent", "relu-adam", "--set", "train.batch_size=0"],
         r"train.batch_size: got 0"),
        (["--env", "online-permuted-mnist", "--agent", "bp", "--set", "method.ewc={}"],
         r"method.ewc: got 'ewc'; allowed: methods without task boundaries"),
        (["--env", "split-mnist", "--agent", "relu-adm"], r"agent preset: got 'relu-adm'"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_and_writes_nothing(
    argv, message, tmp_path, capsys, mnist_dir, monkeypatch
):
    monkeypatch.setenv("PLASTICITY_RL_DATA", str(tmp_path / "cache"))
    if "/nonexistent" not in argv:
        argv = [*argv, "--data-dir", str(mnist_dir)]
    argv = [*argv, "--logdir", str(tmp_path / "runs"), "--no-progress"]
    monkeypatch.setattr(
        "urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline"))
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err, re.S), err
    assert not (tmp_path / "runs").exists()
