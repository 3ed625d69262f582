"""Self-normalized resets: the silence counts, the test at each unit's own rate, the resets."""

from __future__ import annotations

import pytest
import torch
from stand_ins import assert_composes_and_resumes

from plasticity_rl.methods import SelfNormalizedResets, make_method
from plasticity_rl.nn import build_mlp
from plasticity_rl.registry import ConfigError


def counts_after(batches: list[list[list[float]]]) -> dict[str, torch.Tensor]:
    counts = {key: torch.zeros(1, 3, dtype=torch.long) for key in ("silence", "fires", "examples")}
    for h in batches:
        SelfNormalizedResets._count(counts, torch.tensor([h]))
    return counts


# Two batches of two examples, three units:
# batch 1: unit 0 fires once (f0 = 1); units 1, 2 silent: a = 2
# batch 2: unit 1 fires once (f1 = 1, a1 = 0); a0 = 2, a2 = 4; every n = 4
BATCHES = [[[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], [[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]]


def test_counts_by_hand():
    counts = counts_after(BATCHES)
    assert counts["fires"].tolist() == [[1, 1, 0]]
    assert counts["examples"].tolist() == [[4, 4, 4]]
    assert counts["silence"].tolist() == [[2, 0, 4]]


@pytest.mark.parametrize(
    "percentile, expected",
    [
        # rates: mu0 = mu1 = 1/4; unit 2 never fired: the layer's 2/12 = 1/6.
        # log P(silence): unit 0: 2 ln(3/4) = -0.575; unit 1: 0 (no silence); unit 2:
        # 4 ln(5/6) = -0.729. Reset when log P < ln(1 - eta):
        (0.4, [True, False, True]),  # ln 0.6 = -0.511
        (0.5, [False, False, True]),  # ln 0.5 = -0.693
        (0.6, [False, False, False]),  # ln 0.4 = -0.916
    ],
)
def test_improbable_silences_by_hand(percentile: float, expected: list[bool]):
    counts = counts_after(BATCHES)
    method = SelfNormalizedResets(percentile=percentile)
    units = method.improbable_silence(counts["silence"], counts["fires"], counts["examples"])
    assert units.tolist() == [expected]


def test_resets_a_unit_that_stops_firing_and_starts_its_counts_again():
    # 1 -> 2 -> 1 with lr 0: unit 0 fires on x > 0, unit 1 on x < 0. Twenty alternating
    # inputs, then negative ones only: unit 0 falls silent.
    torch.manual_seed(0)
    net = build_mlp(1, [2], 1)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.hidden[0].bias.zero_()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    method = SelfNormalizedResets(percentile=0.99)
    method.attach(net, optimizer)

    def step(x: float) -> None:
        optimizer.zero_grad()
        net(torch.tensor([[x]])).sum().backward()
        optimizer.step()

    for i in range(20):  # both units fire at rate 1/2
        step(1.0 if i % 2 == 0 else -1.0)
    assert method.stats() == {"hidden1/silence_resets": 0.0}
    # after k more negative inputs unit 0 has f = 10, n = 20 + k, a = 1 + k: reset at the
    # first k with (1 - 10 / (20 + k))^(1 + k) < 0.01
    k = next(k for k in range(1, 100) if (1 - 10 / (20 + k)) ** (1 + k) < 0.01)
    for _ in range(k - 1):
        step(-1.0)
    assert method.stats() == {"hidden1/silence_resets": 0.0}
    step(-1.0)
    assert method.stats() == {"hidden1/silence_resets": 1.0}
    assert net.output.weight[0, 0] == 0 and net.hidden[0].bias[0] == 0
    assert [c[0].item() for c in method.counts["hidden1"].values()] == [0, 0, 0]


def test_composes_with_unit_resets_and_l2_and_resumes():
    methods = assert_composes_and_resumes({"self_normalized_resets": {"percentile": 0.9}})
    assert set(methods[0].state_dict()["units"]) == {"hidden1", "hidden2"}


@pytest.mark.parametrize("key, value", [("percentile", 1.0), ("optimizer_state", "zero")])
def test_bad_values_are_config_errors(key: str, value: object):
    with pytest.raises(ConfigError, match=f"self_normalized_resets.{key}: got"):
        make_method("self_normalized_resets", **{key: value})
