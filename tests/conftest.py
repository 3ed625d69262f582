"""Shared fixtures: small datasets written in the real file formats.

``<name>_data`` is an :class:`ImageDataset` of random images in memory; ``<name>_dir`` is a
directory holding the same data in the official format, written by
:func:`plasticity_rl.supervised.datasets.write_dataset`, so that
``load_dataset(name, <name>_dir, download=False)`` reads it back. Every class appears in every
split. The fixtures are session-scoped: treat their tensors as read-only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from plasticity_rl.supervised.datasets import SOURCES, ImageDataset, write_dataset


def make_image_dataset(name: str, num_train: int, num_test: int, seed: int = 0) -> ImageDataset:
    """Random uint8 images of ``name``'s shape; labels cycle through every class, shuffled."""
    source = SOURCES[name]
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, *source.image_shape), generator=generator)
        labels = torch.arange(n) % source.num_classes
        return images.to(torch.uint8), labels[torch.randperm(n, generator=generator)]

    (train_x, train_y), (test_x, test_y) = split(num_train), split(num_test)
    return ImageDataset(name, train_x, train_y, test_x, test_y, source.num_classes)


@pytest.fixture(scope="session")
def image_dataset_factory() -> Callable[..., ImageDataset]:
    """``factory(name, num_train, num_test, seed=0) -> ImageDataset`` with random images."""
    return make_image_dataset


@pytest.fixture(scope="session")
def mnist_data() -> ImageDataset:
    """300 train / 100 test random 28x28 images, labels 0..9."""
    return make_image_dataset("mnist", 300, 100, seed=1)


@pytest.fixture(scope="session")
def mnist_dir(mnist_data: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mnist_data`` as the four gzipped IDX files directly in the directory."""
    return write_dataset(mnist_data, tmp_path_factory.mktemp("mnist"), compress=True)


@pytest.fixture(scope="session")
def fashion_data() -> ImageDataset:
    """300 train / 100 test random 28x28 images, labels 0..9."""
    return make_image_dataset("fashion_mnist", 300, 100, seed=2)


@pytest.fixture(scope="session")
def fashion_dir(fashion_data: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fashion_data`` as four raw (uncompressed) IDX files directly in the directory."""
    return write_dataset(fashion_data, tmp_path_factory.mktemp("fashion"), compress=False)


@pytest.fixture(scope="session")
def cifar10_data() -> ImageDataset:
    """100 train / 50 test random 3x32x32 images, labels 0..9."""
    return make_image_dataset("cifar10", 100, 50, seed=3)


@pytest.fixture(scope="session")
def cifar10_dir(cifar10_data: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``."""
    return write_dataset(cifar10_data, tmp_path_factory.mktemp("cifar10"), compress=False)


@pytest.fixture(scope="session")
def cifar100_data() -> ImageDataset:
    """200 train / 100 test random 3x32x32 images, fine labels 0..99."""
    return make_image_dataset("cifar100", 200, 100, seed=4)


@pytest.fixture(scope="session")
def cifar100_dir(cifar100_data: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with ``cifar-100-python/{train, test, meta}``."""
    return write_dataset(cifar100_data, tmp_path_factory.mktemp("cifar100"), compress=False)
