"""SAM and ASAM (Foret et al. 2021; Kwon et al. 2021): steps worked by hand, the trainer's two
passes, batched runs, resume, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_batched import assert_batched_resume_is_exact, assert_same_runs, config, regression_config

from plasticity_rl.methods.base import on_training_forward
from plasticity_rl.nn import build_mlp
from plasticity_rl.nn.mlp import hidden_layers
from plasticity_rl.optim import make_optimizer, sb3_optimizer_args
from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised.learner import Learner, build_learner, build_stream
from plasticity_rl.supervised.steps import perturbed_pass, train_step


def _sam_step(w: list[float], rho: float, adaptive: bool, lr: float = 0.1) -> torch.Tensor:
    """One SAM step of plain SGD on L(w) = sum(w^2) / 2 (gradient w)."""
    p = torch.nn.Parameter(torch.tensor(w))
    opt = make_optimizer([p], {"name": "sam", "base": "sgd", "lr": lr, "rho": rho,
                               "adaptive": adaptive})  # fmt: skip

    def gradients() -> None:
        (p.square().sum() / 2).backward()

    gradients()
    opt.sharpness_aware_gradients(gradients)
    grad_used = p.grad.clone()
    opt.step()
    return torch.stack([p.detach(), grad_used])


def test_sam_step_by_hand() -> None:
    # w = (3, 4): g = w, ||g|| = 5, e = 0.5 g / 5 = (0.3, 0.4); the gradient at w + e is
    # (3.3, 4.4); SGD 0.1: w - 0.1 (3.3, 4.4) = (2.67, 3.56)
    w, grad = _sam_step([3.0, 4.0], rho=0.5, adaptive=False)
    torch.testing.assert_close(grad, torch.tensor([3.3, 4.4]))
    torch.testing.assert_close(w, torch.tensor([2.67, 3.56]))


def test_asam_step_by_hand() -> None:
    # ASAM: T = |w| = (1, 2), T g = (1, 4), ||T g|| = sqrt(17); e = rho T^2 g / ||T g||
    # = 0.5 (1, 8) / sqrt(17); the gradient at w + e is w + e; SGD 0.1 steps along it
    w, grad = _sam_step([1.0, 2.0], rho=0.5, adaptive=True)
    e = 0.5 * torch.tensor([1.0, 8.0]) / 17**0.5
    torch.testing.assert_close(grad, torch.tensor([1.0, 2.0]) + e)
    torch.testing.assert_close(w, torch.tensor([1.0, 2.0]) - 0.1 * (torch.tensor([1.0, 2.0]) + e))


def test_rho_zero_is_the_base_optimizer() -> None:
    w, grad = _sam_step([3.0, 4.0], rho=0.0, adaptive=False)
    torch.testing.assert_close(grad, torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(w, torch.tensor([2.7, 3.6]))


def test_the_trainer_takes_two_passes_and_the_methods_record_the_first() -> None:
    cfg = regression_config(optimizer={"name": "sam", "base": "sgd", "lr": 0.01, "rho": 0.5})
    stream = build_stream(cfg)
    learner = Learner([cfg], [stream], *build_learner(cfg, stream))
    assert learner.backprop is None  # autograd: two passes a step
    net = learner.model
    x, y = torch.randn(1, 20), torch.randn(1, 1)
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for record in (True, False):
        on_training_forward(hidden_layers(net), lambda _, h, r=record: seen[r].append(h.detach()),
                            record=record)  # fmt: skip
    before = [p.detach().clone() for p in net.parameters()]
    output, loss = train_step(learner, x, y, "mse")
    # a record hook sees the forward at w only; a loss term sees both passes
    assert len(seen[True]) == 1 and len(seen[False]) == 2
    torch.testing.assert_close(seen[True][0], seen[False][0])
    assert not torch.equal(seen[False][0], seen[False][1])  # the second at w + e
    # output and loss are those at w; the weights moved by -lr * (gradient at w + e)
    restored = build_learner(cfg, stream)[0]
    for p, q in zip(restored.parameters(), before, strict=True):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(output, restored(x))
    torch.testing.assert_close(loss, ((restored(x) - y) ** 2).mean())
    for p, q in zip(net.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), q - 0.01 * p.grad)


def test_the_perturbed_pass_leaves_batch_norm_statistics_alone() -> None:
    norm = torch.nn.BatchNorm1d(3)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), norm)
    with perturbed_pass(model):
        model(torch.randn(8, 2))
    assert torch.equal(norm.running_mean, torch.zeros(3)) and norm.momentum == 0.1
    model(torch.randn(8, 2))
    assert not torch.equal(norm.running_mean, torch.zeros(3))


def test_batched_runs_equal_single_runs_each_with_its_own_norm(tmp_path: Path) -> None:
    optimizer = {"name": "sam", "lr": 0.01, "base": "sgd", "rho": 0.5}
    cfg = regression_config(optimizer=optimizer, stream={"kwargs": {"total_examples": 200,
                                                                    "bin_size": 100}})  # fmt: skip
    assert_same_runs(cfg, tmp_path)


def test_batched_asam_runs_resume_exactly(tmp_path: Path, mnist_dir: Path) -> None:
    cfg = config("permuted-mnist", "bp", data_dir=str(mnist_dir), network={"hidden_sizes": [8]},
                 optimizer={"name": "sam", "lr": 1e-3, "base": "adam", "rho": 0.5,
                            "adaptive": True},
                 train={"batch_size": 16}, stream={"kwargs": {"num_tasks": 2}})  # fmt: skip
    assert_batched_resume_is_exact(cfg, tmp_path)


def test_preset_wraps_the_named_base_and_bad_settings_are_config_errors() -> None:
    net = build_mlp(2, [3], 1)
    opt = make_optimizer(net, {"name": "sam", "lr": 0.1})
    assert isinstance(opt, torch.optim.SGD) and type(opt).__name__ == "SAMSGD"
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["sam_rho"] == 0.05
    with pytest.raises(ConfigError, match="optimizer.base: got 'trac'"):
        make_optimizer(net, {"name": "sam", "base": "trac"})
    with pytest.raises(ConfigError, match="optimizer.rho: got -1"):
        make_optimizer(net, {"name": "sam", "rho": -1})
    with pytest.raises(ConfigError, match="optimizer.name: got 'sam'; allowed: an optimiser SB3"):
        sb3_optimizer_args({"name": "sam"})
