"""Parity with the code of Bricken et al. 2023 ("Sparse Distributed Memory is a Continual
Learner", github.com/TrentBrick/SDMContinualLearner): numbers its functions produced on fixed
inputs (tests/fixtures/parity/bricken2023/README.md) against this project's Top-K, GABA switch,
k annealing, SDM constraints, gradient clipping and input preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plasticity_rl.nn import NonNegLinear, SDMLinear, build_mlp
from plasticity_rl.nn.sparse import TopK, end_epoch
from plasticity_rl.optim import make_optimizer
from plasticity_rl.supervised.streams import ImagePreprocessor

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "bricken2023"


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        return dict(data)


def tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array))


def close(actual: torch.Tensor, expected: np.ndarray, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.detach().float(), tensor(expected).float(), rtol=1e-5,
                               atol=atol)  # fmt: skip


@pytest.mark.parametrize("mode", ["gaba", "subtract", "mask"])
def test_topk_outputs_gradients_and_counters_match_the_reference(mode: str) -> None:
    fx = load("topk.npz")
    k = int(fx["k"])
    gaba_T = float(fx["gaba_T"]) if mode == "gaba" else None
    mask = mode == "mask"
    m = TopK(k=k, mode="mask" if mask else "subtract", gaba_switch_T=gaba_T, relu_input=mask)
    if gaba_T is not None:
        m.gaba_counts = tensor(fx["gaba_counters_before"][0]).long()
    x = tensor(fx["x"]).clone().requires_grad_(True)
    out = m(x)
    (out * tensor(fx["w_out"])).sum().backward()
    rows = np.ones(len(x), dtype=bool)
    if mode == "subtract":
        # The reference ReLUs the input first, so its threshold is max(x_(k), 0); without the
        # threshold's clip at 0 (an option of the plain subtract mode) the rows whose k-th value
        # is negative differ. Row 0 is one (2 positive values, k = 3).
        rows = (x.detach().topk(k, dim=-1).values[:, -1] > 0).numpy()
        assert not rows[0] and rows[1:].all()
    close(out[rows], fx[f"{mode}_out"][rows])
    close(x.grad[rows], fx[f"{mode}_grad"][rows])
    if gaba_T is not None:
        close(m.gaba_counts, fx["gaba_counters_after"][0])


def test_gaba_counters_move_in_training_and_evaluation_forwards_as_the_reference() -> None:
    fx = load("topk.npz")
    m = TopK(k=int(fx["seq_k"]), gaba_switch_T=float(fx["seq_T"]))
    for x, train, out, counts in zip(fx["seq_x"], fx["seq_train"], fx["seq_out"],
                                     fx["seq_counters"], strict=True):  # fmt: skip
        m.train(bool(train))
        with torch.no_grad():
            close(m(tensor(x)), out)
        close(m.gaba_counts, counts)
    assert not fx["seq_train"].all()  # evaluation forwards are part of the sequence


@pytest.mark.parametrize("epochs", [200, 7])
def test_k_annealing_per_epoch_matches_the_reference(epochs: int) -> None:
    expected = load("topk.npz")[f"anneal_k_{epochs}"]
    m = TopK(k=10, mode="mask", k_max=1000, anneal_epochs=epochs)
    ks = []
    for _ in expected:
        ks.append(m.current_k)
        end_epoch(m)
    assert ks == expected.tolist()


def test_input_preprocessing_matches_the_reference() -> None:
    fx = load("preprocess.npz")
    images = tensor(fx["images"])
    ours = ImagePreprocessor(images, normalize=False, flatten=True)(images)
    close(ours, fx["inputs"].reshape(len(images), -1), atol=0.0)


def _train_like_reference(fx: dict[str, np.ndarray], net: torch.nn.Module) -> None:
    """The reference's training_step: SGD lr 0.05 on cross entropy, gradients clipped to norm
    1, then the constraints; one evaluation forward after the third step."""
    optimizer = make_optimizer(net, {"name": "sgd", "lr": 0.05, "grad_clip_norm": 1.0})
    for step, (x, y) in enumerate(zip(fx["xs"], fx["ys"], strict=True)):
        optimizer.zero_grad()
        F.cross_entropy(net(tensor(x)), tensor(y)).backward()
        optimizer.step()
        if step == 2:
            net.eval()
            with torch.no_grad():
                net(tensor(fx["x_eval"]))
            net.train()


def test_sdmlp_init_projection_and_training_steps_match_the_reference() -> None:
    fx = load("steps_sdm.npz")
    net = build_mlp(16, [32], 10, {"name": "topk", "k": 3, "gaba_switch_T": 40}, sdm=True,
                    output_bias=False)  # fmt: skip
    # the init: PyTorch's, clamped at 0, hidden rows scaled to unit norm
    close(SDMLinear.project(tensor(fx["raw_hidden_weight"])), fx["init_hidden_weight"])
    close(NonNegLinear.project(tensor(fx["raw_output_weight"])), fx["init_output_weight"])
    with torch.no_grad():
        net.hidden[0].weight.copy_(tensor(fx["init_hidden_weight"]))
        net.output.weight.copy_(tensor(fx["init_output_weight"]))
    _train_like_reference(fx, net)
    close(net.hidden[0].weight, fx["final_hidden_weight"], atol=1e-5)
    close(net.output.weight, fx["final_output_weight"], atol=1e-5)
    close(net.hidden[1].gaba_counts, fx["final_counters"])
    assert (tensor(fx["final_output_weight"]) == 0).any()  # the output clamp was active


def test_relu_baseline_training_steps_with_gradient_clipping_match_the_reference() -> None:
    fx = load("steps_classic_ffn.npz")
    net = build_mlp(16, [32], 10, "relu")
    with torch.no_grad():
        for layer, name in ((net.hidden[0], "hidden"), (net.output, "output")):
            layer.weight.copy_(tensor(fx[f"init_{name}_weight"]))
            layer.bias.copy_(tensor(fx[f"init_{name}_bias"]))
    _train_like_reference(fx, net)
    for layer, name in ((net.hidden[0], "hidden"), (net.output, "output")):
        close(layer.weight, fx[f"final_{name}_weight"], atol=1e-5)
        close(layer.bias, fx[f"final_{name}_bias"], atol=1e-5)
    np.testing.assert_allclose(fx["grad_norm_after_clip"], 1.0, rtol=1e-5)  # the clip bound
