"""Task streams on small synthetic datasets: task content, seeds, laziness, presets, errors."""

from __future__ import annotations

import inspect
import time

import pytest
import torch
import yaml

from plasticity_rl.config import REPO_ROOT
from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised.datasets import ImageDataset
from plasticity_rl.supervised.regression import RegressionStream, SlowlyChangingRegression
from plasticity_rl.supervised.streams import (
    STREAMS,
    LazyTasks,
    Task,
    TaskStream,
    example_order,
    load_stream_preset,
    make_stream,
    make_stream_from_preset,
    pixel_permutation,
    rotate_images,
    validation_split,
)

PRESETS = [
    "split-mnist",
    "split-fashion-mnist",
    "permuted-mnist",
    "online-permuted-mnist",
    "rotated-mnist",
    "split-cifar10",
    "split-cifar100",
    "class-incremental-cifar100",
    "slowly-changing-regression",
]


def synthetic(
    name: str = "mnist",
    num_classes: int = 10,
    shape: tuple[int, ...] = (1, 28, 28),
    num_train: int = 200,
    num_test: int = 50,
) -> ImageDataset:
    """Random uint8 images; every class occurs in both splits, labels in shuffled order."""
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        return images, labels

    train_x, train_y = split(num_train)
    test_x, test_y = split(num_test)
    return ImageDataset(name, train_x, train_y, test_x, test_y, num_classes)


def cifar100() -> ImageDataset:
    return synthetic("cifar100", 100, (3, 32, 32), num_train=300, num_test=100)


def dataset_for(name: str | None) -> ImageDataset | None:
    if name is None:
        return None
    if name.startswith("cifar"):
        num_classes = int(name.removeprefix("cifar"))
        # 51 per class: class-incremental CIFAR-100 holds the first 50 out for validation
        return synthetic(name, num_classes, (3, 32, 32), num_train=51 * num_classes, num_test=100)
    return synthetic(name)


def scaled(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1], flattened: the default MNIST preprocessing."""
    return images.float().div(255).flatten(1)


# --------------------------------------------------------------------------- split


def test_split_default_order_and_task_content():
    data = synthetic()
    stream = make_stream("split", data)
    assert isinstance(stream, TaskStream) and not stream.online
    assert stream.num_classes == 10 and stream.input_shape == (784,)
    assert len(stream.tasks) == 5
    assert stream.description["class_order"] == list(range(10))
    assert stream.description["task_classes"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    for t, task in enumerate(stream.tasks):
        classes = [2 * t, 2 * t + 1]
        assert task.name == f"classes_{2 * t}_{2 * t + 1}"
        assert task.classes == classes and task.active_classes == list(range(10))
        keep = (data.train_y == classes[0]) | (data.train_y == classes[1])
        assert torch.equal(task.train_y, data.train_y[keep])
        assert torch.equal(task.train_x, scaled(data.train_x[keep]))
        assert task.train_x.dtype == torch.float32 and task.train_y.dtype == torch.int64
        assert set(task.test_y.tolist()) == set(classes)
        assert len(task.test_y) == int(torch.isin(data.test_y, torch.tensor(classes)).sum())
        assert task.test_x.shape == (len(task.test_y), 784)


def test_split_custom_class_order_is_used_and_recorded():
    order = [9, 3, 0, 7, 1, 2]  # a subset of the classes is allowed
    stream = make_stream("split", synthetic(), class_order=order, classes_per_task=3)
    assert stream.description["class_order"] == order
    assert [task.classes for task in stream.tasks] == [[9, 3, 0], [7, 1, 2]]
    assert stream.tasks[0].name == "classes_9_3_0"
    for task in stream.tasks:
        assert set(task.train_y.tolist()) == set(task.classes)
        assert set(task.test_y.tolist()) == set(task.classes)


def test_split_shuffled_class_order_is_seeded_and_recorded():
    orders = [
        make_stream("split", synthetic(), shuffle_classes_seed=s).description["class_order"]
        for s in (5, 5, 6)
    ]
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[0]) == list(range(10)) and orders[0] != list(range(10))
    stream = make_stream("split", synthetic(), shuffle_classes_seed=5)
    assert [task.classes for task in stream.tasks] == [
        orders[0][i : i + 2] for i in range(0, 10, 2)
    ]


def test_split_cifar100_keeps_image_shape_and_normalises_per_channel():
    stream = make_stream("split", cifar100(), classes_per_task=10, normalize=True)
    assert len(stream.tasks) == 10 and stream.num_classes == 100
    assert stream.input_shape == (3, 32, 32) and stream.tasks[3].train_x.shape[1:] == (3, 32, 32)
    every_image = torch.cat([task.train_x for task in stream.tasks])
    assert len(every_image) == 300
    per_channel = every_image.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(dim=1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(dim=1), torch.ones(3), atol=1e-4)
    flat = make_stream("split", cifar100(), classes_per_task=10, flatten=True)
    assert flat.input_shape == (3072,) and flat.tasks[0].train_x.shape[1] == 3072


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes_per_task": 3}, r"split.classes_per_task: got 3; allowed: a divisor .*\(10\)"),
        ({"class_order": [0, 0]}, r"split.class_order: got \[0, 0\]"),
        ({"class_order": [0, 10]}, r"split.class_order: got \[0, 10\]; allowed: .*\[0, 10\)"),
        (
            {"class_order": [0, 1], "shuffle_classes_seed": 1},
            "split.shuffle_classes_seed: got 1",
        ),
        ({"shuffle_classes_seed": -1}, "split.shuffle_classes_seed: got -1"),
    ],
)
def test_split_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_stream("split", synthetic(), **kwargs)


# --------------------------------------------------------------------------- permuted


def test_permuted_tasks_apply_their_seeded_permutation():
    data = synthetic()
    stream = make_stream("permuted", data, num_tasks=3, seed=7)
    again = make_stream("permuted", data, num_tasks=3, seed=7)
    other = make_stream("permuted", data, num_tasks=3, seed=8)
    perms = [pixel_permutation(7, t, 784) for t in range(3)]
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[1], perms[2])
    assert sorted(perms[0].tolist()) == list(range(784))
    for t, task in enumerate(stream.tasks):
        assert task.name == f"permutation_{t}" and task.active_classes == list(range(10))
        assert torch.equal(task.train_x, scaled(data.train_x)[:, perms[t]])
        assert torch.equal(task.test_x, scaled(data.test_x)[:, perms[t]])
        assert torch.equal(task.train_y, data.train_y) and torch.equal(task.test_y, data.test_y)
        assert torch.equal(task.train_x, again.tasks[t].train_x)
        assert not torch.equal(task.train_x, other.tasks[t].train_x)
    assert stream.description["seed"] == 7 and stream.description["num_tasks"] == 3


def test_first_task_unpermuted_leaves_the_other_tasks_alone():
    data = synthetic()
    plain = make_stream("permuted", data, num_tasks=2, seed=1)
    stream = make_stream("permuted", data, num_tasks=2, seed=1, first_task_unpermuted=True)
    assert torch.equal(stream.tasks[0].train_x, scaled(data.train_x))
    assert torch.equal(stream.tasks[1].train_x, plain.tasks[1].train_x)


def test_permuted_without_flatten_permutes_the_flat_image_and_reshapes():
    data = synthetic()
    stream = make_stream("permuted", data, num_tasks=1, seed=2, flatten=False)
    assert stream.input_shape == (1, 28, 28)
    task = stream.tasks[0]
    assert task.train_x.shape == (200, 1, 28, 28)
    perm = pixel_permutation(2, 0, 784)
    assert torch.equal(task.train_x.flatten(1), scaled(data.train_x)[:, perm])


def test_online_permuted_is_lazy_and_presents_each_image_once():
    data = synthetic()
    start = time.perf_counter()
    stream = make_stream("online_permuted", data, seed=3)  # 800 tasks by default
    huge = make_stream("online_permuted", data, num_tasks=10**9)
    assert time.perf_counter() - start < 1.0
    assert len(stream.tasks) == 800 and len(huge.tasks) == 10**9
    assert stream.tasks.built == [] and stream.online
    task = stream.tasks[799]
    assert stream.tasks.built == [799]
    order = example_order(3, 799, 200)
    assert sorted(order.tolist()) == list(range(200))  # every image exactly once
    assert not torch.equal(order, example_order(3, 798, 200))
    perm = pixel_permutation(3, 799, 784)
    assert torch.equal(task.train_x, scaled(data.train_x)[order][:, perm])
    assert torch.equal(task.train_y, data.train_y[order])
    assert task.test_x.shape == (0, 784) and task.test_y.shape == (0,)
    assert huge.tasks[-1].train_x.shape == (200, 784)


def test_online_permuted_examples_per_task_takes_the_first_of_each_tasks_order():
    data = synthetic()  # 200 training images
    full = make_stream("online_permuted", data, num_tasks=3, seed=3)
    short = make_stream("online_permuted", data, num_tasks=3, seed=3, examples_per_task=50)
    for t in range(3):
        # the first 50 of the full task's 200, in the same order and with the same permutation
        assert torch.equal(short.tasks[t].train_x, full.tasks[t].train_x[:50])
        assert torch.equal(short.tasks[t].train_y, full.tasks[t].train_y[:50])
    # task 1's first 50 are not task 0's: each task has its own order
    assert not torch.equal(short.tasks[1].train_y, short.tasks[0].train_y)
    assert short.description["examples_per_task"] == 50
    assert full.description["examples_per_task"] == 200  # None: every image
    more = make_stream("online_permuted", data, num_tasks=1, seed=3, examples_per_task=10**6)
    assert more.description["examples_per_task"] == 200  # at most the split
    assert torch.equal(more.tasks[0].train_x, full.tasks[0].train_x)
    with pytest.raises(ConfigError, match="online_permuted.examples_per_task: got 0"):
        make_stream("online_permuted", data, examples_per_task=0)


# --------------------------------------------------------------------------- rotated


def test_rotate_images_by_hand():
    # 5 x 5 image, row 0 at the top: 1 at the top middle (0, 2), 2 at the top right (0, 4).
    # A 90 degree counter-clockwise turn takes the top edge to the left edge:
    # (0, 2) -> (2, 0) and (0, 4) -> (0, 0).
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 0, 2], image[0, 0, 0, 4] = 1.0, 2.0
    expected = torch.zeros(5, 5)
    expected[2, 0], expected[0, 0] = 1.0, 2.0
    assert torch.allclose(rotate_images(image, 90.0)[0, 0], expected, atol=1e-6)
    # 180 degrees: (0, 2) -> (4, 2), (0, 4) -> (4, 0)
    half = rotate_images(image, 180.0)[0, 0]
    assert half[4, 2] == pytest.approx(1.0, abs=1e-6) and half[4, 0] == pytest.approx(2.0, abs=1e-6)


def test_rotated_stream_tasks():
    data = synthetic()
    stream = make_stream("rotated", data)
    assert stream.description["angles"] == [0.0, 80.0, 160.0]
    assert [task.name for task in stream.tasks] == ["rotation_0", "rotation_80", "rotation_160"]
    images = data.train_x.float().div(255)
    # 0 degrees: unchanged up to float32 rounding of the sampling grid
    assert torch.allclose(stream.tasks[0].train_x, images.flatten(1), atol=1e-5)
    assert torch.equal(stream.tasks[1].train_x, rotate_images(images, 80.0).flatten(1))
    assert not torch.allclose(stream.tasks[1].train_x, images.flatten(1), atol=0.1)
    turned = make_stream("rotated", data, angles=[180], flatten=False).tasks[0]
    assert turned.train_x.shape == (200, 1, 28, 28)
    assert torch.allclose(rotate_images(turned.train_x, 180.0), images, atol=1e-5)
    assert torch.allclose(turned.test_x, rotate_images(data.test_x.float().div(255), 180.0))


def test_rotated_config_errors():
    with pytest.raises(ConfigError, match=r"rotated.angles: got \[\]"):
        make_stream("rotated", synthetic(), angles=[])
    with pytest.raises(ConfigError, match=r"rotated.dataset image size: got \(28, 20\)"):
        make_stream("rotated", synthetic(shape=(1, 28, 20)))


# --------------------------------------------------------------------------- class-incremental


def test_class_incremental_tasks_grow_by_five_classes():
    data = cifar100()
    stream = make_stream("class_incremental", data)
    order = stream.description["class_order"]
    assert sorted(order) == list(range(100)) and order != list(range(100))  # seeded shuffle
    assert order == make_stream("class_incremental", data).description["class_order"]
    assert len(stream.tasks) == 20 and stream.num_classes == 100
    for t in (0, 1, 19):
        task = stream.tasks[t]
        seen = order[: 5 * (t + 1)]
        assert task.classes == seen and task.active_classes == seen
        assert set(task.train_y.tolist()) == set(seen) and set(task.test_y.tolist()) == set(seen)
        assert len(task.train_y) == int(torch.isin(data.train_y, torch.tensor(seen)).sum())
    assert len(stream.tasks[19].train_y) == 300  # the last task holds every class


def test_class_incremental_explicit_order():
    order = list(range(99, -1, -1))
    stream = make_stream(
        "class_incremental", cifar100(), class_order=order, shuffle_classes_seed=None
    )
    assert stream.tasks[1].classes == [99, 98, 97, 96, 95, 94, 93, 92, 91, 90]
    assert stream.description["class_order"] == order


# --------------------------------------------------------------------------- registry, laziness


def test_lazy_tasks_sequence():
    calls = []

    def build(t: int) -> Task:
        calls.append(t)
        empty = torch.zeros(0)
        return Task(f"t{t}", empty, empty, empty, empty, [], [])

    tasks = LazyTasks(4, build, cache_size=2)
    assert calls == [] and len(tasks) == 4
    assert tasks[-1].name == "t3" and tasks[3] is tasks[-1] and calls == [3]
    assert [task.name for task in tasks[1:3]] == ["t1", "t2"]
    assert tasks.built == [1, 2]  # the least recently used (3) was dropped
    assert [task.name for task in tasks] == ["t0", "t1", "t2", "t3"]
    with pytest.raises(IndexError):
        tasks[4]


def test_unknown_stream_and_bad_keywords():
    with pytest.raises(ConfigError, match="stream: got 'splitt'; allowed: .*split"):
        make_stream("splitt", synthetic())
    with pytest.raises(ConfigError, match="stream.split key: got 'classes'; allowed: .*"):
        make_stream("split", synthetic(), classes=2)
    with pytest.raises(ConfigError, match="permuted.num_tasks: got 0"):
        make_stream("permuted", synthetic(), num_tasks=0)
    with pytest.raises(ConfigError, match="split.dataset: got None"):
        make_stream("split", None)
    with pytest.raises(ConfigError, match="slowly_changing_regression.dataset: got 'mnist'"):
        make_stream("slowly_changing_regression", synthetic())
    with pytest.raises(ConfigError, match="flip: got 'half'"):
        make_stream("slowly_changing_regression", flip="half")


def test_regression_stream_passes_generator_arguments_with_the_same_defaults():
    stream = make_stream("slowly_changing_regression", seed=5, flip_every_examples=7)
    assert isinstance(stream, RegressionStream) and stream.input_shape == (20,)
    assert stream.total_examples == 1_000_000 and stream.bin_size == 20_000
    expected = SlowlyChangingRegression(seed=5, flip_every_examples=7).sample(20)
    got = stream.generator.sample(20)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    stream_defaults = inspect.signature(STREAMS.get("slowly_changing_regression")).parameters
    for name, param in inspect.signature(SlowlyChangingRegression).parameters.items():
        assert stream_defaults[name].default == param.default, name


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_builds(name):
    path = REPO_ROOT / "envs" / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("# ")  # the paper setting is cited
    raw = yaml.safe_load(text)
    assert set(raw) == {"stream", "dataset", "kwargs"}
    assert load_stream_preset(name) == raw
    stream = make_stream(raw["stream"], dataset_for(raw["dataset"]), **raw["kwargs"])
    if raw["dataset"] is None:
        assert isinstance(stream, RegressionStream)
        x, y = stream.generator.sample(3)
        assert x.shape == (3, 20) and y.shape == (3, 1)
    else:
        assert isinstance(stream, TaskStream) and len(stream.tasks) >= 3
        task = stream.tasks[len(stream.tasks) - 1]
        assert task.train_x.shape[1:] == stream.input_shape
        assert set(task.train_y.tolist()) <= set(task.classes)


def test_preset_settings_and_overrides():
    online = make_stream_from_preset("online-permuted-mnist", dataset_for("mnist"))
    assert online.online and len(online.tasks) == 800
    cifar = make_stream_from_preset("split-cifar100", dataset_for("cifar100"))
    assert [len(task.classes) for task in cifar.tasks] == [10] * 10
    incremental = make_stream_from_preset(
        "class-incremental-cifar100", dataset_for("cifar100"), classes_per_step=50
    )
    assert len(incremental.tasks) == 2
    with pytest.raises(ConfigError, match="stream preset hopper-friction"):
        load_stream_preset("hopper-friction")


def test_validation_split_holds_out_the_first_images_of_each_class():
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 0, 1])
    assert validation_split(labels, 2).tolist() == [True, True, True, True, True, False, False,
                                                    True]  # fmt: skip
    assert not validation_split(labels, 0).any()


def test_class_incremental_tasks_hold_out_validation_and_augment():
    data = synthetic("cifar100", 100, (3, 32, 32), num_train=600, num_test=200)
    stream = make_stream("class_incremental", data, validation_per_class=2,
                         augmentation="flip_crop_rotate")  # fmt: skip
    task = stream.tasks[1]  # 10 classes, 6 training images each: 2 held out, 4 trained
    assert len(task.val_y) == 20 and len(task.train_y) == 40
    held_out = validation_split(data.train_y, 2)
    seen = torch.isin(data.train_y, torch.tensor(task.classes))
    assert torch.equal(task.val_y, data.train_y[seen & held_out])
    assert torch.equal(task.train_y, data.train_y[seen & ~held_out])
    assert task.augment is not None and stream.description["validation_per_class"] == 2
    with pytest.raises(ConfigError, match="augmentation"):
        make_stream("class_incremental", data, augmentation="mixup")
    with pytest.raises(ConfigError, match=r"validation_per_class: got 6; .* smallest class \(6\)"):
        make_stream("class_incremental", data, validation_per_class=6)
