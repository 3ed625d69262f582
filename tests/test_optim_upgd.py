"""UPGD (Elsayed & Mahmood 2024) against the authors' code, and its worked cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_batched import (
    assert_batched_resume_is_exact,
    assert_same_runs,
    config,
    regression_config,
)

from plasticity_rl.optim import make_optimizer
from plasticity_rl.optim.upgd import UPGD
from plasticity_rl.registry import ConfigError

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "elsayed2024" / "upgd.npz"


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("upgd", {"name": "upgd", "lr": 0.01, "weight_decay": 0.01, "beta_utility": 0.9,
                  "sigma": 0.1}),
        ("adaptive_upgd", {"name": "adaptive_upgd", "lr": 0.01, "weight_decay": 0.01,
                           "beta_utility": 0.9, "sigma": 0.1, "betas": [0.8, 0.95], "eps": 1e-5}),
    ],
)  # fmt: skip
def test_matches_the_authors_code(name: str, spec: dict) -> None:
    ref = np.load(FIXTURE)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.from_numpy(ref[f"init_{i}"]))
    x, y = torch.from_numpy(ref["x"]), torch.from_numpy(ref["y"])
    opt = make_optimizer(net, spec)
    torch.manual_seed(123)
    for step in range(1, 6):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
        for i, p in enumerate(net.parameters()):
            np.testing.assert_allclose(
                p.detach().numpy(), ref[f"{name}_step{step}_{i}"], rtol=1e-6, atol=1e-7
            )


def test_worked_step_without_noise() -> None:
    # Two weights, theta = (1, 2), g = (1, -1): utilities -g*theta = (-1, 2), beta 0 so u_hat = u;
    # global max 2, s = sigmoid((-0.5, 1)); theta <- theta - 2 lr g (1 - s) (no decay, no noise).
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([1.0, -1.0])
    UPGD([p], lr=0.1, weight_decay=0.0, beta_utility=0.0, sigma=0.0).step()
    s = torch.sigmoid(torch.tensor([-0.5, 1.0]))
    want = torch.tensor([1.0, 2.0]) - 0.2 * torch.tensor([1.0, -1.0]) * (1 - s)
    torch.testing.assert_close(p.detach(), want)


def test_zero_utility_everywhere_gives_half_protection_not_nan() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    UPGD([p], lr=0.1, weight_decay=0.0, beta_utility=0.0, sigma=0.0).step()
    torch.testing.assert_close(p.detach(), torch.full((3,), -0.1))  # -2 lr g (1 - 1/2)


def test_bad_settings_are_config_errors() -> None:
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="optimizer.beta_utility"):
        make_optimizer(net, {"name": "upgd", "beta_utility": 1.0})
    with pytest.raises(ConfigError, match="optimizer.sigma"):
        make_optimizer(net, {"name": "adaptive_upgd", "sigma": -1})


@pytest.mark.parametrize("name", ["upgd", "adaptive_upgd"])
def test_batched_runs_equal_single_runs(name: str, tmp_path: Path) -> None:
    # each run's own utility maximum and noise generator: run s is the single run of seed s
    optimizer = {"name": name, "lr": 0.01, "sigma": 0.1, "beta_utility": 0.9}
    cfg = regression_config(optimizer=optimizer, stream={"kwargs": {"total_examples": 200,
                                                                    "bin_size": 100}})  # fmt: skip
    states = assert_same_runs(cfg, tmp_path)
    utilities = [state["optimizer"]["state"][0]["avg_utility"] for state in states]
    assert not torch.equal(utilities[0], utilities[1])


def test_batched_runs_resume_exactly(tmp_path: Path, mnist_dir: Path) -> None:
    cfg = config("permuted-mnist", "bp", data_dir=str(mnist_dir), network={"hidden_sizes": [8]},
                 optimizer={"name": "adaptive_upgd", "lr": 1e-3, "sigma": 0.1},
                 train={"batch_size": 16}, stream={"kwargs": {"num_tasks": 2}})  # fmt: skip
    assert_batched_resume_is_exact(cfg, tmp_path)
