from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plasticity_rl.nn import SDMLinear, build_mlp
from plasticity_rl.optim import (
    OPTIMIZERS,
    Adam,
    attach_step_hooks,
    clip_updates,
    make_optimizer,
    reset_optimizer_state,
    sb3_optimizer_args,
)
from plasticity_rl.optim.runs import make_run_optimizer
from plasticity_rl.registry import ConfigError


def _scalar_param(value: float | list[float]) -> nn.Parameter:
    return nn.Parameter(torch.tensor(value, dtype=torch.float32))


def _set_grad_and_step(optimizer: torch.optim.Optimizer, p: torch.Tensor, grad: list[float]):
    p.grad = torch.tensor(grad, dtype=p.dtype)
    optimizer.step()


def _regression_losses(net: nn.Module, steps: int, optimizer: torch.optim.Optimizer) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.95)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch_adam(weight_decay: float, betas: tuple[float, float]):
    torch.manual_seed(0)
    ours, ref = nn.Linear(3, 2), nn.Linear(3, 2)
    ref.load_state_dict(ours.state_dict())
    initial = ours.weight.detach().clone()
    kwargs = dict(lr=0.05, betas=betas, eps=1e-6, weight_decay=weight_decay)
    _regression_losses(ours, 5, Adam(ours.parameters(), **kwargs))
    _regression_losses(ref, 5, torch.optim.Adam(ref.parameters(), **kwargs))
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours.weight, initial, atol=0.05)  # it did train


def test_adam_without_bias_correction_single_step():
    # g = 0.5, lr 0.1, betas (0.9, 0.999): m = 0.1 * 0.5 = 0.05, v = 0.001 * 0.25 = 0.00025,
    # update = 0.1 * 0.05 / (sqrt(0.00025) + 1e-8) = 0.005 / 0.0158113983 = 0.3162276
    p = _scalar_param([1.0])
    optimizer = make_optimizer([p], {"name": "adam_no_bias_correction", "lr": 0.1})
    _set_grad_and_step(optimizer, p, [0.5])
    state = optimizer.state[p]
    torch.testing.assert_close(state["exp_avg"], torch.tensor([0.05]))
    torch.testing.assert_close(state["exp_avg_sq"], torch.tensor([0.00025]))
    expected = 1.0 - 0.1 * 0.05 / (math.sqrt(0.00025) + 1e-8)
    torch.testing.assert_close(p.detach(), torch.tensor([expected]))


def test_adam_step_is_per_element_and_resets_per_element():
    # With bias correction the first step of an element is lr * g / (|g| + eps) = lr * sign(g),
    # whatever the other elements' step counts are.
    p = _scalar_param([0.0, 0.0, 0.0])
    optimizer = Adam([p], lr=0.1)
    for _ in range(2):
        _set_grad_and_step(optimizer, p, [1.0, -2.0, 3.0])
    state = optimizer.state[p]
    assert state["step"].shape == p.shape and state["step"].dtype == torch.float32
    torch.testing.assert_close(state["step"], torch.tensor([2.0, 2.0, 2.0]))
    # Reset element 0 as an AdamGnT-style intervention would.
    reset_optimizer_state(optimizer, p, torch.tensor([0]), 0, "zero_moments_and_step")
    assert state["exp_avg"][0] == 0 and state["exp_avg_sq"][0] == 0
    before = p.detach().clone()
    _set_grad_and_step(optimizer, p, [-4.0, -2.0, 3.0])
    torch.testing.assert_close(state["step"], torch.tensor([1.0, 3.0, 3.0]))
    assert p[0].item() - before[0].item() == pytest.approx(0.1, rel=1e-5)


def test_adam_skips_params_without_grad():
    used, unused = _scalar_param([1.0]), _scalar_param([1.0])
    optimizer = Adam([used, unused], lr=0.1)
    _set_grad_and_step(optimizer, used, [1.0])
    assert unused.item() == 1.0 and unused not in optimizer.state
    assert used.item() == pytest.approx(0.9, rel=1e-5)


def test_adam_state_dict_round_trip_keeps_per_element_steps():
    p, q = _scalar_param([0.0, 0.0]), _scalar_param([0.0, 0.0])
    first = Adam([p], lr=0.1)
    _set_grad_and_step(first, p, [1.0, 1.0])
    reset_optimizer_state(first, p, torch.tensor([1]), 0, "zero_moments_and_step")
    second = Adam([q], lr=0.1)
    second.load_state_dict(first.state_dict())
    torch.testing.assert_close(second.state[q]["step"], torch.tensor([1.0, 0.0]))


def test_adam_tuned_betas_and_no_bias_correction_flag():
    p = _scalar_param([1.0])
    assert make_optimizer([p], "adam_tuned").param_groups[0]["betas"] == (0.99, 0.99)
    group = make_optimizer([p], "adam_no_bias_correction").param_groups[0]
    assert group["bias_correction"] is False
    assert make_optimizer([p], "adam", betas=[0.5, 0.6]).param_groups[0]["betas"] == (0.5, 0.6)


def test_adagrad_initial_accumulator_in_state():
    p = _scalar_param([1.0, 2.0])
    optimizer = make_optimizer([p], {"name": "adagrad", "initial_accumulator_value": 1e-6})
    torch.testing.assert_close(optimizer.state[p]["sum"], torch.full((2,), 1e-6))


@pytest.mark.parametrize("name", ["adagrad", "rmsprop"])
def test_eps_in_sqrt_divides_by_the_root_of_s_plus_eps(name: str):
    # One step from s_0 = 0 (rmsprop: v = (1 - alpha) g^2) with g = 1e-3, eps = 1e-4, lr = 1:
    # update = g / sqrt(s + eps) with s = g^2 (adagrad) or 0.5 g^2 (rmsprop, alpha = 0.5).
    s = 1e-6 if name == "adagrad" else 0.5e-6
    kwargs = {"alpha": 0.5} if name == "rmsprop" else {}
    p = _scalar_param([0.0])
    optimizer = make_optimizer([p], name, lr=1.0, eps=1e-4, eps_in_sqrt=True, **kwargs)
    _set_grad_and_step(optimizer, p, [1e-3])
    assert p.item() == pytest.approx(-1e-3 / (s + 1e-4) ** 0.5, rel=1e-5)
    with pytest.raises(ConfigError, match="optimizer.eps_in_sqrt: got 1"):
        make_optimizer([p], name, eps_in_sqrt=1)


def test_sgd_weight_decay_is_coupled():
    # p = 2, g = 0.5, wd = 0.1, lr = 0.1: p <- 2 - 0.1 * (0.5 + 0.1 * 2) = 1.93
    p = _scalar_param([2.0])
    optimizer = make_optimizer([p], "sgd", lr=0.1, weight_decay=0.1)
    assert optimizer.param_groups[0]["momentum"] == 0.0
    _set_grad_and_step(optimizer, p, [0.5])
    assert p.item() == pytest.approx(1.93, rel=1e-6)


def test_update_clip_clips_update_not_state_and_handle_removes():
    # SGD+momentum, lr 1, first step: buffer = g, update = -g = [-3, 2, -0.004, 0.001]
    # -> clipped to [-0.01, 0.01, -0.004, 0.001]; the buffer stays g.
    p = _scalar_param([0.0, 0.0, 0.0, 0.0])
    optimizer = make_optimizer([p], {"name": "sgdm", "lr": 1.0, "momentum": 0.9})
    handle = clip_updates(optimizer, 0.01)
    grad = [3.0, -2.0, 0.004, -0.001]
    _set_grad_and_step(optimizer, p, grad)
    torch.testing.assert_close(p.detach(), torch.tensor([-0.01, 0.01, -0.004, 0.001]))
    torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], torch.tensor(grad))
    # Unclipped after remove(): buffer = 0.9 g + g = 1.9 g, p <- p - 1.9 g.
    handle.remove()
    before = p.detach().clone()
    _set_grad_and_step(optimizer, p, grad)
    torch.testing.assert_close(p.detach(), before - 1.9 * torch.tensor(grad))


def test_make_optimizer_projects_sdm_rows_after_the_clip():
    # The clip binds (lr 10); if it ran after the projection, old + clamp(projected - old)
    # would leave the rows off the unit sphere.
    torch.manual_seed(0)
    net = build_mlp(16, [8], 2, sdm=True)  # 16 inputs: no row is all zero after the init clamp
    optimizer = make_optimizer(net, {"name": "sgd", "lr": 10.0, "update_clip": 0.01})
    assert len(optimizer.plasticity_handles) == 2
    x = torch.randn(32, 16)
    for _ in range(3):
        before = net.hidden[0].weight.detach().clone()
        optimizer.zero_grad()
        net(x).pow(2).sum().backward()
        optimizer.step()
    w = net.hidden[0].weight.detach()
    assert not torch.equal(w, before)
    assert (w >= 0).all()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(8))


def test_attach_step_hooks_appends_handles():
    p = _scalar_param([0.0])
    optimizer = make_optimizer([p], "sgd", update_clip=0.5)
    assert len(optimizer.plasticity_handles) == 1
    added = attach_step_hooks(optimizer, SDMLinear(2, 3, bias=False))
    assert len(added) == 1 and len(optimizer.plasticity_handles) == 2
    # a model without constrained layers gets no projection hook at all
    post_hooks = len(optimizer._optimizer_step_post_hooks)
    assert attach_step_hooks(optimizer, nn.Linear(1, 1)) == []
    assert len(optimizer._optimizer_step_post_hooks) == post_hooks


def test_grad_clip_norm_rescales_the_joint_gradient_norm_before_the_step():
    # Gradients (3, 4) and (0,): joint norm 5 -> scaled by 1 / (5 + 1e-6) to norm 1 (torch's
    # clip_grad_norm_); with a norm below the bound they are left alone.
    a, b = _scalar_param([0.0, 0.0]), _scalar_param([0.0])
    optimizer = make_optimizer([a, b], {"name": "sgd", "lr": 1.0, "grad_clip_norm": 1.0})
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0])
    optimizer.step()
    torch.testing.assert_close(a.detach(), -torch.tensor([0.6, 0.8]), rtol=1e-5, atol=1e-6)
    a.grad, b.grad = torch.tensor([0.3, 0.4]), torch.tensor([0.0])
    optimizer.step()
    torch.testing.assert_close(a.detach(), -torch.tensor([0.9, 1.2]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="optimizer.grad_clip_norm: got 0"):
        make_optimizer([a], {"name": "sgd", "grad_clip_norm": 0})


def test_grad_clip_norm_is_refused_for_batched_runs_and_sb3():
    net = build_mlp(3, [4], 2)
    with pytest.raises(ConfigError, match="optimizer.grad_clip_norm: got 1.0.*batched"):
        make_run_optimizer(net, {"name": "sgd", "lr": 0.1, "grad_clip_norm": 1.0}, 2, None)
    with pytest.raises(ConfigError, match="optimizer.grad_clip_norm: got 1.0.*max_grad_norm"):
        sb3_optimizer_args({"name": "adam", "grad_clip_norm": 1.0})


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_preset_builds_and_steps(name: str):
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    before = net.weight.detach().clone()
    _regression_losses(net, 1, make_optimizer(net, name, lr=0.01, weight_decay=0.01))
    assert not torch.equal(net.weight, before)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS.names() if n != "sam"])  # no SAM in RL
def test_sb3_optimizer_args_construct_the_same_optimizer(name: str):
    optimizer_class, kwargs = sb3_optimizer_args({"name": name, "update_clip": 0.01})
    assert "lr" not in kwargs
    p = _scalar_param([1.0])
    ours = make_optimizer([p], name, lr=3e-4)
    theirs = optimizer_class([p], lr=3e-4, **kwargs)
    assert type(theirs) is type(ours) and theirs.defaults == ours.defaults


def test_sb3_policy_builds_with_our_adam():
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy

    optimizer_class, kwargs = sb3_optimizer_args("adam_tuned")
    policy = ActorCriticPolicy(
        spaces.Box(-1, 1, (3,)),
        spaces.Box(-1, 1, (1,)),
        lambda _: 3e-4,
        optimizer_class=optimizer_class,
        optimizer_kwargs=kwargs,
    )
    assert isinstance(policy.optimizer, Adam)
    assert policy.optimizer.param_groups[0]["betas"] == (0.99, 0.99)
    assert policy.optimizer.param_groups[0]["lr"] == 3e-4


def test_config_errors_name_key_value_and_allowed():
    p = _scalar_param([1.0])
    with pytest.raises(ConfigError, match="adagrad.*adam_tuned.*sgdm") as err:
        make_optimizer([p], "adamw")
    assert err.value.value == "adamw"
    with pytest.raises(ConfigError, match="momentum") as err:
        make_optimizer([p], {"name": "sgd", "momentum": 0.9})
    assert err.value.value == "momentum"
    with pytest.raises(ConfigError, match=r"lr: got -0\.1"):
        make_optimizer([p], "rmsprop", lr=-0.1)
    with pytest.raises(ConfigError, match=r"lr: got -0\.1"):
        Adam([p], lr=-0.1)
    with pytest.raises(ConfigError, match="betas"):
        make_optimizer([p], "adam", betas=(0.9, 1.0))
    with pytest.raises(ConfigError, match="update_clip"):
        make_optimizer([p], "sgd", update_clip=0.0)
    with pytest.raises(ConfigError, match="lr"):
        sb3_optimizer_args({"name": "adam", "lr": 1e-3})
