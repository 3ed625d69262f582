"""TRAC (Muppidi et al. 2024) against the authors' package, erfi, and checkpointing."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_batched import assert_batched_resume_is_exact, assert_same_runs, config, regression_config

from plasticity_rl.optim import make_optimizer, reset_optimizer_state
from plasticity_rl.optim.trac import TRAC_STATE, erfi, trac_class
from plasticity_rl.registry import ConfigError

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "muppidi2024" / "trac.npz"


def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, dict]:
    ref = dict(np.load(FIXTURE))
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.from_numpy(ref[f"init_{i}"]))
    return net, torch.from_numpy(ref["x"]), torch.from_numpy(ref["y"]), ref


def _train(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           steps: range):  # fmt: skip
    for step in steps:
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
        yield step + 1


def test_matches_the_authors_package() -> None:
    # The package wraps torch.optim.Adam; so does this (the "adam" preset is our Adam, whose
    # last-bit rounding differs, and TRAC's scale amplifies such differences early on).
    net, x, y, ref = _problem()
    opt = trac_class(torch.optim.Adam)(net.parameters(), lr=0.01)
    for step in _train(net, opt, x, y, range(200)):
        if step % 20 == 0:
            s = opt.param_groups[0]["trac"]["s"]
            np.testing.assert_allclose(s.numpy(), ref[f"s_step{step}"], rtol=1e-6, atol=1e-12)
            for i, p in enumerate(net.parameters()):
                np.testing.assert_allclose(p.detach().numpy(), ref[f"step{step}_{i}"],
                                           rtol=1e-6, atol=1e-7)  # fmt: skip


def test_preset_wraps_the_named_base_optimizer() -> None:
    opt = make_optimizer(torch.nn.Linear(2, 2), {"name": "trac", "lr": 0.1, "base": "sgd"})
    assert isinstance(opt, torch.optim.SGD) and type(opt).__name__ == "TRACSGD"
    assert opt.param_groups[0]["lr"] == 0.1 and len(opt.param_groups[0]["trac_betas"]) == 6


def test_erfi_values() -> None:
    # erfi(x) = -i erf(ix); known values: erfi(0.5) = 0.614952, erfi(1) = 1.650426,
    # erfi(3) = 1629.994623 (Abramowitz & Stegun / mpmath), odd.
    x = torch.tensor([0.0, 0.5, 1.0, 3.0, -1.0])
    want = torch.tensor([0.0, 0.6149520947, 1.6504257588, 1629.9946226, -1.6504257588],
                        dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(erfi(x), want, rtol=1e-9, atol=1e-12)
    assert math.isinf(erfi(torch.tensor(30.0)).item())


def test_state_dict_round_trip_continues_identically() -> None:
    net, x, y, _ = _problem()
    opt = make_optimizer(net, {"name": "trac", "lr": 0.01})
    list(_train(net, opt, x, y, range(50)))
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, buffer)
    list(_train(net, opt, x, y, range(50, 80)))
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net2, *_ = _problem()
    net2.load_state_dict(saved["net"])
    opt2 = make_optimizer(net2, {"name": "trac", "lr": 0.01})
    opt2.load_state_dict(saved["opt"])
    list(_train(net2, opt2, x, y, range(50, 80)))
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unit_reset_keeps_the_reference_and_zeroes_the_moments() -> None:
    net, x, y, _ = _problem()
    opt = make_optimizer(net, {"name": "trac", "lr": 0.01})
    list(_train(net, opt, x, y, range(3)))
    weight = net[0].weight
    reference = opt.state[weight][TRAC_STATE].clone()
    reset_optimizer_state(opt, weight, torch.tensor([1]), 0, "zero_moments")
    torch.testing.assert_close(opt.state[weight][TRAC_STATE], reference)
    assert opt.state[weight]["exp_avg"][1].abs().sum() == 0


def test_bad_settings_are_config_errors() -> None:
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="optimizer.base"):
        make_optimizer(net, {"name": "trac", "base": "trac"})
    with pytest.raises(ConfigError, match="optimizer.betas"):
        make_optimizer(net, {"name": "trac", "betas": [1.0]})


def test_batched_runs_equal_single_runs_each_with_its_own_scale(tmp_path: Path) -> None:
    optimizer = {"name": "trac", "lr": 0.01, "base": "sgd"}
    cfg = regression_config(optimizer=optimizer, stream={"kwargs": {"total_examples": 200,
                                                                    "bin_size": 100}})  # fmt: skip
    states = assert_same_runs(cfg, tmp_path)  # the runs' checkpoints hold their own (6,) scales
    scales = [state["optimizer"]["param_groups"][0]["trac"]["s"] for state in states]
    assert scales[0].shape == (6,) and not torch.equal(scales[0], scales[1])


def test_batched_runs_resume_exactly(tmp_path: Path, mnist_dir: Path) -> None:
    cfg = config("permuted-mnist", "bp", data_dir=str(mnist_dir), network={"hidden_sizes": [8]},
                 optimizer={"name": "trac", "lr": 1e-3, "base": "adam"},
                 train={"batch_size": 16}, stream={"kwargs": {"num_tasks": 2}})  # fmt: skip
    assert_batched_resume_is_exact(cfg, tmp_path)
