"""Task streams for supervised continual learning, built from an image dataset by name.

``make_stream(name, dataset, **kwargs)`` looks ``name`` up in :data:`STREAMS`:

- ``split``: class-incremental Split MNIST / Fashion-MNIST / CIFAR-10 / CIFAR-100 (Hsu et al.
  2018): tasks of ``classes_per_task`` classes, one head over all classes, no task id;
- ``permuted``: Permuted MNIST (Goodfellow et al. 2013): one fixed random pixel permutation per
  task;
- ``online_permuted``: Online Permuted MNIST (Dohare et al. 2024): 800 permutations, each task's
  60,000 training images (or the first ``examples_per_task`` of them) seen once in a seeded
  random order, batch size 1, no task-switch signal;
- ``rotated``: Rotated MNIST (stability-gap setting of De Lange et al. 2023): one rotation angle
  per task;
- ``class_incremental``: class-incremental CIFAR-100 (Dohare et al. 2024): 5 new classes per
  task, each task trains on every class seen so far;
- ``slowly_changing_regression``: the regression problem of
  :mod:`plasticity_rl.supervised.regression` (no dataset; returns a
  :class:`~plasticity_rl.supervised.regression.RegressionStream`).

Laziness: :attr:`TaskStream.tasks` is a :class:`LazyTasks` sequence that builds a task's tensors
when it is indexed (and keeps the most recently built one), because materialising every task
up front is impossible for Online Permuted MNIST (800 tasks x 60,000 x 784 float32 = 150 GB)
and wasteful elsewhere (class-incremental CIFAR-100 repeats old classes in every task). A built
:class:`Task` holds plain model-ready tensors, so the trainer's hot loop is ``x[idx]``. Building
a task costs one pass over the data (a gather, a rotation); index ``stream.tasks[t]`` once per
task and keep the result rather than indexing inside the training loop.

Preprocessing (every image stream): ``uint8 -> float32 / 255`` in [0, 1]; if ``normalize``,
per-channel ``(x - mean_c) / std_c`` with the mean and std of the dataset's whole training
split; then the task's transform (pixel permutation of the flattened image, rotation); then
``flatten`` to ``(C * H * W,)``. ``flatten=None`` flattens single-channel images (MNIST-like,
for MLPs) and keeps multi-channel ones as ``(C, H, W)`` (CIFAR). Rotation after normalisation
pads with 0, i.e. with the channel mean when normalising (black otherwise).

Seeds: permutations, example orders and shuffled class orders come from a generator seeded by
``numpy.random.SeedSequence([seed, purpose, task])``, so task ``t`` of a stream can be built
alone and the same ``seed`` always gives the same stream.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from plasticity_rl.config import load_preset
from plasticity_rl.registry import ConfigError, Registry, require
from plasticity_rl.supervised.augment import AUGMENTATIONS, Augmentation
from plasticity_rl.supervised.regression import RegressionStream, SlowlyChangingRegression

if TYPE_CHECKING:
    from plasticity_rl.supervised.datasets import ImageDataset

STREAMS: Registry[Any] = Registry("stream")
"""Stream factories by name; each takes ``dataset`` and explicit keyword arguments."""

# ``purpose`` entries of the seed sequences (see :func:`seeded_generator`).
_PIXEL_PERMUTATION, _EXAMPLE_ORDER, _CLASS_ORDER = 0, 1, 2


@dataclass
class Task:
    """One task: model-ready tensors and the classes it uses."""

    name: str
    """E.g. ``"classes_0_1"``, ``"permutation_3"``, ``"rotation_80"``."""
    train_x: Tensor
    """float32, ``(N, *input_shape)``."""
    train_y: Tensor
    """int64, ``(N,)``."""
    test_x: Tensor
    """float32, ``(M, *input_shape)``; ``M = 0`` for online streams."""
    test_y: Tensor
    """int64, ``(M,)``."""
    classes: list[int]
    """The labels that appear in this task."""
    active_classes: list[int]
    """Output units usable in this task: the classes seen so far for ``class_incremental``,
    every class of the stream otherwise. The trainer masks the other logits."""
    val_x: Tensor | None = None
    """float32 validation inputs held out of the training data (``validation_per_class``),
    or None."""
    val_y: Tensor | None = None
    """int64 validation labels, or None."""
    augment: Augmentation | None = None
    """Applied to every training batch (:mod:`plasticity_rl.supervised.augment`), or None."""

    def to(self, device: torch.device) -> Task:
        """The task with its tensors on ``device``."""
        moved = {key: getattr(self, key).to(device) for key in TASK_TENSORS
                 if getattr(self, key) is not None}  # fmt: skip
        return dataclasses.replace(self, **moved)


TASK_TENSORS = ("train_x", "train_y", "test_x", "test_y", "val_x", "val_y")


class LazyTasks(Sequence[Task]):
    """``num_tasks`` tasks, task ``t`` built by ``build(t)`` when indexed.

    The ``cache_size`` most recently used tasks are kept (least recently used dropped first).

    Args:
        num_tasks: length of the sequence.
        build: makes task ``t`` (``0 <= t < num_tasks``).
        cache_size: built tasks kept in memory.
    """

    def __init__(self, num_tasks: int, build: Callable[[int], Task], cache_size: int = 1):
        self._num_tasks = num_tasks
        self._build = build
        self.cache_size = cache_size
        self._cache: OrderedDict[int, Task] = OrderedDict()
        self.device = torch.device("cpu")
        """Where built tasks' tensors are moved (once, when built): the run's device."""

    def __len__(self) -> int:
        return self._num_tasks

    @overload
    def __getitem__(self, index: int) -> Task: ...

    @overload
    def __getitem__(self, index: slice) -> list[Task]: ...

    def __getitem__(self, index: int | slice) -> Task | list[Task]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._num_tasks))]
        if not -self._num_tasks <= index < self._num_tasks:
            raise IndexError(f"task index {index} out of range for {self._num_tasks} tasks")
        index %= self._num_tasks
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        task = self._build(index)
        if self.device.type != "cpu":
            task = task.to(self.device)
        self._cache[index] = task
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return task

    def __iter__(self) -> Iterator[Task]:
        return (self[i] for i in range(self._num_tasks))

    @property
    def built(self) -> list[int]:
        """Indices of the tasks currently held in memory."""
        return list(self._cache)


@dataclass
class TaskStream:
    """A sequence of classification tasks sharing one output head."""

    name: str
    tasks: Sequence[Task]
    """A :class:`LazyTasks`: index it to build a task."""
    num_classes: int
    """Width of the single output head."""
    input_shape: tuple[int, ...]
    online: bool = False
    """True (Online Permuted MNIST): the trainer makes one pass over each task's ``train_x`` in
    the stored order with batch size 1 and reports online accuracy (there is no test set), and
    does not signal task switches: no ``on_task_end`` calls, and methods with
    ``uses_task_boundaries`` are refused."""
    description: dict[str, Any] = field(default_factory=dict)
    """What the config produced (dataset, class order, seeds, angles, ...), for the run log."""


def make_stream(
    name: str, dataset: ImageDataset | None = None, **kwargs: Any
) -> TaskStream | RegressionStream:
    """Build the stream registered as ``name`` (unknown names and keywords raise ConfigError)."""
    return STREAMS.create(name, dataset=dataset, **kwargs)


def load_stream_preset(name_or_path: str | Path) -> dict[str, Any]:
    """Read a preset ``{stream: name, dataset: name or null, kwargs: {...}}`` from ``envs/``.

    Raises:
        ConfigError: unknown preset, or a file without ``stream`` / with other keys.
    """
    preset = load_preset("envs", name_or_path)
    keys = {"stream", "dataset", "kwargs"}
    if "stream" not in preset or set(preset) - keys:
        raise ConfigError(
            f"stream preset {name_or_path}", preset, "a mapping with stream, dataset, kwargs"
        )
    return {
        "stream": str(preset["stream"]),
        "dataset": preset.get("dataset"),
        "kwargs": dict(preset.get("kwargs") or {}),
    }


def make_stream_from_preset(
    preset: str | Path | Mapping[str, Any],
    dataset: ImageDataset | None = None,
    data_dir: str | Path | None = None,
    **overrides: Any,
) -> TaskStream | RegressionStream:
    """``make_stream`` from a preset (name, path or loaded mapping); ``overrides`` win.

    The preset's dataset is loaded with ``datasets.load_dataset(name, data_dir)`` unless
    ``dataset`` is given.
    """
    if not isinstance(preset, Mapping):
        preset = load_stream_preset(preset)
    if dataset is None and preset.get("dataset") is not None:
        from plasticity_rl.supervised.datasets import load_dataset

        dataset = load_dataset(preset["dataset"], data_dir)
    return make_stream(preset["stream"], dataset, **{**preset.get("kwargs", {}), **overrides})


# --------------------------------------------------------------------------- helpers


def seeded_generator(seed: int, purpose: int, index: int = 0) -> torch.Generator:
    """A torch generator seeded by ``SeedSequence([seed, purpose, index])``."""
    state = np.random.SeedSequence([seed, purpose, index]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def pixel_permutation(seed: int, task_index: int, num_pixels: int) -> Tensor:
    """The pixel permutation of task ``task_index`` of a permuted stream with ``seed``.

    Task ``t``'s permuted image is ``x_flat[perm]`` (``x_flat`` of length ``C * H * W``).
    """
    return torch.randperm(
        num_pixels, generator=seeded_generator(seed, _PIXEL_PERMUTATION, task_index)
    )


def example_order(seed: int, task_index: int, num_examples: int) -> Tensor:
    """The order in which task ``task_index`` of ``online_permuted`` presents its examples."""
    return torch.randperm(
        num_examples, generator=seeded_generator(seed, _EXAMPLE_ORDER, task_index)
    )


def rotate_images(images: Tensor, degrees: float) -> Tensor:
    """Rotate every image counter-clockwise by ``degrees`` (bilinear, zero padding).

    One sampling grid for the whole batch: the ``N`` images are stacked as channels of one
    image for ``grid_sample``. For square images, multiples of 90 degrees map pixel centres
    onto pixel centres (``align_corners=False``), so they only move pixels (up to float32
    rounding of the grid, ~1e-6).

    Args:
        images: float ``(N, C, H, W)``.
        degrees: rotation angle; positive is counter-clockwise as displayed (row 0 at the top).
    """
    n, c, h, w = images.shape
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # Output pixel (u, v) (u right, v down, in [-1, 1]) samples the input at R(-angle)(u, v);
    # with v pointing down that is (u cos - v sin, u sin + v cos).
    theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=images.dtype)
    grid = F.affine_grid(theta, [1, n * c, h, w], align_corners=False)
    stacked = images.reshape(1, n * c, h, w)
    rotated = F.grid_sample(
        stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return rotated.reshape(n, c, h, w)


class ImagePreprocessor:
    """``uint8 (N, C, H, W) -> float32`` model input (see the module docstring for the order).

    Args:
        train_x: the dataset's training images (source of the normalisation statistics).
        normalize: per-channel standardisation with the training split's mean and std.
        flatten: output ``(N, C * H * W)``; ``None``: flatten iff ``C == 1``.
    """

    def __init__(self, train_x: Tensor, normalize: bool, flatten: bool | None):
        self.image_shape = tuple(train_x.shape[1:])
        channels = self.image_shape[0]
        self.flatten = channels == 1 if flatten is None else flatten
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        if normalize:
            mean, std = torch.empty(channels, 1, 1), torch.empty(channels, 1, 1)
            for c in range(channels):  # one channel at a time: one float copy of a channel
                pixels = train_x[:, c].to(torch.float32).div_(255)
                mean[c], std[c] = pixels.mean(), pixels.std().clamp_min(1e-8)
            self.mean, self.std = mean, std

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one preprocessed image."""
        return (math.prod(self.image_shape),) if self.flatten else self.image_shape

    def __call__(
        self, images: Tensor, transform: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """Scale, normalise, apply ``transform`` (float ``(N, C, H, W)`` in and out), flatten."""
        x = images.to(torch.float32).div_(255)
        if self.mean is not None and self.std is not None:
            x = x.sub_(self.mean).div_(self.std)
        if transform is not None:
            x = transform(x)
        return x.flatten(1) if self.flatten else x


def _require_dataset(stream: str, dataset: ImageDataset | None) -> ImageDataset:
    if dataset is None:
        raise ConfigError(f"{stream}.dataset", None, "an ImageDataset (this stream needs images)")
    return dataset


def _require_seed(key: str, seed: int) -> None:
    require(isinstance(seed, int) and seed >= 0, key, seed, "an integer >= 0")


def _class_order(
    stream: str,
    num_classes: int,
    group_size: int,
    group_key: str,
    class_order: list[int] | None,
    shuffle_classes_seed: int | None,
) -> list[int]:
    """The class order from ``class_order`` or ``shuffle_classes_seed`` (default 0..C-1)."""
    require(
        isinstance(group_size, int) and group_size >= 1,
        f"{stream}.{group_key}",
        group_size,
        "an integer >= 1",
    )
    if class_order is not None and shuffle_classes_seed is not None:
        raise ConfigError(
            f"{stream}.shuffle_classes_seed",
            shuffle_classes_seed,
            "null when class_order is given (give one of the two)",
        )
    if shuffle_classes_seed is not None:
        _require_seed(f"{stream}.shuffle_classes_seed", shuffle_classes_seed)
        gen = seeded_generator(shuffle_classes_seed, _CLASS_ORDER)
        order = torch.randperm(num_classes, generator=gen).tolist()
    elif class_order is not None:
        order = list(class_order)
        valid = all(isinstance(c, int) and 0 <= c < num_classes for c in order)
        require(
            valid and len(set(order)) == len(order) and len(order) > 0,
            f"{stream}.class_order",
            class_order,
            f"distinct class labels in [0, {num_classes})",
        )
    else:
        order = list(range(num_classes))
    require(
        len(order) % group_size == 0,
        f"{stream}.{group_key}",
        group_size,
        f"a divisor of the number of classes in the order ({len(order)})",
    )
    return order


def _subset(images: Tensor, labels: Tensor, classes: list[int]) -> tuple[Tensor, Tensor]:
    keep = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    return images[keep], labels[keep]


def _class_task(
    dataset: ImageDataset,
    preprocess: ImagePreprocessor,
    name: str,
    classes: list[int],
    active_classes: list[int],
) -> Task:
    train_x, train_y = _subset(dataset.train_x, dataset.train_y, classes)
    test_x, test_y = _subset(dataset.test_x, dataset.test_y, classes)
    return Task(
        name, preprocess(train_x), train_y, preprocess(test_x), test_y, classes, active_classes
    )


def validation_split(labels: Tensor, per_class: int) -> Tensor:
    """A bool mask over the training examples: the first ``per_class`` of each class, in the
    dataset's order (Dohare et al. 2024's CIFAR-100 validation set: the first 50 images of
    every class; their ``subsample_cifar_data_set``)."""
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        held_out[(labels == c).nonzero().squeeze(1)[:per_class]] = True
    return held_out


# --------------------------------------------------------------------------- streams


@STREAMS.register("split")
def split_stream(
    dataset: ImageDataset | None = None,
    classes_per_task: int = 2,
    class_order: list[int] | None = None,
    shuffle_classes_seed: int | None = None,
    flatten: bool | None = None,
    normalize: bool = False,
) -> TaskStream:
    """Class-incremental Split <dataset>: consecutive groups of ``classes_per_task`` classes.

    Task ``t`` holds the train and test examples of classes
    ``order[t * k : (t + 1) * k]`` (``k = classes_per_task``); one head of
    ``dataset.num_classes`` outputs, all active in every task (no task id).

    Args:
        dataset: the image dataset.
        classes_per_task: classes per task; must divide the length of the class order.
        class_order: the class order (distinct labels; may leave classes out); default
            ``0, 1, ..., C - 1``.
        shuffle_classes_seed: use a seeded random permutation of all classes instead.
        flatten: see the module docstring (``None``: flatten single-channel images).
        normalize: per-channel standardisation with training-split statistics.
    """
    dataset = _require_dataset("split", dataset)
    order = _class_order(
        "split",
        dataset.num_classes,
        classes_per_task,
        "classes_per_task",
        class_order,
        shuffle_classes_seed,
    )
    groups = [order[i : i + classes_per_task] for i in range(0, len(order), classes_per_task)]
    preprocess = ImagePreprocessor(dataset.train_x, normalize, flatten)
    all_classes = list(range(dataset.num_classes))

    def build(t: int) -> Task:
        name = "classes_" + "_".join(str(c) for c in groups[t])
        return _class_task(dataset, preprocess, name, groups[t], all_classes)

    return TaskStream(
        name=f"split_{dataset.name}",
        tasks=LazyTasks(len(groups), build),
        num_classes=dataset.num_classes,
        input_shape=preprocess.output_shape,
        description={
            "stream": "split",
            "dataset": dataset.name,
            "class_order": order,
            "task_classes": groups,
            "classes_per_task": classes_per_task,
            "shuffle_classes_seed": shuffle_classes_seed,
            "flatten": preprocess.flatten,
            "normalize": normalize,
        },
    )


@STREAMS.register("class_incremental")
def class_incremental_stream(
    dataset: ImageDataset | None = None,
    classes_per_step: int = 5,
    class_order: list[int] | None = None,
    shuffle_classes_seed: int | None = 0,
    flatten: bool | None = None,
    normalize: bool = False,
    validation_per_class: int = 0,
    augmentation: str | None = None,
) -> TaskStream:
    """Class-incremental learning (Dohare et al. 2024, CIFAR-100): classes arrive in steps.

    Task ``t`` trains on the train data of the first ``(t + 1) * classes_per_step`` classes of
    the order, is evaluated on their test data, and has those classes active (masking the
    other logits is equivalent to adding output units as classes arrive).

    Args:
        dataset: the image dataset.
        classes_per_step: new classes per task; must divide the length of the class order.
        class_order: an explicit class order (then ``shuffle_classes_seed`` must be null).
        shuffle_classes_seed: seed of the random class order (Dohare et al.: random per run);
            null with no ``class_order`` keeps ``0, ..., C - 1``.
        flatten: see the module docstring (``None``: flatten single-channel images).
        normalize: per-channel standardisation with training-split statistics.
        validation_per_class: hold out the first this many training images of every class as
            the tasks' validation data (:func:`validation_split`; 0: none).
        augmentation: a name of :data:`~plasticity_rl.supervised.augment.AUGMENTATIONS`
            applied to every training batch, or null.
    """
    dataset = _require_dataset("class_incremental", dataset)
    require(isinstance(validation_per_class, int) and validation_per_class >= 0,
            "class_incremental.validation_per_class", validation_per_class,
            "an integer >= 0")  # fmt: skip
    augment = None if augmentation is None else AUGMENTATIONS.get(augmentation)
    held_out = validation_split(dataset.train_y, validation_per_class)
    order = _class_order(
        "class_incremental",
        dataset.num_classes,
        classes_per_step,
        "classes_per_step",
        class_order,
        shuffle_classes_seed,
    )
    if validation_per_class:
        fewest = int(torch.bincount(dataset.train_y, minlength=dataset.num_classes)[order].min())
        require(validation_per_class < fewest, "class_incremental.validation_per_class",
                validation_per_class, f"fewer than the training images of the smallest class "
                f"({fewest}), so that every class keeps some to train on")  # fmt: skip
    preprocess = ImagePreprocessor(dataset.train_x, normalize, flatten)

    def build(t: int) -> Task:
        seen = order[: (t + 1) * classes_per_step]
        task = _class_task(dataset, preprocess, f"first_{len(seen)}_classes", seen, seen)
        if validation_per_class:
            in_task = torch.isin(dataset.train_y, torch.tensor(seen, dtype=dataset.train_y.dtype))
            train = ~held_out[in_task]  # over the task's examples, in dataset order
            task.val_x, task.val_y = task.train_x[~train], task.train_y[~train]
            task.train_x, task.train_y = task.train_x[train], task.train_y[train]
        task.augment = augment
        return task

    return TaskStream(
        name=f"class_incremental_{dataset.name}",
        tasks=LazyTasks(len(order) // classes_per_step, build),
        num_classes=dataset.num_classes,
        input_shape=preprocess.output_shape,
        description={
            "stream": "class_incremental",
            "dataset": dataset.name,
            "class_order": order,
            "classes_per_step": classes_per_step,
            "shuffle_classes_seed": shuffle_classes_seed,
            "flatten": preprocess.flatten,
            "normalize": normalize,
            "validation_per_class": validation_per_class,
            "augmentation": augmentation,
        },
    )


def _permuted(
    stream: str,
    dataset: ImageDataset | None,
    num_tasks: int,
    seed: int,
    first_task_unpermuted: bool,
    flatten: bool | None,
    normalize: bool,
    online: bool,
    examples_per_task: int | None = None,
) -> TaskStream:
    """Shared body of ``permuted`` and ``online_permuted`` (``examples_per_task``: online only)."""
    dataset = _require_dataset(stream, dataset)
    require(
        isinstance(num_tasks, int) and num_tasks >= 1,
        f"{stream}.num_tasks",
        num_tasks,
        "an integer >= 1",
    )
    _require_seed(f"{stream}.seed", seed)
    require(
        examples_per_task is None
        or (isinstance(examples_per_task, int) and examples_per_task >= 1),
        f"{stream}.examples_per_task",
        examples_per_task,
        "null (every training image) or an integer >= 1",
    )
    num_train = len(dataset.train_y)
    per_task = num_train if examples_per_task is None else min(examples_per_task, num_train)
    preprocess = ImagePreprocessor(dataset.train_x, normalize, flatten)
    num_pixels = math.prod(preprocess.image_shape)
    all_classes = list(range(dataset.num_classes))

    def build(t: int) -> Task:
        if first_task_unpermuted and t == 0:
            perm = torch.arange(num_pixels)
        else:
            perm = pixel_permutation(seed, t, num_pixels)

        def permute(x: Tensor) -> Tensor:
            return x.flatten(1).index_select(1, perm).reshape(x.shape)

        train_x, train_y = dataset.train_x, dataset.train_y
        if online:
            order = example_order(seed, t, num_train)[:per_task]
            train_x, train_y = train_x[order], train_y[order]
            test_x = preprocess(dataset.test_x[:0])
            test_y = dataset.test_y[:0]
        else:
            test_x, test_y = preprocess(dataset.test_x, permute), dataset.test_y
        return Task(
            f"permutation_{t}",
            preprocess(train_x, permute),
            train_y,
            test_x,
            test_y,
            all_classes,
            all_classes,
        )

    return TaskStream(
        name=f"{stream}_{dataset.name}",
        tasks=LazyTasks(num_tasks, build),
        num_classes=dataset.num_classes,
        input_shape=preprocess.output_shape,
        online=online,
        description={
            "stream": stream,
            "dataset": dataset.name,
            "num_tasks": num_tasks,
            "seed": seed,
            "first_task_unpermuted": first_task_unpermuted,
            "permutation": "pixel_permutation(seed, task, C * H * W) of the flattened image",
            "flatten": preprocess.flatten,
            "normalize": normalize,
        }
        | (
            {
                "examples_per_task": per_task,
                "example_order": "example_order(seed, task, num_train)[:examples_per_task]",
            }
            if online
            else {}
        ),
    )


@STREAMS.register("permuted")
def permuted_stream(
    dataset: ImageDataset | None = None,
    num_tasks: int = 10,
    seed: int = 0,
    first_task_unpermuted: bool = False,
    flatten: bool | None = None,
    normalize: bool = False,
) -> TaskStream:
    """Permuted MNIST: task ``t`` is the dataset with pixel permutation ``t`` (train and test).

    The permutation of task ``t`` is :func:`pixel_permutation` ``(seed, t, C * H * W)``,
    applied to the flattened image (then reshaped back if ``flatten`` is false); with
    ``first_task_unpermuted`` task 0 is the identity and the others are unchanged.

    Args:
        dataset: the image dataset.
        num_tasks: number of permutations.
        seed: seed of the permutations.
        first_task_unpermuted: task 0 uses the original images.
        flatten: see the module docstring (``None``: flatten single-channel images).
        normalize: per-channel standardisation with training-split statistics.
    """
    return _permuted(
        "permuted", dataset, num_tasks, seed, first_task_unpermuted, flatten, normalize, False
    )


@STREAMS.register("online_permuted")
def online_permuted_stream(
    dataset: ImageDataset | None = None,
    num_tasks: int = 800,
    seed: int = 0,
    first_task_unpermuted: bool = False,
    flatten: bool | None = None,
    normalize: bool = False,
    examples_per_task: int | None = None,
) -> TaskStream:
    """Online Permuted MNIST (Dohare et al. 2024): ``permuted``, trained online.

    Task ``t``'s ``train_x`` is every training image once, in the order
    :func:`example_order` ``(seed, t, N)``, with pixel permutation ``t``; ``test_x`` is empty.
    With ``examples_per_task`` it is the first ``examples_per_task`` images of that order (a
    shorter task with the same example order; all ``N`` when it is at least ``N``).
    The stream has ``online=True``: one pass, batch size 1, online accuracy, and no task-switch
    signal to methods (see :class:`TaskStream`).

    Args:
        dataset: the image dataset.
        num_tasks: number of permutations (800 in the paper).
        seed: seed of the permutations and example orders.
        first_task_unpermuted: task 0 uses the original images.
        flatten: see the module docstring (``None``: flatten single-channel images).
        normalize: per-channel standardisation with training-split statistics.
        examples_per_task: images per task (the first of each task's order); None: all 60,000
            (the paper).
    """
    return _permuted(
        "online_permuted",
        dataset,
        num_tasks,
        seed,
        first_task_unpermuted,
        flatten,
        normalize,
        True,
        examples_per_task,
    )


@STREAMS.register("rotated")
def rotated_stream(
    dataset: ImageDataset | None = None,
    angles: list[float] | None = None,
    flatten: bool | None = None,
    normalize: bool = False,
) -> TaskStream:
    """Rotated MNIST: task ``t`` is the dataset rotated by ``angles[t]`` degrees (train, test).

    Images are rotated counter-clockwise by :func:`rotate_images` (bilinear, zero padding) when
    the task is built, in float32 (no rounding back to uint8).

    Args:
        dataset: the image dataset (square images).
        angles: degrees per task; default ``[0, 80, 160]`` (De Lange et al. 2023).
        flatten: see the module docstring (``None``: flatten single-channel images).
        normalize: per-channel standardisation with training-split statistics.
    """
    dataset = _require_dataset("rotated", dataset)
    angles = [0.0, 80.0, 160.0] if angles is None else angles
    require(
        isinstance(angles, list)
        and len(angles) > 0
        and all(isinstance(a, (int, float)) for a in angles),
        "rotated.angles",
        angles,
        "a non-empty list of angles in degrees",
    )
    height, width = dataset.train_x.shape[-2:]
    require(height == width, "rotated.dataset image size", (height, width), "square images")
    preprocess = ImagePreprocessor(dataset.train_x, normalize, flatten)
    all_classes = list(range(dataset.num_classes))

    def build(t: int) -> Task:
        def rotate(x: Tensor) -> Tensor:
            return rotate_images(x, angles[t])

        return Task(
            f"rotation_{angles[t]:g}",
            preprocess(dataset.train_x, rotate),
            dataset.train_y,
            preprocess(dataset.test_x, rotate),
            dataset.test_y,
            all_classes,
            all_classes,
        )

    return TaskStream(
        name=f"rotated_{dataset.name}",
        tasks=LazyTasks(len(angles), build),
        num_classes=dataset.num_classes,
        input_shape=preprocess.output_shape,
        description={
            "stream": "rotated",
            "dataset": dataset.name,
            "angles": [float(a) for a in angles],
            "flatten": preprocess.flatten,
            "normalize": normalize,
        },
    )


@STREAMS.register("slowly_changing_regression")
def slowly_changing_regression_stream(
    dataset: ImageDataset | None = None,
    total_examples: int = 1_000_000,
    bin_size: int = 20_000,
    num_bits: int = 20,
    num_slow_bits: int = 15,
    flip_every_examples: int = 10_000,
    num_hidden: int = 100,
    beta: float = 0.7,
    flip: str = "all",
    target: str = "reference",
    seed: int = 0,
) -> RegressionStream:
    """Slowly-changing regression (Dohare et al. 2024): a :class:`RegressionStream` around a
    :class:`SlowlyChangingRegression` (see :mod:`plasticity_rl.supervised.regression`).

    Args:
        dataset: must be None (the data are generated).
        total_examples: examples in the run (one pass, one example per step).
        bin_size: examples per reported squared-error bin.
        num_bits, num_slow_bits, flip_every_examples, num_hidden, beta, flip, target, seed:
            the generator's arguments.
    """
    require(
        dataset is None,
        "slowly_changing_regression.dataset",
        getattr(dataset, "name", dataset),
        "null (the examples are generated)",
    )
    require(
        total_examples >= 1, "slowly_changing_regression.total_examples", total_examples, ">= 1"
    )
    require(bin_size >= 1, "slowly_changing_regression.bin_size", bin_size, ">= 1")
    generator_kwargs = {
        "num_bits": num_bits,
        "num_slow_bits": num_slow_bits,
        "flip_every_examples": flip_every_examples,
        "num_hidden": num_hidden,
        "beta": beta,
        "flip": flip,
        "target": target,
        "seed": seed,
    }
    return RegressionStream(
        name="slowly_changing_regression",
        generator=SlowlyChangingRegression(**generator_kwargs),
        total_examples=total_examples,
        bin_size=bin_size,
        description={
            "stream": "slowly_changing_regression",
            "total_examples": total_examples,
            "bin_size": bin_size,
            **generator_kwargs,
        },
    )


# registers the ``continual_imagenet`` stream (its module builds on the helpers above)
from plasticity_rl.supervised import continual_imagenet  # noqa: E402, F401
