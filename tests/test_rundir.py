"""Run directories: verified checkpoints with a previous copy, disk full, lock, stop signals."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from plasticity_rl.registry import ConfigError
from plasticity_rl.rundir import (
    CHECKPOINT,
    DiskFull,
    RunLock,
    StopSignals,
    check_state_dict,
    load_checkpoint,
    save_checkpoint,
    write_status,
)


def test_a_checkpoint_keeps_its_predecessor_and_both_are_verified(tmp_path):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["latest.pt", "latest.pt.sha256", "previous.pt", "previous.pt.sha256"]
    assert load_checkpoint(path)["step"] == 2
    assert torch.load(path.with_name("previous.pt"), weights_only=True)["step"] == 1


@pytest.mark.parametrize("damage", ["truncate", "random", "flip"])
def test_a_damaged_latest_falls_back_to_previous_with_a_warning(damage, tmp_path, capsys):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2, "w": torch.arange(1000.0)})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(len(data)))
    else:  # one byte changed: only the checksum notices
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    assert load_checkpoint(path)["step"] == 1
    assert "warning: " in capsys.readouterr().err


def test_no_intact_checkpoint_is_a_one_line_config_error(tmp_path):
    path = tmp_path / CHECKPOINT
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(300))  # no sidecar: an unreadable file all the same
    with pytest.raises(ConfigError, match=r"--resume: .*an intact checkpoint.*not a readable"):
        load_checkpoint(path)
    path.unlink()
    with pytest.raises(ConfigError, match=r"latest.pt: missing"):
        load_checkpoint(path)


def test_disk_full_removes_the_partial_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFull, match="no space left on device"):
        save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt", "latest.pt.sha256"]


def test_a_checkpoint_of_another_network_is_refused_with_the_first_difference(tmp_path):
    current = {"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(4)}
    check_state_dict("network", dict(current), current, tmp_path)
    wider = {"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(5)}
    with pytest.raises(ConfigError, match=r"0.weight has shape \(4, 3\) here, of shape \(5, 3\)"):
        check_state_dict("network", wider, current, tmp_path)
    with pytest.raises(ConfigError, match=r"that this run does not"):
        check_state_dict("network", {**current, "1.weight": torch.zeros(1)}, current, tmp_path)


def test_a_second_process_on_a_locked_run_is_refused_and_a_stale_lock_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "run.pid").write_text(f"{sleeper.pid}\n")
        with pytest.raises(ConfigError, match=rf"process {sleeper.pid} holds"):
            RunLock(tmp_path).__enter__()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(tmp_path):  # the holder is gone
        assert (tmp_path / "run.pid").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "run.pid").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_are_recorded_not_fatal(signum):
    before = signal.getsignal(signum)
    with StopSignals() as stop:
        os.kill(os.getpid(), signum)
        assert stop.received == signum
    assert signal.getsignal(signum) == before


def test_status_is_replaced_atomically(tmp_path):
    write_status(tmp_path, "running", step=3)
    write_status(tmp_path, "complete", step=5)
    assert json.loads((tmp_path / "status.json").read_text()) == {"state": "complete", "step": 5}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
