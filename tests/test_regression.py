"""Slowly-changing regression: LTU target by hand, bit schedule, seeding, continuation, state."""

from __future__ import annotations

import io

import pytest
import torch

from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised.regression import (
    SlowlyChangingRegression,
    ltu_features,
    ltu_target,
    ltu_thresholds,
)


def small(
    flip: str = "all", seed: int = 0, period: int = 50, target: str = "reference"
) -> SlowlyChangingRegression:
    return SlowlyChangingRegression(flip_every_examples=period, flip=flip, seed=seed, target=target)


# m = 3 bits, beta = 0.7, so (m + 1) * beta = 2.8; output weights v = [+1, -1].
W = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
B = torch.tensor([1.0, -1.0])
V = torch.tensor([1.0, -1.0])
X = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
# input sums w x + b: unit 1: 0, 1, 2, -1; unit 2: 0, -1, -2, -1


@pytest.mark.parametrize(
    ("target", "thresholds", "features"),
    [
        # paper: S = negative weights among w and b: unit 1 S = 2, tau = 0.8; unit 2 S = 3,
        # tau = -0.2
        ("paper", [0.8, -0.2], [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]),
        # reference: S = (m - sum w + b) / 2: unit 1 (3 + 1 + 1) / 2 = 2.5, tau = 0.3;
        # unit 2 (3 + 1 - 1) / 2 = 1.5, tau = 1.3
        ("reference", [0.3, 1.3], [[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]),
    ],
)
def test_ltu_target_by_hand(target, thresholds, features):
    tau = ltu_thresholds(W, B, beta=0.7, target=target)
    assert torch.allclose(tau, torch.tensor(thresholds))
    assert torch.equal(ltu_features(X, W, B, tau), torch.tensor(features))
    expected = torch.tensor(features) @ V - 1.0
    assert torch.equal(ltu_target(X, W, B, tau, V, -1.0).squeeze(1), expected)


def test_ltu_threshold_is_strict():
    # beta = 0.5, paper: unit w = [+1, -1, -1], b = +1 has S = 2, tau = 4 * 0.5 - 2 = 0;
    # x = [0, 0, 1] gives the sum -1 + 1 = 0, which equals tau, so the unit does not fire.
    w, b = torch.tensor([[1.0, -1.0, -1.0]]), torch.tensor([1.0])
    tau = ltu_thresholds(w, b, 0.5, "paper")
    x = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert ltu_features(x, w, b, tau).squeeze(1).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("target", ["paper", "reference"])
def test_ltu_fires_iff_enough_bits_match_its_sign_pattern(target):
    # Sutton & Whitehead's reading of tau_i = (m + 1) beta - S_i: bit j matches unit i when
    # x_j = 1 for w_ij = +1 and x_j = 0 for w_ij = -1; the constant bit matches when b_i = +1.
    # Paper: more than beta (m + 1) = 14.7 of 21 bits match. Reference: the same for b_i = +1,
    # at least 17 for b_i = -1 (module docstring).
    problem = SlowlyChangingRegression(seed=3, target=target)
    x, _ = problem.sample(500)
    w, b = problem.input_weights, problem.input_bias
    matches = ((x.unsqueeze(1) == 1) == (w.unsqueeze(0) > 0)).sum(dim=2) + (b > 0)  # (N, n)
    needed = torch.full_like(b, 15) if target == "paper" else torch.where(b > 0, 15, 17)
    expected = (matches >= needed).to(torch.float32)
    assert torch.equal(ltu_features(x, w, b, problem.thresholds), expected)
    assert 0 < expected.mean() < 1  # units both fire and stay silent on this sample


@pytest.mark.parametrize("target", ["paper", "reference"])
def test_shapes_and_target_network(target):
    problem = small(target=target)
    x, y = problem.sample(120)
    assert x.shape == (120, 20) and y.shape == (120, 1)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0}
    for signs in (problem.input_weights, problem.input_bias, problem.output_weights):
        assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert problem.input_weights.shape == (100, 20) and problem.input_bias.shape == (100,)
    assert problem.output_weights.shape == (100,)
    assert problem.output_bias.item() in ((-1.0, 1.0) if target == "reference" else (0.0,))
    tau = ltu_thresholds(problem.input_weights, problem.input_bias, 0.7, target)
    expected = ltu_target(x, problem.input_weights, problem.input_bias, tau,
                          problem.output_weights, problem.output_bias)  # fmt: skip
    assert torch.equal(y, expected)
    assert problem.examples_drawn == 120


@pytest.mark.parametrize("flip", ["one", "all"])
def test_slow_bits_change_only_at_period_starts(flip):
    period, periods = 50, 40
    x, _ = small(flip, period=period).sample(period * periods)
    slow = x[:, :15].view(periods, period, 15)
    assert torch.all(slow == slow[:, :1])  # constant within every period
    changed = (slow[1:, 0] != slow[:-1, 0]).sum(dim=1)  # bits changed at each period start
    if flip == "one":
        assert torch.all(changed == 1)
    else:  # every bit redrawn: about f / 2 = 7.5 bits change
        assert 5 < changed.float().mean() < 10 and changed.max() > 1


def test_fast_bits_are_drawn_for_every_example():
    x, _ = small(period=10_000).sample(5000)
    fast = x[:, 15:20]
    # identical consecutive fast parts happen with probability 2^-5 = 1/32 per pair
    same = (fast[1:] == fast[:-1]).all(dim=1).float().mean()
    assert 0.01 < same < 0.06
    assert len(fast.unique(dim=0)) == 32  # all patterns of 5 bits occur


def test_reproducible_from_seed():
    a, b, c = small(seed=1), small(seed=1), small(seed=2)
    xa, ya = a.sample(200)
    xb, yb = b.sample(200)
    xc, _ = c.sample(200)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    assert not torch.equal(a.input_weights, c.input_weights)


@pytest.mark.parametrize("flip", ["one", "all"])
@pytest.mark.parametrize("sizes", [[5, 5], [3, 47, 1, 0, 99], [50, 50, 50, 10], [1] * 130])
def test_sampling_in_pieces_continues_the_sequence(flip, sizes):
    whole_x, whole_y = small(flip).sample(sum(sizes))
    pieces = small(flip)
    parts = [pieces.sample(n) for n in sizes]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_y)


@pytest.mark.parametrize("drawn", [0, 37, 50, 100])
def test_state_dict_resumes_exactly(drawn):
    problem = small(seed=4)
    problem.sample(drawn)
    buffer = io.BytesIO()
    torch.save(problem.state_dict(), buffer)
    expected = problem.sample(130)
    resumed = small(seed=99)  # same sizes, other seed: the state carries everything
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.examples_drawn == drawn
    got = resumed.sample(130)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_state_of_other_sizes_is_refused():
    state = SlowlyChangingRegression(num_hidden=10).state_dict()
    with pytest.raises(ConfigError, match="input_weights shape: got \\(10, 20\\)"):
        SlowlyChangingRegression().load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flip": "some"}, "flip: got 'some'; allowed: all, one"),
        ({"target": "text"}, "target: got 'text'; allowed: reference, paper"),
        ({"num_slow_bits": 21}, "num_slow_bits: got 21"),
        ({"beta": 1.5}, "beta: got 1.5"),
        ({"flip_every_examples": 0}, "flip_every_examples: got 0"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SlowlyChangingRegression(**kwargs)
