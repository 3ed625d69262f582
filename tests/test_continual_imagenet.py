"""Continual ImageNet: the class files their code reads, the binary tasks, the run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticity_rl.config import REPO_ROOT, preset_names
from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised.continual_imagenet import ImagenetClassFiles
from plasticity_rl.supervised.datasets import DatasetFormatError, DatasetNotFound, load_dataset
from plasticity_rl.supervised.streams import make_stream

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from train_supervised import main  # noqa: E402

CLASSES, IMAGES = 6, 8


@pytest.fixture(scope="module")
def class_files(tmp_path_factory) -> Path:
    """``classes/<c>.npy``: 6 classes of 8 uint8 images, image i of class c filled with
    ``10 c + i`` (so every image says where it came from)."""
    root = tmp_path_factory.mktemp("imagenet")
    (root / "classes").mkdir()
    for c in range(CLASSES):
        images = np.stack([np.full((3, 32, 32), 10 * c + i, np.uint8) for i in range(IMAGES)])
        np.save(root / "classes" / f"{c}.npy", images)
    return root


def test_tasks_are_pairs_of_a_permutation_repeated(class_files):
    dataset = load_dataset("imagenet32_classes", class_files)
    stream = make_stream("continual_imagenet", dataset, num_tasks=5, seed=0, train_per_class=6)
    order = stream.description["class_order"]
    assert sorted(order) == list(range(CLASSES))
    for t in range(5):
        task = stream.tasks[t]
        pair = (order * 2)[2 * t : 2 * t + 2]
        assert task.name == f"classes_{pair[0]}_{pair[1]}"
        # labels by position in the pair; the first 6 images train, the last 2 test
        assert task.train_y.tolist() == [0] * 6 + [1] * 6 and task.test_y.tolist() == [0, 0, 1, 1]
        assert task.train_x[:, 0, 0, 0].tolist() == [10 * pair[0] + i for i in range(6)] + [
            10 * pair[1] + i for i in range(6)
        ]
        assert task.test_x[:, 0, 0, 0].tolist() == [10 * pair[0] + 6, 10 * pair[0] + 7,
                                                    10 * pair[1] + 6, 10 * pair[1] + 7]  # fmt: skip
        assert task.train_x.dtype == torch.float32 and task.active_classes == [0, 1]
    assert stream.tasks[3].name == stream.tasks[0].name  # 6 classes: 3 pairs, then again
    other = make_stream("continual_imagenet", dataset, num_tasks=5, seed=1, train_per_class=6)
    assert other.description["class_order"] != order


def test_missing_and_malformed_files_say_what_to_get(tmp_path, class_files):
    with pytest.raises(DatasetNotFound, match=r"no class files 0.npy.*drive.google.com"):
        ImagenetClassFiles(tmp_path)
    (tmp_path / "classes").mkdir()
    for c in range(2):
        np.save(tmp_path / "classes" / f"{c}.npy", np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"shape \(4, 32, 32, 3\); expected"):
        ImagenetClassFiles(tmp_path)
    dataset = ImagenetClassFiles(class_files / "classes")
    with pytest.raises(
        ConfigError, match=r"train_per_class: got 8; allowed: an integer in \[1, 7\]"
    ):
        make_stream("continual_imagenet", dataset, train_per_class=8)


AGENTS = [n for n in preset_names("agents") if n.startswith("imagenet-")]


@pytest.mark.parametrize("agent", AGENTS)
def test_continual_imagenet_learners_train_end_to_end(agent, tmp_path, class_files, capsys):
    small = ["stream.kwargs.num_tasks=3", "stream.kwargs.train_per_class=6",
             "train.epochs_per_task=2", "train.batch_size=4", "train.probe_size=8",
             "train.log_every_steps=1"]  # fmt: skip
    if agent.endswith("-cbp"):
        small += ["method.continual_backprop.replacement_rate=0.1",
                  "method.continual_backprop.maturity_threshold=1"]  # fmt: skip
    args = ["--env", "continual-imagenet", "--agent", agent,
            "--data-dir", str(class_files), "--logdir", str(tmp_path), "--name", "r",
            "--no-progress"]  # fmt: skip
    assert main([*args, *[a for item in small for a in ("--set", item)]]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert len(results["task_accuracy"]) == 3 and "accuracy_matrix" not in results
    assert all(a in (0.0, 25.0, 50.0, 75.0, 100.0) for a in results["task_accuracy"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "r"))
    events.Reload()
    names = set(events.Tags()["scalars"])
    assert {"cl/task_accuracy", "plasticity/net/hidden5/dormant_ratio"} <= names
    replacements = {"plasticity/net/hidden1/replacements", "plasticity/net/hidden5/replacements"}
    assert (replacements <= names) == agent.endswith("-cbp")
    resets = sum(e.value for e in events.Scalars("plasticity/net/reset_layers/resets"))
    assert resets == 3  # the head set to zero before each of the 3 tasks
    # a missing data directory is a one-line error, nothing written
    assert main([*args[:5], str(tmp_path / "none"), "--logdir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no class files") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
