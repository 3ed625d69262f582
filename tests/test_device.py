"""The ``device`` option: its values and errors everywhere, and (marked ``cuda``, skipped
without a CUDA device) GPU runs, batched seeds and resumes across devices."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from plasticity_rl.config import REPO_ROOT
from plasticity_rl.device import resolve_device, to_device
from plasticity_rl.registry import ConfigError

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from train_rl import main as train_rl  # noqa: E402
from train_supervised import main as train_supervised  # noqa: E402

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

REGRESSION = ["--env", "slowly-changing-regression", "--agent", "regression-cbp",
              "--set", "stream.kwargs.total_examples=400", "--set", "stream.kwargs.bin_size=200",
              "--no-progress"]  # fmt: skip
ONLINE = ["--env", "online-permuted-mnist", "--agent", "cbp",
          "--set", "stream.kwargs.num_tasks=2", "--set", "stream.kwargs.examples_per_task=100",
          "--set", "network.hidden_sizes=[16,16]", "--set", "train.probe_size=50",
          "--no-progress"]  # fmt: skip
RL = ["--env", "hopper-friction", "--agent", "ppo-cbp-l2", "--total-steps", "512",
      "--set", "ppo.n_steps=256", "--set", "ppo.batch_size=64", "--set", "ppo.n_epochs=2",
      "--set", "logging.metrics_every_env_steps=256", "--set", "logging.probe_size=64",
      "--set", "env.kwargs.every_env_steps=256", "--no-progress"]  # fmt: skip


def test_names_resolve_and_bad_ones_are_config_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if CUDA else "cpu")
    with pytest.raises(ConfigError, match=r"device: got 'gpu'; allowed: auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    if not CUDA:
        with pytest.raises(
            ConfigError, match=r"^device: got 'cuda'; allowed: cpu \(no CUDA device found\)$"
        ):
            resolve_device("cuda")
    else:
        count = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=rf"allowed: cpu or cuda:0 ... cuda:{count - 1}"):
            resolve_device(f"cuda:{count}")


def test_to_device_moves_every_tensor_of_a_state_tree():
    tree = {"a": torch.zeros(2), "b": [torch.ones(1), 3, ("x", torch.ones(()))], "c": None}
    moved = to_device(tree, torch.device("cpu"))
    assert torch.equal(moved["a"], tree["a"]) and moved["b"][1] == 3 and moved["c"] is None
    assert isinstance(moved["b"][2], tuple) and torch.equal(moved["b"][2][1], torch.ones(()))


@pytest.mark.skipif(CUDA, reason="the error is for machines without CUDA")
@pytest.mark.parametrize("script", ["supervised", "rl"])
def test_cuda_without_a_device_is_one_line_and_writes_nothing(script, tmp_path, capsys):
    main, args = (train_supervised, REGRESSION) if script == "supervised" else (train_rl, RL)
    assert main([*args, "--device", "cuda", "--logdir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == "error: device: got 'cuda'; allowed: cpu (no CUDA device found)\n"
    assert not (tmp_path / "runs").exists()


def test_device_is_recorded_and_may_change_on_resume(tmp_path):
    args = [*REGRESSION, "--logdir", str(tmp_path), "--name", "r", "--device", "cpu",
            "--set", "train.stop_after_tasks=1"]  # fmt: skip
    assert train_supervised(args) == 0
    assert "device: cpu" in (tmp_path / "r" / "config.yaml").read_text()
    assert train_supervised(["--resume", str(tmp_path / "r"), "--device", "auto",
                             "--no-progress"]) == 0  # fmt: skip


def _results(path: Path) -> dict:
    results = json.loads(path.read_text())
    results.pop("wall_seconds", None)
    return results


@cuda
def test_supervised_runs_on_cuda_and_resume_across_devices(tmp_path, mnist_dir):
    online = [*ONLINE, "--data-dir", str(mnist_dir)]
    for device in ("cpu", "cuda"):
        assert train_supervised([*online, "--device", device, "--logdir", str(tmp_path),
                                 "--name", device]) == 0  # fmt: skip
    cpu, gpu = (_results(tmp_path / d / "results.json") for d in ("cpu", "cuda"))
    assert len(gpu["online_accuracy"]) == 2
    # the same initial network and example order; floating-point sums differ in the last bits
    assert gpu["online_accuracy"] == pytest.approx(cpu["online_accuracy"], abs=5.0)
    # a GPU checkpoint resumes on the CPU, and back
    cut = [*online, "--logdir", str(tmp_path), "--name", "moved", "--device", "cuda",
           "--set", "train.stop_after_tasks=1"]  # fmt: skip
    assert train_supervised(cut) == 0
    resume = ["--resume", str(tmp_path / "moved"), "--device", "cpu",
              "--set", "train.stop_after_tasks=null", "--no-progress"]  # fmt: skip
    assert train_supervised(resume) == 0
    assert len(_results(tmp_path / "moved" / "results.json")["online_accuracy"]) == 2


@cuda
def test_batched_seeds_on_cuda_match_single_runs_on_cuda(tmp_path, mnist_dir):
    online = [*ONLINE, "--data-dir", str(mnist_dir), "--device", "cuda"]
    assert train_supervised([*online, "--seeds", "0,1", "--logdir", str(tmp_path / "b")]) == 0
    for seed in (0, 1):
        assert train_supervised([*online, "--seed", str(seed), "--logdir", str(tmp_path / "s"),
                                 "--name", f"s{seed}"]) == 0  # fmt: skip
    batched = sorted((tmp_path / "b").glob("*/results.json"))
    for seed, path in zip((0, 1), batched, strict=True):
        single = _results(tmp_path / "s" / f"s{seed}" / "results.json")
        assert _results(path)["online_accuracy"] == pytest.approx(single["online_accuracy"],
                                                                  abs=1.0)  # fmt: skip


@cuda
def test_ppo_trains_on_cuda_and_resumes_on_the_cpu(tmp_path):
    cut = [*RL, "--device", "cuda", "--logdir", str(tmp_path), "--name", "r",
           "--total-steps", "256"]  # fmt: skip
    assert train_rl(cut) == 0
    assert train_rl(["--resume", str(tmp_path / "r"), "--device", "cpu", "--total-steps", "512",
                     "--no-progress"]) == 0  # fmt: skip
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "complete" and status["env_steps"] == 512
