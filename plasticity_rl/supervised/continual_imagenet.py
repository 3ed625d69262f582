"""Continual ImageNet (Dohare et al. 2024, Nature, Fig. 1): thousands of binary tasks on
32x32 ImageNet, each telling apart two classes it has not seen together before.

The data is what their code reads (``lop/imagenet/single_expr.py``): a folder ``classes/``
with one file ``<c>.npy`` per class ``c`` = 0 ... 999, each an array of 700 images
``(700, 3, 32, 32)`` (channels first), of which the first 600 are for training and the last 100
for testing. Their README links the archive (``lop/imagenet/data``, Google Drive,
https://drive.google.com/file/d/1i0ok3LT5_mYmFWaN7wlkpHsitUngGJ8z); there is no script to make
it from the downsampled ImageNet release, and it cannot be downloaded here. The values are used
as stored (their code feeds the arrays to the network as floats, with no scaling).

Task t trains on classes ``order[2t]`` and ``order[2t + 1]`` (labels 0 and 1 by position),
1,200 training and 200 test images; ``order`` is a random permutation of the 1,000 classes per
run, repeated as often as the tasks need (so with 2,000 tasks task t and task t + 500 share
their pair, as in their code). Their orders come from a pickled ``class_order`` file that is not
in their repository; here the permutation is drawn from the stream's seed (the run's seed added,
:func:`~plasticity_rl.supervised.learner.run_stream_kwargs`). Each class file is read (memory
mapped) when a task needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from plasticity_rl.registry import require
from plasticity_rl.supervised.datasets import DatasetFormatError, DatasetNotFound
from plasticity_rl.supervised.streams import (
    _CLASS_ORDER,
    STREAMS,
    LazyTasks,
    Task,
    TaskStream,
    seeded_generator,
)

IMAGES_PER_CLASS = 700
TRAIN_PER_CLASS = 600
"""The first 600 images of a class are for training, the other 100 for testing."""
IMAGE_SHAPE = (3, 32, 32)
WHERE_TO_GET = (
    "Dohare et al.'s 32x32 ImageNet class files (lop/imagenet/README.md: "
    "https://drive.google.com/file/d/1i0ok3LT5_mYmFWaN7wlkpHsitUngGJ8z, unpacked so that "
    "classes/0.npy ... classes/999.npy lie in the data directory)"
)


class ImagenetClassFiles:
    """The folder of per-class arrays (module docstring), read one class at a time: the
    classes are the files ``0.npy``, ``1.npy``, ... without a gap (1,000 in their data; fewer in
    small generated copies).

    Args:
        root: the directory holding ``classes/`` (or ``classes/`` itself, or a directory
            whose ``imagenet32_classes/`` holds it).

    Raises:
        DatasetNotFound: fewer than two class files (the message says where to get them).
    """

    name = "imagenet32_classes"

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        candidates = [root, root / "classes", root / self.name / "classes"]
        folder = next((d for d in candidates if (d / "0.npy").is_file()), root / "classes")
        count = 0
        while (folder / f"{count}.npy").is_file():
            count += 1
        if count < 2:
            raise DatasetNotFound(f"no class files 0.npy, 1.npy, ... in {folder}; get "
                                  f"{WHERE_TO_GET}")  # fmt: skip
        self.folder, self.num_classes = folder, count
        self.images_per_class = len(self._array(0))

    def _array(self, c: int) -> np.ndarray:
        """Class ``c``'s file, memory mapped.

        Raises:
            DatasetFormatError: the file is not an ``(N, 3, 32, 32)`` array.
        """
        path = self.folder / f"{c}.npy"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise DatasetFormatError(f"{path} is not a .npy array: {err}") from None
        if array.ndim != 4 or array.shape[1:] != IMAGE_SHAPE:
            expected = f"(N, 3, 32, 32), N = {IMAGES_PER_CLASS} in theirs"
            raise DatasetFormatError(f"{path} holds an array of shape {array.shape}; expected "
                                     f"{expected}")  # fmt: skip
        return array

    def images(self, c: int) -> torch.Tensor:
        """Class ``c``'s images as float32 ``(N, 3, 32, 32)``, values as stored."""
        return torch.from_numpy(np.asarray(self._array(c), dtype=np.float32))


@STREAMS.register("continual_imagenet")
def continual_imagenet_stream(
    dataset: ImagenetClassFiles | None = None,
    num_tasks: int = 2000,
    seed: int = 0,
    train_per_class: int = TRAIN_PER_CLASS,
) -> TaskStream:
    """Binary tasks on pairs of ImageNet classes (module docstring).

    Args:
        dataset: the class files (``dataset: imagenet32_classes`` with ``--data-dir``).
        num_tasks: tasks in the stream (their ``bp.json``: 2,000; their other configs: 5,000).
        seed: seed of the class order.
        train_per_class: a class's first this many images train, the rest test (theirs: 600
            of 700).
    """
    require(isinstance(dataset, ImagenetClassFiles), "continual_imagenet.dataset", dataset,
            "the imagenet32_classes files (stream preset dataset: imagenet32_classes)")  # fmt: skip
    require(isinstance(num_tasks, int) and num_tasks >= 1, "continual_imagenet.num_tasks",
            num_tasks, "an integer >= 1")  # fmt: skip
    require(isinstance(seed, int) and seed >= 0, "continual_imagenet.seed", seed,
            "an integer >= 0")  # fmt: skip
    per_class = dataset.images_per_class
    allowed = f"an integer in [1, {per_class - 1}] (the files hold {per_class} images a class)"
    require(isinstance(train_per_class, int) and 1 <= train_per_class < per_class,
            "continual_imagenet.train_per_class", train_per_class, allowed)  # fmt: skip
    classes = dataset.num_classes
    permutation = torch.randperm(classes, generator=seeded_generator(seed, _CLASS_ORDER))
    order = permutation.repeat(2 * num_tasks // classes + 1).tolist()

    def build(t: int) -> Task:
        pair = order[2 * t : 2 * t + 2]
        images = [dataset.images(c) for c in pair]
        train_x = torch.cat([x[:train_per_class] for x in images])
        test_x = torch.cat([x[train_per_class:] for x in images])
        train_y = torch.cat([torch.full((train_per_class,), i) for i in range(2)])
        test_y = torch.cat([torch.full((len(x) - train_per_class,), i)
                            for i, x in enumerate(images)])  # fmt: skip
        return Task(f"classes_{pair[0]}_{pair[1]}", train_x, train_y, test_x, test_y, [0, 1],
                    [0, 1])  # fmt: skip

    return TaskStream(
        name="continual_imagenet",
        tasks=LazyTasks(num_tasks, build),
        num_classes=2,
        input_shape=IMAGE_SHAPE,
        description={
            "stream": "continual_imagenet",
            "dataset": dataset.name,
            "num_tasks": num_tasks,
            "seed": seed,
            "class_order": permutation.tolist(),
        },
    )
