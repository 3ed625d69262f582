"""The supervised script end to end on small files in the real formats."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from plasticity_rl.config import REPO_ROOT, load_preset, preset_names, resolve
from plasticity_rl.metrics import collect_activations, layer_health
from plasticity_rl.registry import ConfigError
from plasticity_rl.rundir import CHECKPOINT
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.datasets import SOURCES, write_dataset
from plasticity_rl.supervised.learner import build_learner, build_stream

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from train_supervised import main  # noqa: E402

SUPERVISED_AGENTS = [n for n in preset_names("agents") if "network" in load_preset("agents", n)
                     and load_preset("agents", n)["network"].get("kind") != "resnet18"
                     and not n.startswith("imagenet-")]  # fmt: skip
"""Learners for the MNIST-sized streams (ResNet-18's and Continual ImageNet's: their own tests)."""
RESNET_AGENTS = [n for n in preset_names("agents") if "network" in load_preset("agents", n)
                 and load_preset("agents", n)["network"].get("kind") == "resnet18"]  # fmt: skip
QUIET = ["--no-progress", "--set", "train.probe_size=50", "--set", "train.log_every_steps=1"]


def run(tmp_path: Path, name: str, *args: str) -> dict:
    assert main([*args, "--logdir", str(tmp_path), "--name", name, *QUIET]) == 0
    return json.loads((tmp_path / name / "results.json").read_text())


def errors(err: str) -> str:
    """stderr without the warnings (the test datasets are not the published MNIST)."""
    return "".join(line for line in err.splitlines(True) if not line.startswith("warning: "))


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
    if agent in ("bp", "l2", "snp", "cbp") or agent.startswith("bp-"):
        small = ["stream.kwargs.num_tasks=2", "network.hidden_sizes=[32,32,32]"]
        return ["--env", "online-permuted-mnist", "--data-dir", str(dirs["mnist"]), *sets(small)]
    # one epoch per task (the paper presets, e.g. sdmlp, train 500)
    return ["--env", "split-mnist", "--data-dir", str(dirs["mnist"]),
            *sets(["train.epochs_per_task=1"])]  # fmt: skip


def test_gradient_norm_is_logged_where_the_steps_leave_gradients(tmp_path):
    # plain SGD in the hand-written backward takes fused steps without p.grad: no tag there
    short = ["stream.kwargs.total_examples=200", "stream.kwargs.bin_size=100"]
    regression = ["--env", "slowly-changing-regression", *sets(short)]
    autograd = ["network.activation=tanh", "train.hand_backprop=false"]
    for name, overrides, logged in [("fused", [], False), ("tanh", autograd, True)]:
        run(tmp_path, name, *regression, "--agent", "regression-bp", *sets(overrides))
        names = tags(tmp_path / name)
        assert ("plasticity/net/gradient_norm" in names) == logged
        assert ("plasticity/net/hidden1/grama_dormant_ratio" in names) == logged
        assert ("plasticity/net/hidden1/saturated_fraction" in names) == (name == "tanh")


def test_network_options_train_with_cbp_redo_and_shrink_and_perturb(tmp_path):
    short = ["stream.kwargs.total_examples=200", "stream.kwargs.bin_size=100"]
    options = ["network.activation=crelu", "network.layer_norm=true", "network.dropout=0.1",
               "method.redo={period: 20}", "method.shrink_and_perturb={}"]  # fmt: skip
    results = run(tmp_path, "r", "--env", "slowly-changing-regression", *sets(short),
                  "--agent", "regression-cbp", *sets(options))  # fmt: skip
    assert len(results["squared_error_bins"]) == 2
    names = tags(tmp_path / "r")
    assert {"plasticity/net/hidden1/replacements", "plasticity/net/hidden1/resets"} <= names
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["network"]["layer_norm"] is True and config["network"]["dropout"] == 0.1


@pytest.mark.parametrize("agent", SUPERVISED_AGENTS)
def test_each_supervised_preset_runs_end_to_end(agent, tmp_path, mnist_dir):
    results = run(tmp_path, "r", *stream_for(agent, {"mnist": mnist_dir}), "--agent", agent)
    names = tags(tmp_path / "r")
    assert "plasticity/net/weight_magnitude" in names
    # the linear learner has no hidden layer, so no hidden-layer metrics
    for metric in ("srank99", "feature_norm", "duplicate_fraction"):
        assert (f"plasticity/net/hidden1/{metric}" in names) == (agent != "regression-linear")
    assert "plasticity/net/output_churn" in names  # every stream logs at least twice
    if agent.startswith("regression"):
        assert len(results["squared_error_bins"]) == 3 and "cl/squared_error" in names
    elif "online_accuracy" in results:
        assert len(results["online_accuracy"]) == 2 and "cl/online_accuracy" in names
    else:
        matrix = torch.tensor(results["accuracy_matrix"])
        assert matrix.shape == (5, 5)
        assert results["average_accuracy"] == pytest.approx(matrix[-1].mean().item())
        assert {"cl/accuracy/task0", "cl/average_accuracy", "cl/train_loss"} <= names


def test_online_plasticity_is_measured_before_each_task_on_its_first_examples(tmp_path, mnist_dir):
    # Dohare et al.'s Online Permuted MNIST code probes the network before each task, on the
    # first 2,000 examples of that task (here 50); other streams probe after each task.
    results = run(tmp_path, "r", *stream_for("bp", {"mnist": mnist_dir}), "--agent", "bp")
    entries, n = results["plasticity"], results["task_end_steps"][0]
    assert [(e["task"], e["timing"], e["step"]) for e in entries] == [
        (0, "before_task", 0),
        (1, "before_task", n),
    ]
    assert entries[1]["probe"] == "the first 50 training examples of task 1, before training on it"
    assert results["final_plasticity"] == entries[1]
    # the first entry is the untrained network on the first 50 examples of task 0
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    cfg = resolve(SupervisedRunConfig, saved)
    stream = build_stream(cfg)
    model = build_learner(cfg, stream)[0]
    activations = collect_activations(model, stream.tasks[0].train_x[:50])
    for layer, h in activations.items():
        for metric, value in layer_health(h).items():
            assert entries[0]["metrics"][f"{layer}/{metric}"] == pytest.approx(value)
    events = EventAccumulator(str(tmp_path / "r"))
    events.Reload()
    probe_tasks = [(e.step, e.value) for e in events.Scalars("plasticity/net/probe_task")]
    assert probe_tasks == [(0, 0.0), (n, 1.0)]


def test_task_streams_measure_plasticity_after_each_task(tmp_path, mnist_dir):
    results = run(tmp_path, "r", "--env", "split-mnist", "--data-dir", str(mnist_dir), "--agent",
                  "relu-adam", *sets(["stream.kwargs.classes_per_task=5"]))  # fmt: skip
    entries = results["plasticity"]
    assert [(e["task"], e["timing"]) for e in entries] == [(0, "after_task"), (1, "after_task")]
    assert [e["step"] for e in entries] == results["task_end_steps"]


@pytest.mark.parametrize("env", ["split-mnist", "slowly-changing-regression"])
def test_a_diverging_run_stops_says_so_and_exits_3(env, tmp_path, mnist_dir, capsys):
    if env.startswith("slowly"):
        args = [*stream_for("regression-bp", {}), "--agent", "regression-bp"]
    else:  # Dohare et al.'s SGD learner, narrowed
        args = ["--env", env, "--data-dir", str(mnist_dir), "--agent", "bp",
                *sets(["network.hidden_sizes=[32,32]"])]  # fmt: skip
    args += ["--seed", "3"]
    fine = run(tmp_path, "fine", *args)
    assert fine["diverged_at_step"] is None and fine["status"] == "complete"
    capsys.readouterr()
    # SGD with step 1e12 overflows the weights within a few steps
    blown_args = [*args, *sets(["optimizer.lr=1e12"]), "--logdir", str(tmp_path)]
    assert main([*blown_args, "--name", "blown", *QUIET]) == 3
    err = errors(capsys.readouterr().err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("diverged: the training loss")
    blown = json.loads((tmp_path / "blown" / "results.json").read_text())
    status = json.loads((tmp_path / "blown" / "status.json").read_text())
    step = blown["diverged_at_step"]
    assert isinstance(step, int) and 1 <= step and f"at step {step};" in err
    assert blown["status"] == status["state"] == "diverged" and status["diverged_at_step"] == step
    assert "average_accuracy" not in blown and "squared_error_bins" not in blown
    if not env.startswith("slowly"):  # stopped at once: the whole run is 300 steps
        assert blown["steps"] == step < fine["steps"]


def test_class_incremental_cifar100_with_a_cnn_and_ewc(tmp_path, cifar100_dir):
    results = run(
        tmp_path, "c", "--env", "class-incremental-cifar100", "--agent", "relu-adam",
        "--data-dir", str(cifar100_dir), "--set", "network.kind=cnn",
        "--set", "stream.kwargs.validation_per_class=1",
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


@pytest.mark.parametrize(
    ("agent", "method"),
    [("topk-adagrad", "method.replay={capacity: 50}"),
     # owned weights, frozen values and per-task evaluation masks come from the checkpoint
     ("powerprop", "method.efficient_packnet={search_examples: 50}")],
)  # fmt: skip
def test_resume_at_a_task_boundary_reproduces_the_uninterrupted_run(tmp_path, mnist_dir, agent,
                                                                     method):  # fmt: skip
    args = ["--env", "split-mnist", "--agent", agent, "--data-dir", str(mnist_dir),
            "--set", method, "--set", "train.batch_size=16"]  # fmt: skip
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
    err = errors(capsys.readouterr().err)
    assert err.startswith("error: ") and re.search(message, err, re.S), err
    assert not (tmp_path / "runs").exists()


PERMUTED = ["--env", "permuted-mnist", "--agent", "relu-adam", "--set", "stream.kwargs.num_tasks=3",
            "--set", "network.hidden_sizes=[16]", "--set", "train.batch_size=16"]  # fmt: skip
ONLINE = ["--env", "online-permuted-mnist", "--agent", "cbp", "--set", "stream.kwargs.num_tasks=2",
          "--set", "network.hidden_sizes=[16,16]"]  # fmt: skip


@pytest.mark.parametrize(
    "method",
    [
        "reset_layers={every_optimizer_steps: 50}",
        "plasticity_injection={at_optimizer_steps: [100]}",
        "hare_tortoise={reset_every_optimizer_steps: 50}",
        "regrama={}",
        "self_normalized_resets={}",
    ],
)
def test_the_reset_methods_run_from_the_command_line(method, tmp_path):
    stream = ["stream.kwargs.total_examples=300", "stream.kwargs.bin_size=100"]
    results = run(tmp_path, "r", "--env", "slowly-changing-regression", "--agent",
                  "regression-bp", *sets([*stream, f"method.{method}"]))  # fmt: skip
    assert results["steps"] == 300 and all(map(math.isfinite, results["squared_error_bins"]))


def test_a_run_with_plasticity_injection_resumes_its_grown_network(tmp_path, mnist_dir):
    # CBP + plasticity injection (autograd, as injection asks); the head grows at step 10,
    # in the first task, and the run is cut after it
    args = [*ONLINE, "--data-dir", str(mnist_dir),
            "--set", "method.plasticity_injection={at_optimizer_steps: [10]}"]  # fmt: skip
    whole = run(tmp_path, "whole", *args)
    cut = [*args, "--logdir", str(tmp_path), "--name", "cut", *QUIET]
    assert main([*cut, "--set", "train.stop_after_tasks=1"]) == 0
    saved = torch.load(tmp_path / "cut/checkpoints/latest.pt", weights_only=True)
    assert "output.injection1.weight" in saved["model"]
    resume = ["--resume", str(tmp_path / "cut"), "--set", "train.stop_after_tasks=null"]
    assert main([*resume, "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    for key in ("accuracy_matrix", "online_accuracy", "steps", "final_plasticity"):
        assert resumed.get(key) == whole.get(key), key
    a = torch.load(tmp_path / "whole/checkpoints/latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut/checkpoints/latest.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_with_the_runs_own_seed(tmp_path, mnist_dir, capsys):
    args = [*PERMUTED, "--data-dir", str(mnist_dir), "--seed", "3"]
    whole = run(tmp_path, "whole", *args)
    cut = [*args, "--logdir", str(tmp_path), "--name", "cut", *QUIET]
    assert main([*cut, "--set", "train.stop_after_tasks=1"]) == 0
    assert "stopped after 1 tasks" in capsys.readouterr().out
    config = (tmp_path / "cut" / "config.yaml").read_text()
    assert "seed: 3\n" in config and "stop_after_tasks: null" in config
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["state"] == "stopped"
    # a plain --resume (the sweep's resume command) finishes the run, as seed 3
    assert main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    assert resumed["stream"]["seed"] == whole["stream"]["seed"] == 3
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["state"] == "complete"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--env", "split-mnist"], r"--env: got 'split-mnist'; allowed: not with --resume"),
        (["--agent", "bp"], r"--agent: got 'bp'; allowed: not with --resume"),
        (["--seed", "4"], r"--seed: got 4; allowed: not with --resume"),
        (["--set", "network.hidden_sizes=[8]"],
         r"--set: got 'network.hidden_sizes=\[8\]'; allowed: with --resume only data_dir, "
         r"train.stop_after_tasks"),
    ],
)  # fmt: skip
def test_resume_refuses_changes_to_the_run(extra, message, tmp_path, mnist_dir, capsys):
    args = [*PERMUTED, "--data-dir", str(mnist_dir), "--seed", "2"]
    assert main([*args, "--logdir", str(tmp_path), "--name", "r", *QUIET,
                 "--set", "train.stop_after_tasks=1"]) == 0  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*")}
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "r"), *extra, "--no-progress"]) == 2
    err = errors(capsys.readouterr().err)
    assert err.startswith("error: ") and re.search(message, err), err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*")} == before


def stop_at(monkeypatch, step: int, signum: int = 15) -> None:
    """Deliver ``signum`` (as StopSignals records it) once the run reaches ``step``."""
    from plasticity_rl.supervised.control import RunControl

    due = RunControl.due

    def due_then_stop(self):
        if self.progresses[0]["step"] >= step and self.stop.received is None:
            self.stop.received = signum
        return due(self)

    monkeypatch.setattr(RunControl, "due", due_then_stop)


@pytest.mark.parametrize("stream", ["online", "epochs"])
def test_a_run_interrupted_mid_task_resumes_exactly(stream, tmp_path, mnist_dir, capsys,
                                                    monkeypatch):  # fmt: skip
    if stream == "online":  # hand-written backward with lookahead, CBP: stops at step 428
        args = [*ONLINE, "--seed", "5"]
    else:  # 3 epochs of 19 steps per task: stops at step 32, in the second epoch
        args = [*PERMUTED, "--seed", "5", "--set", "train.epochs_per_task=3",
                "--set", "method.replay={capacity: 40}"]  # fmt: skip
    args += ["--data-dir", str(mnist_dir)]
    monkeypatch.setattr("plasticity_rl.supervised.steps.CHUNK_EXAMPLES", 64)  # chunk ends mid-task
    whole = run(tmp_path, "whole", *args)
    with monkeypatch.context() as patch:
        stop_at(patch, 420 if stream == "online" else 30)
        assert main([*args, "--logdir", str(tmp_path), "--name", "cut", *QUIET]) == 143
    err = errors(capsys.readouterr().err)
    assert re.fullmatch(r"interrupted: SIGTERM at step \d+; checkpoint saved, continue with "
                        r"--resume .*cut\n", err), err  # fmt: skip
    status = json.loads((tmp_path / "cut" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["checkpoint_step"] < whole["steps"]
    assert status["checkpoint_step"] not in whole["task_end_steps"]  # mid-task
    assert not (tmp_path / "cut" / "results.json").exists()
    assert main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    for key in ("accuracy_matrix", "online_accuracy", "steps", "final_plasticity"):
        assert resumed.get(key) == whole.get(key), key
    a = torch.load(tmp_path / "whole/checkpoints/latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut/checkpoints/latest.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_interrupted_between_logs_logs_what_the_uninterrupted_run_logs(
    tmp_path, mnist_dir, monkeypatch
):
    from test_train_rl import scalars

    args = [*ONLINE, "--seed", "5", "--data-dir", str(mnist_dir), "--no-progress", "--set",
            "train.probe_size=50", "--set", "train.log_every_steps=50",
            "--logdir", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr("plasticity_rl.supervised.steps.CHUNK_EXAMPLES", 64)  # chunk ends mid-task
    assert main([*args, "--name", "whole"]) == 0
    with monkeypatch.context() as patch:
        stop_at(patch, 420)  # stops at step 428, between the logs at 400 and 450
        assert main([*args, "--name", "cut"]) == 143
    before = torch.load(tmp_path / "cut/checkpoints/latest.pt")["progress"]["wall_seconds"]
    assert main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    # the wall time counts both invocations (the second, 172 of 600 steps, alone is shorter)
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["wall_seconds"] > before > 0
    whole, cut = scalars(tmp_path / "whole"), scalars(tmp_path / "cut")
    assert set(cut) == set(whole)
    assert [step for step, _ in whole["cl/train_loss"]][7:10] == [400, 450, 500]
    for tag, points in whole.items():
        if not tag.startswith("time/"):
            assert [step for step, _ in cut[tag]] == [step for step, _ in points], tag
            assert [v for _, v in cut[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_sigint_to_the_cli_checkpoints_and_exits_130(tmp_path, mnist_dir):
    argv = [sys.executable, str(REPO_ROOT / "scripts" / "train_supervised.py"), *ONLINE,
            "--set", "stream.kwargs.num_tasks=200", "--set", "train.checkpoint_every_steps=0",
            "--data-dir", str(mnist_dir), "--seed", "1", "--logdir", str(tmp_path), "--name",
            "r", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = tmp_path / "r" / "status.json"
    deadline = time.time() + 120
    while time.time() < deadline and '"checkpoint_step"' not in _read(status):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = errors(proc.communicate(timeout=120)[1])
    assert proc.returncode == 130, err
    assert err.startswith("interrupted: SIGINT at step ") and "Traceback" not in err
    state = json.loads(status.read_text())
    assert state["state"] == "interrupted" and state["checkpoint_step"] == state["step"] > 0
    assert not (tmp_path / "r" / "run.pid").exists()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_second_process_on_a_running_run_is_refused(tmp_path, mnist_dir, capsys):
    args = [*PERMUTED, "--data-dir", str(mnist_dir), "--seed", "2"]
    assert main([*args, "--logdir", str(tmp_path), "--name", "r", *QUIET,
                 "--set", "train.stop_after_tasks=1"]) == 0  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "r" / "run.pid").write_text(f"{holder.pid}\n")
        capsys.readouterr()
        assert main(["--resume", str(tmp_path / "r"), "--no-progress"]) == 2
        assert f"allowed: one not being trained (process {holder.pid} holds" in (
            capsys.readouterr().err)  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert main(["--resume", str(tmp_path / "r"), "--no-progress"]) == 0  # stale lock


@pytest.mark.parametrize("damage", ["truncated", "random", "other-width", "other-method"])
def test_a_bad_checkpoint_on_resume_exits_2_and_writes_nothing(damage, tmp_path, mnist_dir,
                                                               capsys):  # fmt: skip
    args = [*PERMUTED, "--data-dir", str(mnist_dir), "--seed", "2", "--logdir", str(tmp_path),
            *QUIET, "--set", "train.stop_after_tasks=1"]  # fmt: skip
    assert main([*args, "--name", "r"]) == 0
    latest = tmp_path / "r" / CHECKPOINT
    if damage in ("truncated", "random"):
        data = latest.read_bytes()
        latest.write_bytes(data[:100] if damage == "truncated" else os.urandom(len(data)))
        latest.with_name("latest.pt.sha256").unlink()
    else:
        other = ["--set", "network.hidden_sizes=[12]" if damage == "other-width"
                 else "method.continual_backprop={}"]  # fmt: skip
        assert main([*args, "--name", "other", *other]) == 0
        for name in ("latest.pt", "latest.pt.sha256"):
            shutil.copy(tmp_path / "other" / "checkpoints" / name, latest.parent / name)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*")}
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "r"), "--no-progress"]) == 2
    err = errors(capsys.readouterr().err)
    assert err.startswith("error: --resume: got ") and len(err.strip().splitlines()) == 1, err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*")} == before


def test_disk_full_says_so_and_keeps_the_checkpoint(tmp_path, mnist_dir, capsys, monkeypatch):
    args = [*PERMUTED, "--data-dir", str(mnist_dir), "--seed", "2", "--logdir", str(tmp_path),
            "--name", "r", *QUIET]  # fmt: skip
    saves = []
    save = torch.save

    def fills_up(obj, f, *a, **k):
        saves.append(f)
        if len(saves) > 1:
            raise OSError(28, "No space left on device")
        return save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", fills_up)
    assert main(args) == 1
    err = errors(capsys.readouterr().err)
    assert "no space left on device" in err and "previous checkpoint is kept" in err
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "failed"
    files = sorted(p.name for p in (tmp_path / "r" / CHECKPOINT).parent.iterdir())
    assert files == ["latest.pt", "latest.pt.sha256"]
    monkeypatch.setattr(torch, "save", save)
    assert main(["--resume", str(tmp_path / "r"), "--no-progress"]) == 0


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_dataset_files_exit_2_with_one_line(tmp_path, mnist_dir, mnist_data, capsys,
                                                 monkeypatch):  # fmt: skip
    monkeypatch.setenv("PLASTICITY_RL_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr("urllib.request.urlopen",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))  # fmt: skip
    cases = {}
    truncated = _copy(mnist_dir, tmp_path / "truncated")
    raw = gzip.decompress((truncated / "train-images-idx3-ubyte.gz").read_bytes())
    (truncated / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-500]))
    cases[truncated] = r"truncated: .* bytes, but the header's shape"
    absurd = _copy(mnist_dir, tmp_path / "absurd")
    header = bytes([0, 0, 8, 3]) + np.array([2**32 - 1] * 3, ">u4").tobytes()
    (absurd / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + raw[16:]))
    cases[absurd] = r"the header's shape \(4294967295, 4294967295, 4294967295\)"
    one_class = tmp_path / "one-class"
    labels = torch.zeros_like(mnist_data.train_y)
    write_dataset(dataclasses.replace(mnist_data, train_y=labels), one_class)
    cases[one_class] = r"mnist train: 300 examples of classes \[0\]; the streams need"
    for data_dir, message in cases.items():
        argv = ["--env", "split-mnist", "--agent", "relu-adam", "--data-dir", str(data_dir),
                "--logdir", str(tmp_path / "runs"), "--no-progress"]  # fmt: skip
        assert main(argv) == 2, data_dir
        err = errors(capsys.readouterr().err)
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert re.search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_another_known_dataset_is_refused_by_its_content(tmp_path, fashion_dir, capsys,
                                                         monkeypatch):  # fmt: skip
    """Fashion-MNIST's files given to an MNIST preset: recognised by the MD5 of their content
    (the fixture's random files stand in for the published ones here)."""
    digests = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in fashion_dir.iterdir()}
    fashion = dataclasses.replace(SOURCES["fashion_mnist"], content_md5=digests)
    monkeypatch.setitem(SOURCES, "fashion_mnist", fashion)
    argv = ["--env", "split-mnist", "--agent", "relu-adam", "--data-dir", str(fashion_dir),
            "--logdir", str(tmp_path / "runs"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: mnist: train-images-idx3-ubyte in .* is fashion_mnist's \(MD5 "
                        r"\w+\), not mnist's: give the mnist folder to --data-dir, or use a "
                        r"fashion_mnist preset\n", err), err  # fmt: skip
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "optimizer.lr=abc"], r"optimizer.lr: got 'abc'; allowed: a finite number"),
        (["--set", "optimizer.lr=nan"], r"optimizer.lr: got 'nan'; allowed: a finite number"),
        (["--set", "optimizer.lr=.inf"], r"optimizer.lr: got inf; allowed: a finite number"),
        (["--seed", "-5"], r"--seed: got -5; allowed: an integer >= 0"),
        (["--runs", "100000"], r"--runs: got 100000; allowed: at most \d+ runs of this network "
                               r"here \(estimate [\d.]+ GiB for 100000"),
        (["--set", "network.activation={name: topk, k: 5000}"],
         r"topk.k: got 5000; allowed: an integer <= the layer width \(1000\)"),
    ],
)  # fmt: skip
def test_bad_values_exit_2_and_write_nothing(extra, message, tmp_path, mnist_dir, capsys):
    argv = ["--env", "split-mnist", "--agent", "relu-adam", "--data-dir", str(mnist_dir),
            "--logdir", str(tmp_path / "runs"), "--no-progress", *extra]  # fmt: skip
    assert main(argv) == 2
    err = errors(capsys.readouterr().err)
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_bad_run_directories_exit_2(tmp_path, mnist_dir, capsys):
    args = ["--env", "split-mnist", "--agent", "relu-adam", "--data-dir", str(mnist_dir),
            "--no-progress", "--set", "network.hidden_sizes=[8]"]  # fmt: skip
    (tmp_path / "file").write_text("")
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    cases = [("file", r"--logdir: got '.*file'; allowed: a directory \(.*file is a file\)"),
             ("file/sub", r"allowed: a directory \(.*file is a file\)"),
             ("/proc/runs", r"--logdir: got '/proc/runs'; allowed: a writable dir")]  # fmt: skip
    if os.geteuid() != 0:  # root writes anywhere
        cases.append(("read-only/runs", r"allowed: a writable directory \(.*read-only is not\)"))
    for logdir, message in cases:
        assert main([*args, "--logdir", str(tmp_path / logdir)]) == 2
        err = errors(capsys.readouterr().err)
        assert re.search(message, err), err
    assert main([*args, "--logdir", str(tmp_path / "runs"), "--name", "taken",
                 "--set", "train.stop_after_tasks=1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main([*args, "--logdir", str(tmp_path / "runs"), "--name", "taken"]) == 2
    assert "--name: got 'taken'; allowed: a name not yet used in" in capsys.readouterr().err


def test_presets_read_numbers_by_yaml_1_2_and_refuse_bad_files(tmp_path):
    preset = tmp_path / "sci.yaml"
    preset.write_text("optimizer: {name: adam, lr: 1e-3, eps: 1E-8}\n")
    assert load_preset("agents", preset)["optimizer"] == {"name": "adam", "lr": 0.001, "eps": 1e-8}
    overridden = resolve(SupervisedRunConfig, overrides=["optimizer.lr=1e-3"])
    assert overridden.optimizer["lr"] == 0.001  # --set too
    (tmp_path / "bad.yaml").write_text("network: [1\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    for name, message in [("bad", r"invalid YAML at line 2"), ("binary", r"not UTF-8 text"),
                          ("a", r"a chain of base: presets without a loop"),
                          ("list", r"got 'list'; allowed: a YAML mapping")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load_preset("agents", tmp_path / f"{name}.yaml")


@pytest.fixture(scope="module")
def cifar100_four_per_class(tmp_path_factory, image_dataset_factory) -> Path:
    """CIFAR-100 files with 4 training and 2 test images per class."""
    data = image_dataset_factory("cifar100", 400, 200, seed=5)
    return write_dataset(data, tmp_path_factory.mktemp("cifar100-4"), compress=False)


def one_increment(data_dir: Path, *overrides: str) -> list[str]:
    """Class-incremental CIFAR-100 cut to its first increment (5 classes; 2 images of each
    held out for validation, 2 trained on) with a short schedule."""
    small = ["stream.kwargs.shuffle_classes_seed=null", "stream.kwargs.class_order=[3,1,4,5,9]",
             "stream.kwargs.validation_per_class=2", "train.batch_size=2",
             "train.epochs_per_task=3", "train.lr_drop_epochs=[1,2]", *overrides]  # fmt: skip
    return ["--env", "class-incremental-cifar100", "--data-dir", str(data_dir), *sets(small)]


@pytest.mark.parametrize("agent", RESNET_AGENTS)
def test_resnet18_presets_train_an_increment_with_early_stopping(
    agent, tmp_path, cifar100_four_per_class
):
    results = run(tmp_path, "r", *one_increment(cifar100_four_per_class), "--agent", agent)
    validation, test = results["epoch_validation_accuracy"], results["epoch_test_accuracy"]
    assert len(validation) == len(test) == 1 and len(test[0]) == 3
    # early stopping: the task ends with the network of the first epoch of best validation
    best = validation[0].index(max(validation[0]))
    assert results["task_accuracy"] == [test[0][best]] and "accuracy_matrix" not in results
    assert results["best_epoch_test_accuracy"] == [max(test[0])]
    names = tags(tmp_path / "r")
    assert {"cl/epoch/validation_accuracy", "plasticity/net/hidden17/srank99"} <= names
    assert ("plasticity/net/hidden17/replacements" in names) == (agent == "resnet18-cbp")
    state = torch.load(tmp_path / "r/checkpoints/latest.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.2**2)


def test_resnet18_cbp_interrupted_mid_epoch_resumes_exactly(tmp_path, cifar100_four_per_class,
                                                           monkeypatch):  # fmt: skip
    # CBP replacing often, 5 steps per epoch, chunks of 4 examples: stops in the second epoch
    args = [*one_increment(cifar100_four_per_class,
                           "method.continual_backprop.replacement_rate=0.05",
                           "method.continual_backprop.maturity_threshold=1"),
            "--agent", "resnet18-cbp"]  # fmt: skip
    monkeypatch.setattr("plasticity_rl.supervised.steps.CHUNK_EXAMPLES", 4)
    whole = run(tmp_path, "whole", *args)
    with monkeypatch.context() as patch:
        stop_at(patch, 7)
        assert main([*args, "--logdir", str(tmp_path), "--name", "cut", *QUIET]) == 143
    assert main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    for key in ("task_accuracy", "epoch_test_accuracy", "epoch_validation_accuracy", "steps"):
        assert resumed[key] == whole[key], key
    a = torch.load(tmp_path / "whole/checkpoints/latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut/checkpoints/latest.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
