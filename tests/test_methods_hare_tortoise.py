"""Hare & Tortoise: the EMA tortoise and the periodic hare reset."""

from __future__ import annotations

import copy

import pytest
import torch
from stand_ins import assert_composes_and_resumes, train_steps

from plasticity_rl.methods import HareTortoise, make_method
from plasticity_rl.nn import build_mlp
from plasticity_rl.registry import ConfigError


def test_tortoise_is_the_ema_of_the_hare_and_the_hare_is_reset_to_it():
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    plain = copy.deepcopy(net)  # the same training without the method, for the hare's values
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    method = HareTortoise(ema_rate=0.5, reset_every_optimizer_steps=2)
    method.attach(net, optimizer)
    theta0 = [p.detach().clone() for p in plain.parameters()]
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    train_steps(plain, plain_optimizer, 1)
    theta1 = [p.detach().clone() for p in plain.parameters()]
    train_steps(plain, plain_optimizer, 1, seed=1)
    theta2 = [p.detach().clone() for p in plain.parameters()]

    train_steps(net, optimizer, 1)
    # step 1: T1 = 0.5 T0 + 0.5 H1 with T0 = theta0; the hare is untouched
    for t, a, b in zip(method.tortoise, theta0, theta1, strict=True):
        torch.testing.assert_close(t, 0.5 * a + 0.5 * b)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), theta1, strict=True))
    train_steps(net, optimizer, 1, seed=1)
    # step 2: T2 = 0.5 T1 + 0.5 H2 = 0.25 theta0 + 0.25 theta1 + 0.5 theta2, and H <- T2
    for p, a, b, c in zip(net.parameters(), theta0, theta1, theta2, strict=True):
        torch.testing.assert_close(p.detach(), 0.25 * a + 0.25 * b + 0.5 * c)
    assert method.stats() == {"hare_tortoise/resets": 1.0}


@pytest.mark.parametrize("mode", ["keep", "zero_moments"])
def test_the_reset_keeps_the_adam_moments_or_zeroes_them(mode: str):
    torch.manual_seed(0)
    net = build_mlp(3, [4], 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    HareTortoise(reset_every_optimizer_steps=3, optimizer_state=mode).attach(net, optimizer)
    train_steps(net, optimizer, 3)
    zeroed = [optimizer.state[p]["exp_avg"].abs().sum() == 0 for p in net.parameters()]
    assert zeroed == [mode == "zero_moments"] * len(zeroed)


def test_defaults_are_the_authors_code():
    method = HareTortoise()
    assert (method.ema_rate, method.optimizer_state) == (0.999, "keep")


def test_composes_with_unit_resets_and_l2_and_resumes():
    methods = assert_composes_and_resumes(
        {"hare_tortoise": {"ema_rate": 0.9, "reset_every_optimizer_steps": 5}}
    )
    assert methods[0].state_dict()["steps"] == 24


@pytest.mark.parametrize(
    "key, value",
    [("ema_rate", 1.0), ("reset_every_optimizer_steps", 0), ("optimizer_state", "zero")],
)
def test_bad_values_are_config_errors(key: str, value: object):
    with pytest.raises(ConfigError, match=f"hare_tortoise.{key}: got"):
        make_method("hare_tortoise", **{key: value})
