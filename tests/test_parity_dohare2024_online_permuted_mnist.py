"""Parity with Dohare et al. 2024's own Online Permuted MNIST code (shibhansh/loss-of-plasticity).

The fixtures in ``tests/fixtures/parity/dohare2024_online_permuted_mnist/`` are numbers that the
authors' code produced (see the README there): rank metrics and dead units of fixed activation
matrices, the input pipeline on a few images, init statistics of their ``DeepFFNN`` and one SGD
step of their ``Backprop`` learner. The tests compare the project's own functions with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.metrics import approximate_rank, dead_fraction, effective_rank, srank
from plasticity_rl.nn import hidden_layers
from plasticity_rl.optim import make_optimizer
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.learner import Learner, build_network, seed_everything
from plasticity_rl.supervised.steps import train_step
from plasticity_rl.supervised.streams import ImagePreprocessor

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "dohare2024_online_permuted_mnist"


def fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        return {key: data[key] for key in data.files}


def preset_config(agent: str, **layers: Any) -> SupervisedRunConfig:
    return resolve(
        SupervisedRunConfig,
        {"stream": load_preset("envs", "online-permuted-mnist")},
        load_preset("agents", agent),
        layers,
    )


RANKS = fixture("rank_metrics.npz")
MATRICES = [key for key in sorted(RANKS) if key.startswith("m")]


@pytest.mark.parametrize("index", range(len(MATRICES)))
def test_rank_metrics_match_compute_matrix_rank_summaries(index):
    h = torch.from_numpy(RANKS[MATRICES[index]])
    # their approximate rank: 99% of the squared singular values
    assert approximate_rank(h, 0.99) == RANKS["approximate_rank"][index]
    # their "abs" approximate rank (99% of the singular values) is our srank99
    assert srank(h, 0.99) == RANKS["abs_approximate_rank"][index]
    # Roy & Vetterli's effective rank; theirs from float32 singular values (scipy gesvd)
    assert effective_rank(h) == pytest.approx(float(RANKS["effective_rank"][index]), rel=1e-5)
    # dead units: zero on every probe row (they count them; we report the fraction)
    width = h.shape[1]
    assert round(dead_fraction(h) * width) == RANKS["dead"][index]


def test_their_rank_is_not_a_numerical_rank():
    # Their "rank" counts nonzero float32 singular values: zero and duplicated columns still
    # leave round-off singular values, so it stays near full (why we do not log it).
    m3 = RANKS["m3"]  # 40 columns, the 20 of m0 twice: rank <= 20
    assert np.linalg.matrix_rank(m3.astype(np.float64)) <= 20 < RANKS["rank"][3]


def test_input_pipeline_scales_to_unit_interval_and_permutes_pixels():
    data = fixture("input_pipeline.npz")
    images = torch.from_numpy(data["images"]).unsqueeze(1)  # (N, 1, 28, 28) uint8
    preprocess = ImagePreprocessor(images, normalize=False, flatten=None)
    perm0 = torch.from_numpy(data["perm0"])

    def permute(perm: torch.Tensor):
        return lambda x: x.flatten(1).index_select(1, perm).reshape(x.shape)

    assert torch.equal(preprocess(images, permute(perm0)), torch.from_numpy(data["task0"]))
    # their code permutes the already permuted images: task 1 is x[:, perm0][:, perm1], one
    # permutation perm0[perm1] of the originals (a uniformly random one, like ours)
    composed = perm0[torch.from_numpy(data["perm1"])]
    assert torch.equal(preprocess(images, permute(composed)), torch.from_numpy(data["task1"]))


def test_online_permuted_mnist_preset_is_their_protocol():
    kwargs = load_preset("envs", "online-permuted-mnist")["kwargs"]
    assert kwargs["normalize"] is False  # ToTensor only: pixels / 255
    assert kwargs["first_task_unpermuted"] is False  # task 0 is permuted too
    assert kwargs.get("examples_per_task") is None  # all 60,000 training images per task


def test_bp_init_matches_deep_ffnn_statistics():
    # Their DeepFFNN: kaiming_uniform_(relu) in the hidden layers, kaiming_uniform_(linear)
    # (bound sqrt(3 / fan_in)) in the output layer, zero biases; 10 seeds at width 100.
    ref = fixture("net_init.npz")
    cfg = preset_config("bp", network={"hidden_sizes": [100, 100, 100]})
    stds, maxima = [], []
    for seed in range(10):
        seed_everything(seed)
        net = build_network(cfg, (784,), 10).requires_grad_(False)
        layers = [h.incoming for h in hidden_layers(net)] + [hidden_layers(net)[-1].outgoing]
        assert all(not layer.bias.any() for layer in layers)
        stds.append([float(layer.weight.std()) for layer in layers])
        maxima.append([float(layer.weight.abs().max()) for layer in layers])
    bounds = [
        float(np.sqrt(6 / f)) if i < 3 else float(np.sqrt(3 / f))
        for i, f in enumerate(ref["fan_in"])
    ]
    # std of U(-b, b) is b / sqrt(3); over 10 seeds both agree with it and each other to ~1%
    np.testing.assert_allclose(np.mean(stds, 0), ref["weight_std"].mean(0), rtol=0.02)
    np.testing.assert_allclose(np.mean(maxima, 0), ref["weight_max_abs"].mean(0), rtol=0.01)
    assert np.all(np.max(maxima, 0) <= np.array(bounds) * (1 + 1e-6))


@pytest.mark.parametrize("hand_backprop", [True, False])
@pytest.mark.parametrize("agent, prefix", [("bp", "after"), ("l2", "l2_after")])
def test_one_sgd_step_matches_their_backprop(agent, prefix, hand_backprop):
    data = fixture("sgd_step.npz")
    cfg = preset_config(agent, network={"hidden_sizes": [16, 16, 16]},
                        train={"hand_backprop": hand_backprop})  # fmt: skip
    net = build_network(cfg, (20,), 10)
    layers = [h.incoming for h in hidden_layers(net)] + [hidden_layers(net)[-1].outgoing]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.weight.copy_(torch.from_numpy(data[f"before_{i}_weight"]))
            layer.bias.copy_(torch.from_numpy(data[f"before_{i}_bias"]))
    optimizer = make_optimizer(net, cfg.optimizer)
    learner = Learner([cfg], [], net, optimizer, {})
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"]).long()
    output, loss = train_step(learner, x, y, "cross_entropy")
    learner.run_model(0)  # apply any deferred step
    np.testing.assert_allclose(output.detach().numpy(), data["output"], rtol=1e-6, atol=1e-7)
    assert float(loss.detach()) == pytest.approx(float(data["loss"]), rel=1e-6)
    for i, layer in enumerate(layers):
        for name in ("weight", "bias"):
            np.testing.assert_allclose(
                getattr(layer, name).detach().numpy(), data[f"{prefix}_{i}_{name}"],
                rtol=1e-6, atol=1e-7, err_msg=f"layer {i} {name}",
            )  # fmt: skip
