"""Training-batch augmentation: each transform by hand, and its seeding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plasticity_rl.supervised.augment import (
    AUGMENTATIONS,
    augment_batch,
    batch_generator,
    random_crop,
    random_flip,
    random_rotation,
)
from plasticity_rl.supervised.streams import Task


def _images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_flip_mirrors_exactly_the_drawn_images():
    x = _images()
    out = random_flip(x, torch.Generator().manual_seed(1))
    drawn = torch.rand(len(x), generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < drawn.sum() < len(x)
    for i in range(len(x)):
        assert torch.equal(out[i], x[i].flip(-1) if drawn[i] else x[i])


def test_crop_is_a_window_of_the_reflection_padded_image():
    x = _images()
    out = random_crop(x, torch.Generator().manual_seed(2))
    offsets = torch.randint(0, 9, (2, len(x)), generator=torch.Generator().manual_seed(2))
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(len(x)):
        r, c = offsets[:, i].tolist()
        assert torch.equal(out[i], padded[i, :, r : r + 8, c : c + 8])
    # offset (4, 4) is the image itself; reflection repeats no edge pixel
    assert torch.equal(padded[0, :, 4:12, 4:12], x[0])
    assert torch.equal(padded[0, :, 3, 4:12], x[0, :, 1])


def test_rotation_by_zero_is_the_identity_and_fills_corners_with_zero():
    x = _images()
    assert torch.equal(random_rotation(x, torch.Generator(), max_degrees=0.0), x)
    out = random_rotation(torch.ones(4, 1, 32, 32), torch.Generator().manual_seed(3))
    angles = torch.rand(4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 15
    for i, angle in enumerate(angles.tolist()):
        assert out[i, 0, 16, 16] == 1.0  # the centre stays inside
        # the corner pixel's source leaves the image once 15.5 (sin a + cos a - 1) > 0.5,
        # a > about 1.9 degrees
        if angle > 2.5 or angle < 1.5:
            assert (out[i, 0, 0, 0] == 0.0) == (angle > 2.5)


def test_rotation_is_counter_clockwise_as_displayed():
    x = torch.zeros(1, 1, 33, 33)
    x[0, 0, 16, 26] = 1.0  # a pixel right of the centre (row 16, column 26)
    out = random_rotation(x, torch.Generator().manual_seed(0), max_degrees=15.0)
    angle = torch.rand(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 15
    row, col = divmod(int(out.flatten().argmax()), 33)
    assert row < 16 and col > 16  # moved up: counter-clockwise with row 0 at the top
    expected = torch.tensor(angle.item()).deg2rad()
    measured = torch.atan2(torch.tensor(16.0 - row), torch.tensor(col - 16.0))
    assert abs(measured - expected) < 0.1


def test_batches_are_seeded_by_run_task_epoch_and_batch():
    x = _images(16)
    augment = AUGMENTATIONS.get("flip_crop_rotate")
    one = augment(x, batch_generator(0, 1, 2, 3))
    assert torch.equal(one, augment(x, batch_generator(0, 1, 2, 3)))
    for other in [(1, 1, 2, 3), (0, 2, 2, 3), (0, 1, 3, 3), (0, 1, 2, 4)]:
        assert not torch.equal(one, augment(x, batch_generator(*other)))


def test_batched_runs_augment_each_run_as_its_single_run():
    x = _images(4)
    task = Task("t", x, torch.zeros(4), x, torch.zeros(4), [0], [0],
                augment=AUGMENTATIONS.get("flip_crop_rotate"))  # fmt: skip
    stacked = augment_batch(torch.stack([x, x]), [task, task], [5, 6], 1, 0, 2, batched=True)
    for s, seed in enumerate([5, 6]):
        single = augment_batch(x, [task], [seed], 1, 0, 2, batched=False)
        assert torch.equal(stacked[s], single)
