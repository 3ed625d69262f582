"""PSGD Kron: heavyball's optimiser with its settings, exact resume, unit resets, refusals."""

from __future__ import annotations

import io

import heavyball
import pytest
import torch
from torch import Tensor

from plasticity_rl.optim import make_optimizer
from plasticity_rl.optim.kron import Kron
from plasticity_rl.optim.runs import make_run_optimizer
from plasticity_rl.optim.state import reset_optimizer_state
from plasticity_rl.registry import ConfigError

X = torch.linspace(-1, 1, 40).reshape(5, 8)
Y = torch.linspace(0, 1, 20).reshape(5, 4)


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def train(net: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        ((net(X) - Y) ** 2).mean().backward()
        optimizer.step()


def float_tensors(state: object) -> list[Tensor]:
    """Every floating tensor in a (nested) optimiser state, in order."""
    if isinstance(state, Tensor):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for v in state.values() for t in float_tensors(v)]
    if isinstance(state, list | tuple):
        return [t for v in state for t in float_tensors(v)]
    return []


def test_preset_is_heavyballs_psgd_kron_with_its_settings() -> None:
    spec = {"name": "kron", "lr": 3e-3, "weight_decay": 0.1, "beta": 0.8}
    ours, theirs = make_net(), make_net()
    optimizer = make_optimizer(ours, spec)
    assert type(optimizer) is Kron
    torch.manual_seed(1)
    train(ours, optimizer, 20)
    reference = heavyball.PSGDKron(theirs.parameters(), lr=3e-3, weight_decay=0.1, beta=0.8)
    torch.manual_seed(1)
    train(theirs, reference, 20)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0].weight, make_net()[0].weight)


def test_a_resumed_run_equals_the_whole_one_and_keeps_float64_state() -> None:
    spec = {"name": "kron", "lr": 1e-2, "weight_decay": 1e-2}
    whole = make_net()
    optimizer = make_optimizer(whole, spec)
    torch.manual_seed(1)
    train(whole, optimizer, 60)

    cut = make_net()
    optimizer = make_optimizer(cut, spec)
    torch.manual_seed(1)
    train(cut, optimizer, 30)
    buffer = io.BytesIO()
    torch.save({"net": cut.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state()}, buffer)  # fmt: skip
    saved = torch.load(io.BytesIO(buffer.getvalue()))
    resumed = make_net()
    resumed.load_state_dict(saved["net"])
    optimizer = make_optimizer(resumed, spec)
    optimizer.load_state_dict(saved["optimizer"])
    loaded = [optimizer.state[p] for p in resumed.parameters()]
    dtypes = [t.dtype for t in float_tensors(loaded)]
    assert torch.float64 in dtypes  # heavyball's running lower bound, not cast to float32
    assert dtypes == [t.dtype for t in float_tensors(list(saved["optimizer"]["state"].values()))]
    torch.set_rng_state(saved["rng"])
    train(resumed, optimizer, 30)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unit_reset_zeroes_the_momentum_rows_and_keeps_the_factors() -> None:
    net = make_net()
    optimizer = make_optimizer(net, "kron")
    train(net, optimizer, 3)
    weight = net[0].weight
    (momentum,) = [t for t in float_tensors(optimizer.state[weight]) if t.shape == weight.shape]
    factors = [t.clone() for t in float_tensors(optimizer.state[weight]) if t.shape != weight.shape]
    assert momentum.abs().sum(1).gt(0).all()
    reset_optimizer_state(optimizer, weight, torch.tensor([2, 5]), 0, "zero_moments")
    assert momentum[[2, 5]].eq(0).all() and momentum.abs().sum(1).gt(0).sum() == 14
    kept = [t for t in float_tensors(optimizer.state[weight]) if t.shape != weight.shape]
    assert all(torch.equal(a, b) for a, b in zip(factors, kept, strict=True))
    with pytest.raises(ConfigError, match="optimizer_state: got 'zero_moments_and_step'"):
        reset_optimizer_state(optimizer, weight, torch.tensor([2]), 0, "zero_moments_and_step")


def test_bad_settings_and_batched_runs_are_config_errors() -> None:
    net = make_net()
    for spec, message in [
        ({"name": "kron", "beta": 1.0}, r"optimizer.beta: got 1.0; allowed: a number in \[0, 1\)"),
        ({"name": "kron", "precond_lr": 0}, r"optimizer.precond_lr: got 0; allowed: a number > 0"),
        ({"name": "kron", "memory_save_mode": "some"}, r"optimizer.memory_save_mode: got 'some'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_optimizer(net, spec)
    with pytest.raises(ConfigError, match=r"optimizer.name: got 'kron'; allowed: an optimiser "
                                          r"that updates each element on its own"):  # fmt: skip
        make_run_optimizer(net, "kron", runs=2)
