"""Parity with the code of Keskinen 2024 (Hard ASH): numbers its functions produced, replayed here.

The fixtures in ``tests/fixtures/parity/keskinen2024/`` (provenance in its README.md) hold the
outputs and gradients of the authors' Top-K, Hard ASH, ASH and weight norm on fixed inputs, the
parameters after optax steps with their optimiser settings and update clip, and the weights of
their network after five training steps. Tolerances are float32 rounding: the two sides sum in
different orders (JAX/XLA vs PyTorch), which moves results by a few ulps of the operands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from plasticity_rl.config import REPO_ROOT, load_preset, resolve
from plasticity_rl.nn import make_activation
from plasticity_rl.nn.layers import UnitNormRows, layer_parameter
from plasticity_rl.optim import make_optimizer
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.learner import build_network

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "keskinen2024"
EXPERIMENT = REPO_ROOT / "experiments" / "keskinen2024-split-mnist.yaml"


def fixture(name: str) -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def grid_config(axis: str, level: str) -> dict[str, Any]:
    """The config of one grid level of the Table 3 experiment preset."""
    return yaml.safe_load(EXPERIMENT.read_text())["grid"][axis][level]["config"]


def agent_config(agent: str, *overrides: str) -> SupervisedRunConfig:
    return resolve(SupervisedRunConfig, load_preset("agents", agent), overrides=overrides)


def output_and_grad(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple:
    x = x.clone().requires_grad_()
    out = module(x)
    (out * g).sum().backward()
    return out.detach(), x.grad


# Activation specs as the presets write them, keyed by the fixture's name.
TOPK_SUBTRACT = grid_config("activation", "topk_subtract")["network"]["activation"]
ACTIVATIONS = {
    **{f"topk_subtract_k{k}": {**TOPK_SUBTRACT, "k": k} for k in (1, 5, 64)},
    **{f"topk_mask_k{k}": {"name": "topk", "k": k, "mode": "mask"} for k in (1, 5, 64)},
    **{
        f"{name}_zk{z_k}": {**grid_config("activation", name)["network"]["activation"], "z_k": z_k}
        for name in ("hard_ash", "ash")
        for z_k in (2.3, 0.5)
    },
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_output_and_gradient_match_the_reference(name: str) -> None:
    data = fixture("activations")
    out, grad = output_and_grad(make_activation(ACTIVATIONS[name]), data["x"], data["g"])
    # Values are O(1); one float32 ulp at 4 is 5e-7, and mean/std over 200 units add a few.
    torch.testing.assert_close(out, data[f"{name}_out"], rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, data[f"{name}_grad"], rtol=0, atol=1e-5)


def test_topk_preset_is_the_reference_subtract() -> None:
    assert agent_config("topk-adagrad").network.activation == TOPK_SUBTRACT


def test_centred_weight_norm_matches_the_reference() -> None:
    data = fixture("weight_norm")
    w = data["w"].clone().requires_grad_()
    out = data["z"] @ UnitNormRows(centred=True)(w).T
    (out * data["g"]).sum().backward()
    torch.testing.assert_close(out.detach(), data["out"], rtol=0, atol=1e-5)
    torch.testing.assert_close(w.grad, data["grad_w"], rtol=0, atol=1e-5)
    # Without centring the layer differs (the rows of w have non-zero means).
    assert not torch.allclose(data["z"] @ UnitNormRows()(data["w"]).T, data["out"], atol=1e-3)


OPTIMIZERS = {
    "adagrad": (agent_config("hard-ash-adagrad").optimizer, {}),
    "adagrad_clipped": (agent_config("hard-ash-adagrad").optimizer, {"lr": 0.05}),
    "rmsprop": (grid_config("optimizer", "rmsprop")["optimizer"], {}),
    "rmsprop_clipped": (grid_config("optimizer", "rmsprop")["optimizer"], {"lr": 1e-3}),
    "adam": (agent_config("relu-adam").optimizer, {"lr": 1e-5, "betas": [0.98, 0.9995]}),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_steps_match_optax(name: str) -> None:
    data = fixture("optimizers")
    spec, overrides = OPTIMIZERS[name]
    p = data["p0"].clone().requires_grad_()
    optimizer = make_optimizer([p], dict(spec), **overrides)
    for step, g in enumerate(data["grads"]):
        p.grad = g.clone()
        optimizer.step()
        # Updates are <= 0.01 on parameters ~0.1: float32 rounding of p is ~1e-8; the
        # step sizes themselves agree to a few ulps.
        torch.testing.assert_close(p.detach(), data[name][step], rtol=0, atol=5e-8)


@pytest.mark.parametrize("name", ["adagrad", "rmsprop"])
def test_eps_placement_matters_for_these_fixtures(name: str) -> None:
    # torch's placement (sqrt(s) + eps) misses the reference, so the test above can fail: the
    # first gradients (~1e-4) make s comparable to eps.
    data = fixture("optimizers")
    spec, _ = OPTIMIZERS[name]
    p = data["p0"].clone().requires_grad_()
    optimizer = make_optimizer([p], dict(spec) | {"eps_in_sqrt": False})
    p.grad = data["grads"][0].clone()
    optimizer.step()
    assert not torch.allclose(p.detach(), data[name][0], rtol=0, atol=5e-8)


# The fixtures' settings (README.md): the presets with the code's manual lr / betas.
TRAINING = {
    "hard_ash_adagrad": ("hard-ash-adagrad", ["network.activation.z_k=1.0"], None),
    "hard_ash_rmsprop": ("hard-ash-adagrad", ["network.activation.z_k=1.0"], "rmsprop"),
    "topk_subtract_adagrad": (
        "topk-adagrad",
        ["network.activation.k=4", "optimizer.lr=2e-4"],
        None,
    ),
    "relu_adam": ("relu-adam", ["optimizer.betas=[0.98,0.9995]", "optimizer.lr=1e-5"], None),
}


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_five_training_steps_match_the_reference(name: str) -> None:
    """The preset's network and optimiser, 16 hidden units, one batch of 8 per task."""
    agent, overrides, optimizer_level = TRAINING[name]
    cfg = agent_config(agent, "network.hidden_sizes=[16]", *overrides)
    if optimizer_level is not None:
        cfg.optimizer = grid_config("optimizer", optimizer_level)["optimizer"]
    init, final = fixture("training_init"), fixture(f"training_{name}")
    model = build_network(cfg, (784,), 10)
    first, output = model.hidden[0], model.output
    with torch.no_grad():
        layer_parameter(first).copy_(init["w1"])
        output.weight.copy_(init["w2"])
    optimizer = make_optimizer(model, cfg.optimizer)
    # The reference's preprocessing: x / 255, then (x - 0.1307) / 0.3081.
    images = (init["images"].float() / 255.0 - 0.1307) / 0.3081
    for x, y in zip(images, init["labels"], strict=True):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    w1, w2 = layer_parameter(first).detach(), output.weight.detach()
    assert (w1 - init["w1"]).abs().max() > 1e-5  # the weights moved
    # Five steps of size <= 2e-4 (lr 1e-5 for Adam) on weights ~0.05-0.4: float32 rounding of
    # forward, backward and update stays within 1e-7 of the updates.
    torch.testing.assert_close(w1, final["w1"], rtol=0, atol=1e-7)
    torch.testing.assert_close(w2, final["w2"], rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "name", ["keskinen2024-split-mnist", "keskinen2024-permuted-mnist-plasticity"]
)
def test_experiments_standardise_the_inputs_as_the_reference(name: str) -> None:
    # The reference feeds (x / 255 - 0.1307) / 0.3081: MNIST's training mean and std, which
    # stream.kwargs.normalize=true computes from the training split.
    preset = yaml.safe_load((REPO_ROOT / "experiments" / f"{name}.yaml").read_text())
    assert "stream.kwargs.normalize=true" in preset["set"]
