"""Training-batch augmentation of image streams, seeded so that a resumed run draws the same.

``flip_crop_rotate`` is the augmentation of Dohare et al. 2024's class-incremental CIFAR-100
(``lop/incremental_cifar/incremental_cifar_experiment.py``, ``get_data``; transforms of
``mlproj_manager``), applied in their order to the normalised images:

1. horizontal flip with probability 0.5;
2. random 32x32 crop of the image padded by 4 pixels on each side, the padding reflecting the
   image (``padding_mode="reflect"``): offsets uniform in {0, ..., 8} per axis;
3. rotation counter-clockwise by an angle uniform in [0, 15] degrees (one direction only, as
   their ``RandomRotation((0, 15))``), nearest-neighbour sampling, the corners filled with 0 (the
   channel mean, as the images are already normalised).

Each image draws its own flip, offsets and angle (on the CPU, then moved to the batch's
device: the same draws on every device). The draws of a batch come from a generator
seeded by (run seed, task, epoch, batch) (:func:`batch_generator`), so a run continued from a
mid-task checkpoint augments its remaining batches exactly as the uninterrupted run. Their code
also augments the test set (its test loader is built with ``validation=False``); that is a plain
bug and is kept out: evaluation here always uses the images as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from plasticity_rl.registry import Registry

Augmentation = Callable[[Tensor, torch.Generator], Tensor]
"""``augment(x, generator)``: a new float ``(N, C, H, W)`` batch from ``x``."""

AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")

CROP_PADDING = 4
"""Pixels of reflection padding on each side before the random crop."""
MAX_ROTATION_DEGREES = 15.0
"""Rotation angles are uniform in [0, this]."""

_AUGMENT_PURPOSE = 3
"""The ``purpose`` entry of the augmentation seed sequences (streams use 0-2)."""


def batch_generator(seed: int, task: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of one training batch's augmentation draws (module docstring)."""
    from plasticity_rl.supervised.streams import seeded_generator

    return seeded_generator(seed, _AUGMENT_PURPOSE, ((task * 100_000) + epoch) * 100_000 + batch)


def augment_batch(x: Tensor, tasks: Sequence[Any], seeds: Sequence[int], task: int, epoch: int,
                  batch: int, batched: bool) -> Tensor:  # fmt: skip
    """Training batch ``batch`` of ``epoch`` of task ``task`` through each run's
    ``Task.augment``, with the run's own :func:`batch_generator` (run s of a batched ``x``,
    ``(S, B, ...)``, is ``x[s]`` and has seed ``seeds[s]``)."""
    if not batched:
        return tasks[0].augment(x, batch_generator(seeds[0], task, epoch, batch))
    return torch.stack([t.augment(xs, batch_generator(seed, task, epoch, batch))
                        for t, seed, xs in zip(tasks, seeds, x, strict=True)])  # fmt: skip


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Each image mirrored left-right with probability ``p``."""
    flip = (torch.rand(len(x), generator=generator) < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> Tensor:
    """Each image cut at a uniform offset out of its reflection-padded copy (same size)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    rows = offsets[0].view(n, 1) + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[1].view(n, 1) + torch.arange(w, device=x.device)  # (n, w)
    index = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[index, channels, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def random_rotation(
    x: Tensor, generator: torch.Generator, max_degrees: float = MAX_ROTATION_DEGREES
) -> Tensor:
    """Each image rotated counter-clockwise by its own angle, uniform in [0, max_degrees]
    (nearest-neighbour sampling about the image centre, 0 outside the image)."""
    angles = torch.rand(len(x), generator=generator, dtype=torch.float64) * max_degrees
    radians = angles * (math.pi / 180)
    cos, sin = radians.cos(), radians.sin()
    zero = torch.zeros_like(cos)
    # output pixel (u, v) (u right, v down) samples the input at R(-angle)(u, v), as
    # :func:`plasticity_rl.supervised.streams.rotate_images` (there for one angle, bilinear)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


@AUGMENTATIONS.register("flip_crop_rotate")
def flip_crop_rotate(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip, crop and rotate each image, in that order (module docstring)."""
    return random_rotation(random_crop(random_flip(x, generator), generator), generator)
