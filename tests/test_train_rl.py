"""The RL script end to end: presets train and log, resume is exact, bad input fails cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from plasticity_rl.agents import rl_agent_presets
from plasticity_rl.config import REPO_ROOT

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
    args = ["--env", "hopper-friction", "--agent", agent, "--total-steps", "512"]
    assert main([*args, "--logdir", str(tmp_path), "--name", "run", *TINY]) == 0
    run_dir = tmp_path / "run"
    tags = scalars(run_dir)
    expected = {"env/friction", "env/changes", "rollout/ep_rew_mean", "train/value_loss"}
    for net in ("pi", "vf"):
        expected |= {f"plasticity/{net}/weight_magnitude", f"plasticity/{net}/max_weight_change"}
        for layer in ("hidden1", "hidden2"):
            for metric in ("dead_fraction", "dormant_ratio", "effective_rank", "srank99",
                           "stable_rank", "activation_sparsity"):  # fmt: skip
                expected.add(f"plasticity/{net}/{layer}/{metric}")
    assert expected <= set(tags), sorted(expected - set(tags))
    assert [step for step, _ in tags["plasticity/pi/hidden1/srank99"]] == [256, 512]
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
    [[], ["--set", "env.vec_env=subproc", "--set", "normalize_observations=true"]],
    ids=["dummy", "subproc-vecnormalize"],
)
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
    assert '"running"' in (tmp_path / "killed" / "status.json").read_text()
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
        ([*OK, "--set", "method.cbp={}"], r"method: got 'cbp'; allowed: continual_backprop"),
        ([*OK, "--set", "optimizer.name=adamw"], r"optimizer: got 'adamw'; allowed: adagrad, adam"),
        ([*OK, "--set", "policy_net.activation=relux"], r"activation: got 'relux'"),
        ([*OK, "--set", "ppo.n_steps"], r"--set: got 'ppo.n_steps'; allowed: key=value"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(argv, message, tmp_path, capsys):
    assert main([*argv, "--logdir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not any(tmp_path.iterdir())
