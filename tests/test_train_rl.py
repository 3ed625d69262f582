"""The RL script end to end: presets train and log, resume is exact, bad input fails cleanly."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from plasticity_rl.agents import RLRunConfig, rl_agent_presets
from plasticity_rl.cli import common_parser, resolve_run_config
from plasticity_rl.config import REPO_ROOT, load_preset

SCRIPT = REPO_ROOT / "scripts" / "train_rl.py"
sys.path.insert(0, str(SCRIPT.parent))
from train_rl import main  # noqa: E402

TINY = [
    "--set", "ppo.n_steps=256",
    "--set", "ppo.batch_size=64",
    "--set", "ppo.n_epochs=2",
    "--set", "logging.metrics_every_env_steps=256",
    "--set", "logging.probe_size=128",
    "--set", "env.kwargs.every_env_steps=200",
    "--no-progress",
]  # fmt: skip


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


AGENT_PRESETS = rl_agent_presets()


@pytest.mark.parametrize("agent", AGENT_PRESETS)
def test_each_agent_preset_trains_and_writes_the_expected_tags(agent, tmp_path):
    # rollouts of 256 env steps in the preset's layout (fast presets: 16 copies x 16 steps)
    n_envs = load_preset("agents", agent).get("env", {}).get("n_envs", 1)
    layout = ["--set", f"ppo.n_steps={256 // n_envs}", "--set", "env.kwargs.every_env_steps=256"]
    args = ["--env", "hopper-friction", "--agent", agent, "--total-steps", "512"]
    assert main([*args, "--logdir", str(tmp_path), "--name", "run", *TINY, *layout]) == 0
    run_dir = tmp_path / "run"
    tags = scalars(run_dir)
    expected = {"env/friction", "env/changes", "rollout/ep_rew_mean", "train/value_loss"}
    for net in ("pi", "vf"):
        expected |= {f"plasticity/{net}/{metric}" for metric in (
            "weight_magnitude", "max_weight_change", "gradient_norm", "output_churn")}  # fmt: skip
        for layer in ("hidden1", "hidden2"):
            for metric in ("dead_fraction", "dormant_ratio", "effective_rank", "srank99",
                           "stable_rank", "activation_sparsity", "feature_norm",
                           "duplicate_fraction", "grama_dormant_ratio"):  # fmt: skip
                expected.add(f"plasticity/{net}/{layer}/{metric}")
    assert expected <= set(tags), sorted(expected - set(tags))
    assert [step for step, _ in tags["plasticity/pi/hidden1/srank99"]] == [256, 512]
    # no update before the first log: gradients and a previous output come with the second
    assert [step for step, _ in tags["plasticity/pi/gradient_norm"]] == [512]
    assert [step for step, _ in tags["plasticity/vf/hidden2/grama_dormant_ratio"]] == [512]
    assert [step for step, _ in tags["plasticity/vf/output_churn"]] == [512]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints/latest.pt").is_file()
    assert '"complete"' in (run_dir / "status.json").read_text()


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/latest.pt", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Same step count, bit-identical weights, observations, physics and friction schedule."""
    assert a["num_timesteps"] == b["num_timesteps"]
    for key in a["policy"]:
        assert torch.equal(a["policy"][key], b["policy"][key]), key
    assert torch.equal(a["last_obs"], b["last_obs"])
    for env_a, env_b in zip(a["envs"], b["envs"], strict=True):
        for level_a, level_b in zip(env_a, env_b, strict=True):
            assert level_a.get("schedule") == level_b.get("schedule")
            assert level_a.get("elapsed_steps") == level_b.get("elapsed_steps")
            if "mujoco" in level_a:
                assert torch.equal(level_a["mujoco"], level_b["mujoco"])


CBP_RUN = [
    "--env", "hopper-friction", "--agent", "ppo-cbp-l2", "--total-steps", "1536",
    "--set", "method.continual_backprop.maturity_threshold=5",
    "--set", "method.continual_backprop.replacement_rate=0.01",
    "--set", "env.n_envs=2",
    "--set", "ppo.n_steps=128",
    "--set", "logging.checkpoint_every_env_steps=256",
    *TINY[2:],
]  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--set", "env.vec_env=subproc", "--set", "normalize_observations=true"],
        # network options with CBP + L2 and ReDo: dropout masks come from the checkpointed RNG
        ["--set", "policy_net.activation=crelu", "--set", "policy_net.dropout=0.1",
         "--set", "value_net.layer_norm=true", "--set", "method.redo={period: 3}"],
        # optimisers with more state: UPGD's noise comes from the checkpointed torch RNG
        ["--set", "optimizer.name=adaptive_upgd"],
        ["--set", "optimizer.name=trac"],
        # Kron's float64 state loaded as saved; CBP's resets zero its nested momentum rows
        ["--set", "optimizer={name: kron, lr: 1.0e-3, weight_decay: 1.0e-4}",
         "--set", "method.continual_backprop.optimizer_state=zero_moments"],
    ],
    ids=["dummy", "subproc-vecnormalize", "crelu-dropout-layer-norm-redo", "upgd", "trac",
         "kron"],
)  # fmt: skip
def test_resume_reproduces_the_uninterrupted_run(tmp_path, extra):
    run = [*CBP_RUN, *extra, "--logdir", str(tmp_path)]
    assert main([*run, "--name", "whole"]) == 0
    # Stop the same run after 768 env steps, then resume it to the full 1536.
    short = [*run, "--name", "cut", "--total-steps", "768"]
    assert main(short) == 0
    assert final_state(tmp_path / "cut")["num_timesteps"] == 768
    assert main(["--resume", str(tmp_path / "cut"), "--total-steps", "1536", "--no-progress"]) == 0
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert_same_training_state(whole, resumed)
    assert (
        whole["methods"]["continual_backprop"].keys()
        == resumed["methods"]["continual_backprop"].keys()
    )
    replaced = scalars(tmp_path / "whole")
    assert any(tag.endswith("replacements") for tag in replaced)
    # the output churn after the resume is measured against the checkpointed outputs
    churn = [scalars(tmp_path / name)["plasticity/vf/output_churn"] for name in ("whole", "cut")]
    assert [step for step, _ in churn[1]] == [step for step, _ in churn[0]]
    assert [value for _, value in churn[1]] == pytest.approx([value for _, value in churn[0]])


def test_a_run_stopped_between_logs_logs_what_the_uninterrupted_run_logs(tmp_path, monkeypatch):
    """Stopped by a signal at a rollout start between two metric logs and resumed: the same
    log steps (no extra log at the resumed run's first rollout end) and the same values, the
    output churn and the largest weight change since the previous log included."""
    from plasticity_rl.rundir import StopSignals

    class StopAtFifthRolloutStart(StopSignals):  # polled once per rollout start
        def __init__(self) -> None:
            super().__init__()
            self.polls = 0

        @property
        def received(self) -> int | None:
            self.polls += 1
            return signal.SIGTERM if self.polls >= 5 else None

        @received.setter
        def received(self, value: int | None) -> None:
            pass

    # rollouts of 256 env steps; logs at 256 (the first rollout end), 768 and 1536
    run = [*CBP_RUN, "--set", "logging.metrics_every_env_steps=768", "--logdir", str(tmp_path)]
    assert main([*run, "--name", "whole"]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["plasticity_rl.agents.train"], "StopSignals",
                      StopAtFifthRolloutStart)  # fmt: skip
        assert main([*run, "--name", "cut"]) == 143
    cut_state = final_state(tmp_path / "cut")
    assert cut_state["num_timesteps"] == 1024
    assert main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    # the wall time counts both invocations (the second, 2 of 6 rollouts, alone is shorter)
    before = cut_state["extra"]["wall_seconds"]
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["wall_seconds"] > before > 0
    whole, cut = scalars(tmp_path / "whole"), scalars(tmp_path / "cut")
    assert [step for step, _ in whole["plasticity/vf/output_churn"]] == [768, 1536]
    for tag, points in whole.items():
        if tag.startswith("time/"):
            continue
        assert [step for step, _ in cut[tag]] == [step for step, _ in points], tag
        assert [v for _, v in cut[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_a_run_with_plasticity_injection_resumes_its_grown_policy(tmp_path):
    # 8 optimiser steps per update: the heads grow at step 10, before the cut at 24
    run = [*CBP_RUN, "--agent", "ppo-plasticity-injection", "--logdir", str(tmp_path),
           "--set", "method.plasticity_injection.at_optimizer_steps=[10]"]  # fmt: skip
    assert main([*run, "--name", "whole"]) == 0
    assert main([*run, "--name", "cut", "--total-steps", "768"]) == 0
    assert "action_net.injection1.weight" in final_state(tmp_path / "cut")["policy"]
    assert main(["--resume", str(tmp_path / "cut"), "--total-steps", "1536", "--no-progress"]) == 0
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert_same_training_state(whole, resumed)
    assert len(resumed["optimizer"]["param_groups"]) == 3  # a new group per head (pi, vf)
    assert resumed["methods"]["plasticity_injection"] == {"steps": 48, "injections": 1}


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    cmd = [sys.executable, str(SCRIPT), *CBP_RUN, "--logdir", str(tmp_path), "--name", "killed"]
    cmd[cmd.index("1536")] = "100000"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "killed" / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), proc.stderr.read().decode()
    status = json.loads((tmp_path / "killed" / "status.json").read_text())
    steps = final_state(tmp_path / "killed")["num_timesteps"]
    assert status["state"] == "running" and 0 < status["checkpoint_env_steps"] <= steps
    # The run length only decides when the loop stops, so compare both runs at the same length.
    total = str(final_state(tmp_path / "killed")["num_timesteps"] + 512)
    assert (
        main(["--resume", str(tmp_path / "killed"), "--total-steps", total, "--no-progress"]) == 0
    )
    whole = [*CBP_RUN, "--logdir", str(tmp_path), "--name", "whole"]
    whole[whole.index("1536")] = total
    assert main(whole) == 0
    assert_same_training_state(final_state(tmp_path / "whole"), final_state(tmp_path / "killed"))


OK = ["--env", "hopper-friction", "--agent", "ppo"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "hopper-fiction", "--agent", "ppo"], r"env preset: got 'hopper-fiction'"),
        (["--env", "hopper-friction", "--agent", "ppo-cbp"], r"agent preset: got 'ppo-cbp'.*l2"),
        ([*OK, "--set", "ppo.n_stepz=3"], r"ppo.n_stepz: got '3'; allowed: .*n_steps"),
        ([*OK, "--set", "ppo.n_steps=0"], r"ppo.n_steps: got 0; allowed: an integer >= 1"),
        ([*OK, "--set", "ppo.gamma=high"], r"ppo.gamma: got 'high'"),
        ([*OK, "--set", "method.cbp={}"], r"method: got 'cbp'; allowed: .*continual_backprop"),
        ([*OK, "--set", "optimizer.name=adamw"], r"optimizer: got 'adamw'; allowed: adagrad, adam"),
        ([*OK, "--set", "policy_net.activation=relux"], r"activation: got 'relux'"),
        ([*OK, "--set", "ppo.n_steps"], r"--set: got 'ppo.n_steps'; allowed: key=value"),
        ([*OK, "--set", "method.reset_layers={layers:[pi]}"],
         r"--set: got 'method.reset_layers=\{layers:\[pi\]\}'; allowed: key=value with a YAML"),
        ([*OK, "--set", "env.kwargs.frictoin=1"], r"env.kwargs: got 'frictoin'; allowed: the "
                                                  r"keywords of plasticity_rl/HopperFriction-v5"),
        ([*OK, "--set", "optimizer.lr=abc"], r"optimizer.lr: got 'abc'; allowed: a finite number"),
        ([*OK, "--set", "optimizer.lr=nan"], r"optimizer.lr: got 'nan'; allowed: a finite number"),
        ([*OK, "--set", "optimizer.lr=.inf"], r"optimizer.lr: got inf; allowed: a finite number"),
        ([*OK, "--total-steps", "nan"], r"--total-steps: got nan; allowed: a whole number"),
        ([*OK, "--total-steps", "inf"], r"--total-steps: got inf; allowed: a whole number"),
        ([*OK, "--total-steps", "1e30"], r"--total-steps: got 1e\+30; allowed: a whole number"),
        ([*OK, "--set", "ppo.batch_size=1"], r"ppo.batch_size: got 1; allowed: an integer >= 2"),
        ([*OK, "--set", "env.n_envs=0"], r"env.n_envs: got 0; allowed: an integer >= 1"),
        ([*OK, "--set", "torch_threads=0"], r"torch_threads: got 0; allowed: an integer >= 1"),
        ([*OK, "--set", "env.n_envs=3"], r"env.kwargs.every_env_steps: got 2000000; allowed: a "
                                         r"multiple of env.n_envs = 3"),
        ([*OK, "--seed", "-5"], r"--seed: got -5; allowed: an integer >= 0"),
        (["--env", "hopper-friction", "--agent", "ppo-topk",
          "--set", "policy_net.hidden_sizes=[8]"],
         r"topk.k: got \d+; allowed: an integer <= the layer width \(8\)"),
        ([*OK, "--logdir", "/proc/runs"], r"--logdir: got '/proc/runs'; allowed: a writable"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(argv, message, tmp_path, capsys):
    assert main(["--logdir", str(tmp_path), *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not any(tmp_path.iterdir())


SMALL = ["--env", "hopper-friction", "--agent", "ppo", "--seed", "7", *TINY]


def test_resuming_a_finished_run_with_other_settings_keeps_its_checkpoint(tmp_path, capsys):
    assert main([*SMALL, "--total-steps", "512", "--logdir", str(tmp_path), "--name", "r"]) == 0
    run_dir = tmp_path / "r"
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    resume = ["--resume", str(run_dir), "--no-progress"]
    assert main([*resume, "--set", "env.n_envs=2"]) == 2  # the resume rule
    assert "--set: got 'env.n_envs=2'; allowed: with --resume only total_steps" in (
        capsys.readouterr().err)  # fmt: skip
    assert main([*resume, "--agent", "ppo-l2"]) == 2
    # a config.yaml edited by hand: the checkpoint is checked against it before use
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("n_envs: 1", "n_envs: 2"))
    capsys.readouterr()
    assert main(resume) == 2
    assert "a checkpoint of 2 env copies (env.n_envs of the run); it holds 1" in (
        capsys.readouterr().err)  # fmt: skip
    config.write_bytes(files[config])
    assert main(resume) == 0  # nothing left to train: the checkpoint is not rewritten
    assert all(p.read_bytes() == data for p, data in files.items() if p.suffix == ".pt")
    assert main([*resume, "--total-steps", "768"]) == 0
    assert "total_steps: 768" in config.read_text()
    assert final_state(run_dir)["num_timesteps"] == 768
    previous = torch.load(run_dir / "checkpoints" / "previous.pt", weights_only=True)
    assert previous["num_timesteps"] == 512


def test_sigterm_checkpoints_marks_the_status_and_exits_143(tmp_path):
    cmd = [sys.executable, str(SCRIPT), *SMALL, "--total-steps", "1e6", "--logdir", str(tmp_path),
           "--name", "r"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    status = tmp_path / "r" / "status.json"
    deadline = time.time() + 120
    while time.time() < deadline and '"running"' not in (status.read_text() if
                                                          status.exists() else ""):  # fmt: skip
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert err.startswith("interrupted: SIGTERM at step ") and "Traceback" not in err
    state = json.loads(status.read_text())
    steps = final_state(tmp_path / "r")["num_timesteps"]
    assert state["state"] == "interrupted" and state["env_steps"] == steps > 0
    resume = ["--resume", str(tmp_path / "r"), "--total-steps", str(steps + 256), "--no-progress"]
    assert main(resume) == 0
    assert json.loads(status.read_text())["state"] == "complete"


def test_a_diverging_run_stops_and_exits_3_with_one_line(tmp_path, capsys):
    argv = [*SMALL, "--total-steps", "1024", "--set", "optimizer.lr=1e30"]
    assert main([*argv, "--logdir", str(tmp_path), "--name", "r"]) == 3
    err = capsys.readouterr().err
    expected = (r"diverged: the policy's parameters or outputs became NaN or infinite at step "
                r"256; stopped, .*status.json says diverged\n")  # fmt: skip
    assert re.fullmatch(expected, err), err
    state = json.loads((tmp_path / "r" / "status.json").read_text())
    assert state["state"] == "diverged" and state["diverged_at_step"] == 256


def test_a_short_run_logs_plasticity_at_the_first_update_and_at_the_end(tmp_path):
    argv = [*SMALL, "--total-steps", "1024", "--set", "logging.metrics_every_env_steps=10000"]
    assert main([*argv, "--logdir", str(tmp_path), "--name", "r"]) == 0
    steps = [step for step, _ in scalars(tmp_path / "r")["plasticity/pi/hidden1/srank99"]]
    assert steps == [256, 1024]


@pytest.mark.parametrize("damage", ["truncated", "random", "other-width", "other-env"])
def test_a_bad_checkpoint_on_resume_exits_2_and_writes_nothing(damage, tmp_path, capsys):
    args = [*SMALL, "--total-steps", "256", "--logdir", str(tmp_path)]
    assert main([*args, "--name", "r"]) == 0
    latest = tmp_path / "r" / "checkpoints" / "latest.pt"
    if damage in ("truncated", "random"):
        data = latest.read_bytes()
        latest.write_bytes(data[:100] if damage == "truncated" else os.urandom(len(data)))
        latest.with_name("latest.pt.sha256").unlink()
    else:  # the checkpoint of another run in this run's directory
        other = (["--set", "policy_net.hidden_sizes=[32,32]"] if damage == "other-width"
                 else ["--env", "hopper-mass"])  # fmt: skip
        assert main([*args, "--name", "other", *other]) == 0
        for name in ("latest.pt", "latest.pt.sha256"):
            shutil.copy(tmp_path / "other" / "checkpoints" / name, latest.parent / name)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*")}
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "r"), "--total-steps", "512", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: got ") and len(err.strip().splitlines()) == 1, err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*")} == before


def test_the_progress_bar_counts_env_steps_up_to_the_total(tmp_path, capsys):
    argv = [a for a in SMALL if a != "--no-progress"] + ["--total-steps", "300"]
    assert main([*argv, "--logdir", str(tmp_path), "--name", "r"]) == 0  # two rollouts of 256
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert re.search(r"100%.*\b300/300 \[.* env steps/s\]", bar), bar


def test_a_new_shift_preset_trains_as_a_subprocess_and_logs_its_quantity(tmp_path):
    # The observation-permutation preset, changing every 200 env steps (TINY): the script as a
    # subprocess, 512 steps, then the env tags and the schedule in the checkpoint.
    cmd = [sys.executable, str(SCRIPT), "--env", "hopper-obs-permutation", "--agent", "ppo",
           "--total-steps", "512", "--logdir", str(tmp_path), "--name", "perm", *TINY]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tags = scalars(tmp_path / "perm")
    assert {"env/obs_fixed_fraction", "env/changes", "env/env_steps_since_change"} <= set(tags)
    assert tags["env/changes"][-1][1] >= 1  # at least one change within 512 steps
    # logged at each rollout end (256, 512): fraction of the 11 entries a permutation keeps
    assert [step for step, _ in tags["env/obs_fixed_fraction"]] == [256, 512]
    assert all(round(v * 11, 4) == round(v * 11) for _, v in tags["env/obs_fixed_fraction"])
    schedule = next(level["schedule"] for level in final_state(tmp_path / "perm")["envs"][0]
                    if "schedule" in level)  # fmt: skip
    assert sorted(schedule["value"]) == list(range(11)) and schedule["changes"] >= 1


def test_the_readme_quick_start_replaces_units_and_changes_friction() -> None:
    # The quick start claims continual backprop and friction changes within its budget: its
    # maturity threshold must be below the optimiser steps it runs, and the friction interval
    # below its env steps (else the run shows neither, as the preset's values would not).
    readme = (REPO_ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("## ", 1)[0]
    command = next(line for line in quick_start.splitlines() if "scripts/train_rl.py" in line)
    argv = shlex.split(command.split("scripts/train_rl.py", 1)[1])
    parser = common_parser("", "")
    parser.add_argument("--total-steps", type=float)
    args = parser.parse_args(argv)
    overrides = [*args.overrides, f"total_steps={int(args.total_steps)}"]
    cfg = resolve_run_config(RLRunConfig, args, "env", overrides)
    rollout = cfg.ppo.n_steps * cfg.env.n_envs
    updates = math.ceil(cfg.total_steps / rollout)
    optimizer_steps = updates * cfg.ppo.n_epochs * math.ceil(rollout / cfg.ppo.batch_size)
    cbp = cfg.method["continual_backprop"]
    assert cbp["maturity_threshold"] < optimizer_steps / 2, (cbp, optimizer_steps)
    assert cfg.env.kwargs["every_env_steps"] * 2 <= cfg.total_steps
