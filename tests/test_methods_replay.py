"""Replay: the returned batch, full replay, reservoir sampling (exact and statistical), state."""

from __future__ import annotations

import io

import pytest
import torch

from plasticity_rl.methods import Replay, make_method
from plasticity_rl.registry import ConfigError


def _batch(start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples numbered start, start + 1, ...: x = (n, -n), y = n."""
    n = torch.arange(start, start + size)
    return torch.stack([n, -n], dim=1).float(), n


def test_no_replay_before_anything_is_stored():
    replay = Replay(capacity=4)
    x, y = _batch(0, 3)
    out_x, out_y = replay.on_batch(x, y)
    assert out_x is x and out_y is y
    assert replay.size == 3


@pytest.mark.parametrize("batch_size, expected", [(None, 2), (5, 5)])
def test_returned_batch_is_current_then_replayed(batch_size, expected):
    replay = Replay(batch_size=batch_size)
    replay.on_batch(*_batch(0, 3))  # stores examples 0, 1, 2
    x, y = _batch(3, 2)
    out_x, out_y = replay.on_batch(x, y)
    assert out_x.shape == (2 + expected, 2) and out_y.shape == (2 + expected,)
    assert torch.equal(out_x[:2], x) and torch.equal(out_y[:2], y)
    replayed = out_y[2:]
    assert set(replayed.tolist()) <= {0, 1, 2}  # never the current batch
    assert torch.equal(out_x[2:], torch.stack([replayed, -replayed], dim=1).float())


def test_full_replay_keeps_everything_in_order():
    replay = Replay()
    start = 0
    for size in (3, 1, 7, 2, 20):  # grows past several doublings
        replay.on_batch(*_batch(start, size))
        start += size
    stored_x, stored_y = replay.buffer()
    assert torch.equal(stored_y, torch.arange(33)) and torch.equal(
        stored_x[:, 1], -stored_y.float()
    )
    assert replay.stats() == {"buffer_size": 33.0}


def _algorithm_r(stream: list[int], capacity: int, uniforms: torch.Tensor) -> list[int]:
    """Sequential Algorithm R with the given uniforms (one per example)."""
    reservoir: list[int] = []
    for n, (item, u) in enumerate(zip(stream, uniforms.tolist(), strict=True)):
        if n < capacity:
            reservoir.append(item)
        else:
            j = min(int(u * (n + 1)), n)
            if j < capacity:
                reservoir[j] = item
    return reservoir


def test_batched_reservoir_equals_sequential_algorithm_r():
    # add() draws one float64 uniform per example from the method's generator (seed 3); the
    # sequential algorithm fed the same uniforms must end with the same buffer, slot by slot,
    # including slots chosen twice within one batch (the later example wins).
    sizes = [4, 9, 16, 16, 30, 5]
    replay = Replay(capacity=6, seed=3)
    generator = torch.Generator().manual_seed(3)
    uniforms, start = [], 0
    for size in sizes:
        replay.add(*_batch(start, size))
        uniforms.append(torch.rand(size, generator=generator, dtype=torch.float64))
        start += size
    expected = _algorithm_r(list(range(start)), 6, torch.cat(uniforms))
    assert replay.buffer()[1].tolist() == expected and replay.size == 6


def test_reservoir_keeps_capacity_and_every_example_equally_likely():
    # 40 examples in batches of 3 (the last one short), capacity 10: each example should be in
    # the buffer with probability 10 / 40 = 0.25. Over 1500 seeds the standard error of a
    # frequency is sqrt(0.25 * 0.75 / 1500) = 0.011; allow 0.05 (4.5 standard errors).
    counts = torch.zeros(40)
    trials = 1500
    for seed in range(trials):
        replay = Replay(capacity=10, seed=seed)
        for start in range(0, 40, 3):
            replay.add(*_batch(start, min(3, 40 - start)))
        stored = replay.buffer()[1]
        assert stored.numel() == 10 and stored.unique().numel() == 10
        counts[stored] += 1
    frequency = counts / trials
    assert (frequency - 0.25).abs().max() < 0.05


def test_state_round_trip_gives_identical_batches():
    replay = Replay(capacity=5, batch_size=4, seed=7)
    for start in range(0, 12, 3):
        replay.on_batch(*_batch(start, 3))
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    buffer.seek(0)
    resumed = Replay(capacity=5, batch_size=4, seed=0)  # the seed is overwritten by the state
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for start in range(12, 30, 3):
        a, b = replay.on_batch(*_batch(start, 3)), resumed.on_batch(*_batch(start, 3))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(replay.buffer()[1], resumed.buffer()[1])


def test_state_of_an_empty_buffer_round_trips():
    replay = Replay(seed=1)
    resumed = Replay(seed=2)
    resumed.load_state_dict(replay.state_dict())
    assert resumed.size == 0
    assert torch.equal(resumed.on_batch(*_batch(0, 2))[0], _batch(0, 2)[0])


def test_uses_its_own_generator_only():
    rng = torch.get_rng_state()
    replay = Replay(capacity=3)
    for start in range(0, 12, 2):
        replay.on_batch(*_batch(start, 2))
    assert torch.equal(torch.get_rng_state(), rng)


def test_registered_and_flags_task_boundaries():
    replay = make_method("replay", capacity=100, batch_size=8, seed=1)
    assert isinstance(replay, Replay) and replay.uses_task_boundaries
    assert replay.capacity == 100 and replay.batch_size == 8


@pytest.mark.parametrize(
    "key, value", [("capacity", 0), ("capacity", 1.5), ("batch_size", 0), ("seed", -1)]
)
def test_bad_values_name_key_and_value(key: str, value: object):
    with pytest.raises(ConfigError) as err:
        make_method("replay", **{key: value})
    assert err.value.key == f"replay.{key}" and err.value.value == value
