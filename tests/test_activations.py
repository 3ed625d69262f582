"""Activation registry and the sparse activations (Top-K, ASH, Hard ASH, LWTA), checked by hand."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
import torch
from torch import nn

from plasticity_rl.nn import ACTIVATIONS, build_mlp, hidden_layers, make_activation
from plasticity_rl.nn.activations import CReLU, Fourier, features_per_unit
from plasticity_rl.nn.sparse import ASH, LWTA, HardASH, TopK, end_epoch
from plasticity_rl.registry import ConfigError

# Activations that have required arguments, with the smallest valid ones.
REQUIRED_KWARGS: dict[str, dict[str, Any]] = {"topk": {"k": 1}, "lwta": {"groups": 1}}


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


# ----------------------------------------------------------------------------- registry


def test_sparse_activations_are_registered() -> None:
    for name, cls in {"topk": TopK, "ash": ASH, "hard_ash": HardASH, "lwta": LWTA}.items():
        assert ACTIVATIONS.get(name) is cls


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_every_registered_name_creates_a_module(name: str) -> None:
    module = make_activation({"name": name, **REQUIRED_KWARGS.get(name, {})})
    assert isinstance(module, nn.Module)
    assert module(torch.randn(2, 4)).shape == (2, 4 * features_per_unit(module))


# ----------------------------------------------------------------------------- concatenating


def test_crelu_by_hand() -> None:
    # z = (1.5, -2, 0): [relu(z), relu(-z)] = (1.5, 0, 0, 0, 2, 0)
    h = CReLU()(t(1.5, -2.0, 0.0).view(1, 3))
    assert h.tolist() == [[1.5, 0.0, 0.0, 0.0, 2.0, 0.0]]


def test_fourier_by_hand() -> None:
    # z = (0, pi/2): [sin z, cos z] = (0, 1, 1, 0)
    h = Fourier()(t(0.0, math.pi / 2).view(1, 2))
    assert h[0].tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0], abs=1e-7)
    assert (h[0, :2].square() + h[0, 2:].square()).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("name", ["crelu", "fourier"])
def test_concatenating_activation_doubles_the_next_layer(name: str) -> None:
    net = build_mlp(3, [4, 5], 2, name)
    assert [layer.in_features for layer in (net.hidden[2], net.output)] == [8, 10]
    layers = hidden_layers(net)
    assert [(layer.width, layer.features) for layer in layers] == [(4, 8), (5, 10)]
    assert net(torch.randn(6, 3)).shape == (6, 2)


def test_extra_repr_shows_settings() -> None:
    spec = {"name": "topk", "k": 2, "k_max": 4, "anneal_epochs": 10, "gaba_switch_T": 5}
    assert repr(make_activation(spec)) == (
        "TopK(k=2, mode=subtract, k_max=4, anneal_epochs=10, gaba_switch_T=5)"
    )
    spec = {"name": "topk", "k": 2, "clip_max": 2.0, "threshold_grad": True}
    assert (
        repr(make_activation(spec)) == "TopK(k=2, mode=subtract, clip_max=2, threshold_grad=True)"
    )
    assert repr(make_activation("hard_ash")) == "HardASH(alpha=3, z_k=2.3, x_max=2)"
    assert repr(make_activation("ash")) == "ASH(alpha=3, z_k=2.3)"
    assert repr(make_activation({"name": "lwta", "groups": 4})) == "LWTA(groups=4)"


# ----------------------------------------------------------------------------- Top-K


@pytest.mark.parametrize(
    ("x", "k", "mode", "expected"),
    [
        # x = [3, 1, 2, 0.5]; sorted: 3 > 2 > 1 > 0.5.
        # k = 2 mask: x_(2) = 2, keep x >= 2 -> [3, 0, 2, 0].
        ([3, 1, 2, 0.5], 2, "mask", [3, 0, 2, 0]),
        # k = 2 subtract: x_(2) = 2, relu(x - 2) = [1, 0, 0, 0] (k - 1 = 1 active).
        ([3, 1, 2, 0.5], 2, "subtract", [1, 0, 0, 0]),
        # k = 3 subtract: x_(3) = 1, relu(x - 1) = [2, 0, 1, 0].
        ([3, 1, 2, 0.5], 3, "subtract", [2, 0, 1, 0]),
        # k = 1 subtract: x_(1) = 3, relu(x - 3) = 0 everywhere (no active unit).
        ([3, 1, 2, 0.5], 1, "subtract", [0, 0, 0, 0]),
        # k = 1 mask: x_(1) = 3 -> [3, 0, 0, 0].
        ([3, 1, 2, 0.5], 1, "mask", [3, 0, 0, 0]),
        # k = width subtract: x_(4) = -1 -> relu(x + 1) = [4, 0, 3, 1.5].
        ([3, -1, 2, 0.5], 4, "subtract", [4, 0, 3, 1.5]),
        # k = width mask: x_(4) = -1, everything kept.
        ([3, -1, 2, 0.5], 4, "mask", [3, -1, 2, 0.5]),
        # Ties at x_(k), k = 2, x = [3, 2, 2, 1]: x_(2) = x_(3) = 2.
        # mask keeps every unit equal to x_(2): [3, 2, 2, 0] (3 units).
        ([3, 2, 2, 1], 2, "mask", [3, 2, 2, 0]),
        # subtract: relu(x - 2) = [1, 0, 0, 0] (tied units sit at the threshold -> 0).
        ([3, 2, 2, 1], 2, "subtract", [1, 0, 0, 0]),
        # Tie for the top, k = 1, x = [3, 3, 1, 0]: mask keeps both 3s;
        # subtract: x_(1) = 3, relu(x - 3) = all zeros.
        ([3, 3, 1, 0], 1, "mask", [3, 3, 0, 0]),
        ([3, 3, 1, 0], 1, "subtract", [0, 0, 0, 0]),
    ],
)
def test_topk_hand_computed(x: list[float], k: int, mode: str, expected: list[float]) -> None:
    out = make_activation({"name": "topk", "k": k, "mode": mode})(t(*x))
    torch.testing.assert_close(out, t(*expected))


@pytest.mark.parametrize(("mode", "grad"), [("subtract", [1, 0, 1, 0]), ("mask", [1, 1, 1, 0])])
def test_topk_gradient_skips_the_threshold(mode: str, grad: list[float]) -> None:
    # x = [3, 1, 2, 0.5], k = 3: subtract relu(x - x_(3)) has active units 0 and 2, mask keeps
    # units 0, 1 and 2. A threshold x_(3) = x[1] that carried gradient would give x.grad[1] = -2.
    x = t(3, 1, 2, 0.5).requires_grad_()
    TopK(k=3, mode=mode)(x).sum().backward()
    torch.testing.assert_close(x.grad, t(*grad))


@pytest.mark.parametrize(
    ("clip_max", "out", "grad"),
    [
        # k = 3: x_(3) = x[1] = 1, out = [2, 0, 1, 0]; the threshold unit 1 gets -(1 + 1).
        (None, [2, 0, 1, 0], [1, -2, 1, 0]),
        # clip_max 1.5: unit 0 is clipped (no gradient), unit 1 gets -1 from unit 2 alone.
        (1.5, [1.5, 0, 1, 0], [0, -1, 1, 0]),
    ],
)
def test_topk_threshold_grad_and_clip(
    clip_max: float | None, out: list[float], grad: list[float]
) -> None:
    x = t(3, 1, 2, 0.5).requires_grad_()
    y = TopK(k=3, clip_max=clip_max, threshold_grad=True)(x)
    y.sum().backward()
    torch.testing.assert_close(y, t(*out))
    torch.testing.assert_close(x.grad, t(*grad))


@pytest.mark.parametrize(
    ("x", "k", "expected"),
    [
        # k = width: relu(x)_(4) = 0, everything kept: relu(x).
        ([3, -1, 2, 0.5], 4, [3, 0, 2, 0.5]),
        # fewer than k positive values: only those stay, relu(x) = [0, 0, 0.5, 0].
        ([-1, -2, 0.5, -3], 2, [0, 0, 0.5, 0]),
    ],
)
def test_topk_mask_relu_input(x: list[float], k: int, expected: list[float]) -> None:
    out = TopK(k=k, mode="mask", relu_input=True)(t(*x))
    torch.testing.assert_close(out, t(*expected))


def test_topk_mask_gradient_skips_negative_inputs() -> None:
    # k = 3 of [2, -1, 1] with relu_input (Bricken et al.): ReLU first, so unit 1 outputs 0
    # and gets no gradient.
    x = t(2, -1, 1).requires_grad_()
    out = TopK(k=3, mode="mask", relu_input=True)(x)
    out.sum().backward()
    torch.testing.assert_close(out, t(2, 0, 1))
    torch.testing.assert_close(x.grad, t(1, 0, 1))


def test_topk_k_annealing_steps_once_per_epoch_truncated() -> None:
    # k_max = 4 -> k = 1 over 2 epochs: k(e) = int(4 - 3 e / 2): e = 0 -> 4, e = 1 -> 2.5 -> 2
    # (truncated), e >= 2 -> 1. Forward passes (training or evaluation) do not move it.
    m = TopK(k=1, mode="mask", k_max=4, anneal_epochs=2)
    net = nn.Sequential(m)
    x = t(4, 3, 2, 1, 0)
    for _ in range(3):
        torch.testing.assert_close(net(x), t(4, 3, 2, 1, 0))  # k = 4: x_(4) = 1, keep x >= 1
    assert m.current_k == 4
    end_epoch(net)
    torch.testing.assert_close(net(x), t(4, 3, 0, 0, 0))
    assert (m.current_k, int(m.epochs)) == (2, 1)
    for _ in range(3):
        end_epoch(net)
        torch.testing.assert_close(net(x), t(4, 0, 0, 0, 0))
        assert m.current_k == 1


def test_topk_gaba_switch_excitation_to_inhibition() -> None:
    # T = 2, k = 1, one sample x = [3, 1, 2, 0.5]: the threshold is the (k+1)-th value, 2.
    m = TopK(k=1, gaba_switch_T=2)
    x = t(3, 1, 2, 0.5).unsqueeze(0)
    # Forward 1: c = 0 -> g = -1: relu(x + 2) = [5, 3, 4, 2.5], all fire -> c = [1, 1, 1, 1].
    torch.testing.assert_close(m(x), t(5, 3, 4, 2.5).unsqueeze(0))
    assert m.gaba_counts.tolist() == [1, 1, 1, 1]
    # Forward 2: g = -1 + 2 * 1 / 2 = 0 -> relu(x) = [3, 1, 2, 0.5] -> c = [2, 2, 2, 2].
    torch.testing.assert_close(m(x), t(3, 1, 2, 0.5).unsqueeze(0))
    # Forward 3 and later: g = 1 -> relu(x - 2) = [1, 0, 0, 0]: only unit 0 keeps counting.
    for _ in range(2):
        torch.testing.assert_close(m(x), t(1, 0, 0, 0).unsqueeze(0))
    assert m.gaba_counts.tolist() == [4, 2, 2, 2]
    torch.testing.assert_close(m.gaba_gain(), t(1, 1, 1, 1))


def test_topk_gaba_counts_firing_units_in_every_forward() -> None:
    m = TopK(k=1, gaba_switch_T=1)
    m.gaba_counts = torch.tensor([1, 1, 1, 1])  # g = 1: plain Top-K with the 2nd value
    # Units firing per sample: unit 0, unit 0, unit 3 -> c += [2, 0, 0, 1], in training mode
    # and in evaluation mode alike.
    x = torch.tensor([[3, 1, 2, 0.5], [3, 1, 2, 0.5], [0, 1, 2, 3]])
    m(x)
    assert m.gaba_counts.tolist() == [3, 1, 1, 2]
    m.eval()
    with torch.no_grad():
        m(x)
    assert m.gaba_counts.tolist() == [5, 1, 1, 3]


def test_topk_gaba_relus_the_input_first() -> None:
    # x = [3, -1, 2, 0.5], k = 1, g = -1: relu(relu(x) + 2) = [5, 2, 4, 2.5]; unit 1 gets no
    # gradient (relu'(-1) = 0) and the threshold none: x.grad = [1, 0, 1, 1].
    x = t(3, -1, 2, 0.5).requires_grad_()
    out = TopK(k=1, gaba_switch_T=2)(x)
    out.sum().backward()
    torch.testing.assert_close(out, t(5, 2, 4, 2.5))
    torch.testing.assert_close(x.grad, t(1, 0, 1, 1))


@pytest.mark.parametrize("width", [None, 4])
def test_topk_state_dict_round_trip_restores_counters(width: int | None) -> None:
    kwargs: dict[str, Any] = {"k": 1, "k_max": 3, "anneal_epochs": 4, "gaba_switch_T": 3}
    trained = TopK(**kwargs)
    x = torch.tensor([[3, 1, 2, 0.5], [0, 1, 2, 3]])
    for _ in range(3):
        trained(x)
        trained.end_epoch()
    state = trained.state_dict()
    assert set(state) == {"epochs", "gaba_counts"}
    restored = TopK(**kwargs, width=width)
    restored.load_state_dict(state)
    assert int(restored.epochs) == 3 and restored.current_k == trained.current_k
    assert restored.gaba_counts.tolist() == trained.gaba_counts.tolist()
    clone = copy.deepcopy(trained)
    outputs = [module(x) for module in (trained, restored, clone)]  # each from the same state
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(outputs[2], outputs[0])


# ----------------------------------------------------------------------------- ASH, Hard ASH


@pytest.mark.parametrize(
    ("x", "alpha", "z_k", "expected"),
    [
        # x = [1, 1, 3, 3]: mu = 2, population std = sqrt(mean((x - 2)^2)) = 1
        # (the sample std would be sqrt(4 / 3)). alpha = 3, z_k = 0.5:
        # u = 3 (x - 2.5) = [-4.5, -4.5, 1.5, 1.5]; ASH = x sigmoid(u).
        ([1, 1, 3, 3], 3.0, 0.5, [sigmoid(-4.5)] * 2 + [3 * sigmoid(1.5)] * 2),
        # x = [0, 0, 4, 4]: mu = 2, std = 2. alpha = 1, z_k = 0.25: u = x - 2.5 = [-2.5, 1.5].
        ([0, 0, 4, 4], 1.0, 0.25, [0, 0, 4 * sigmoid(1.5), 4 * sigmoid(1.5)]),
    ],
)
def test_ash_hand_computed(x: list[float], alpha: float, z_k: float, expected: list[float]) -> None:
    out = make_activation({"name": "ash", "alpha": alpha, "z_k": z_k})(t(*x))
    torch.testing.assert_close(out, t(*expected))


@pytest.mark.parametrize(
    ("x", "alpha", "z_k", "expected"),
    [
        # x = [1, 1, 3, 3]: mu = 2, std = 1. alpha = 1, z_k = 0.5: u = x - 2.5 = [-1.5, 0.5];
        # hard_sigmoid = (u + 3) / 6 = [0.25, 3.5 / 6]; clip(x, 0, 2) = [1, 2]
        # -> [0.25, 0.25, 7 / 6, 7 / 6].
        ([1, 1, 3, 3], 1.0, 0.5, [0.25, 0.25, 7 / 6, 7 / 6]),
        # alpha = 3: u = [-4.5, 1.5]; hard_sigmoid = [0 (clipped), 4.5 / 6] -> [0, 0, 1.5, 1.5].
        ([1, 1, 3, 3], 3.0, 0.5, [0, 0, 1.5, 1.5]),
        # x = [-1, -1, 1, 1]: mu = 0, std = 1. alpha = 1, z_k = 0: u = x;
        # hard_sigmoid = [2 / 6, 4 / 6]; clip(x, 0, 2) = [0, 1] -> [0, 0, 2 / 3, 2 / 3].
        ([-1, -1, 1, 1], 1.0, 0.0, [0, 0, 2 / 3, 2 / 3]),
        # x = [0, 0, 4, 4]: mu = 2, std = 2. alpha = 1, z_k = 0: u = x - 2 = [-2, 2];
        # hard_sigmoid = [1 / 6, 5 / 6]; clip(x, 0, 2) = [0, 2] (x_max) -> [0, 0, 5 / 3, 5 / 3].
        ([0, 0, 4, 4], 1.0, 0.0, [0, 0, 5 / 3, 5 / 3]),
    ],
)
def test_hard_ash_hand_computed(
    x: list[float], alpha: float, z_k: float, expected: list[float]
) -> None:
    out = make_activation({"name": "hard_ash", "alpha": alpha, "z_k": z_k, "x_max": 2.0})(t(*x))
    torch.testing.assert_close(out, t(*expected))


@pytest.mark.parametrize("name", ["ash", "hard_ash"])
def test_ash_gradient_is_finite_for_constant_input(name: str) -> None:
    # sigma = 0 for a constant sample; the std must not turn the gradient into NaN.
    x = torch.full((2, 4), 1.5, requires_grad=True)
    make_activation(name)(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- LWTA


@pytest.mark.parametrize(
    ("x", "expected", "grad"),
    [
        # groups [1, 4, 2] and [3, 5, 0]: winners 4 and 5.
        ([1, 4, 2, 3, 5, 0], [0, 4, 0, 0, 5, 0], [0, 1, 0, 0, 1, 0]),
        # Tie [2, 2, 2]: the first wins; group [-3, -1, -2]: -1 passes unchanged (no relu).
        ([2, 2, 2, -3, -1, -2], [2, 0, 0, 0, -1, 0], [1, 0, 0, 0, 1, 0]),
    ],
)
def test_lwta_two_groups(x: list[float], expected: list[float], grad: list[float]) -> None:
    xs = t(*x).requires_grad_()
    out = make_activation({"name": "lwta", "groups": 2})(xs)
    torch.testing.assert_close(out, t(*expected))
    out.sum().backward()
    torch.testing.assert_close(xs.grad, t(*grad))


# ----------------------------------------------------------------------------- any batch shape


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "topk", "k": 2, "mode": "mask"},
        {"name": "topk", "k": 2},
        {"name": "topk", "k": 2, "gaba_switch_T": 3, "width": 6},
        {"name": "ash"},
        {"name": "hard_ash", "z_k": 0.5},
        {"name": "lwta", "groups": 3},
    ],
)
def test_batch_shape_independence(spec: dict[str, Any]) -> None:
    template = make_activation(spec).eval()

    def module(x: torch.Tensor) -> torch.Tensor:  # a fresh copy: the GABA counters move
        return copy.deepcopy(template)(x)

    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0))
    out = module(x)
    assert out.shape == x.shape
    per_sample = torch.stack([module(sample) for sample in x.reshape(-1, 6)]).reshape(x.shape)
    torch.testing.assert_close(out, per_sample)
    torch.testing.assert_close(module(x.reshape(-1, 6)), out.reshape(-1, 6))


# ----------------------------------------------------------------------------- config errors


def test_unknown_activation_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="'nope'") as err:
        make_activation("nope")
    for name in ("relu", "tanh", "topk", "ash", "hard_ash", "lwta"):
        assert name in str(err.value)


def test_unknown_kwarg_is_named() -> None:
    with pytest.raises(ConfigError, match="'kk'"):
        make_activation({"name": "topk", "k": 2, "kk": 3})


@pytest.mark.parametrize(
    ("spec", "key", "value"),
    [
        ({"name": "topk", "k": 0}, "topk.k", 0),
        ({"name": "topk", "k": 2.5}, "topk.k", 2.5),
        ({"name": "topk", "k": 2, "mode": "foo"}, "topk.mode", "foo"),
        ({"name": "topk", "k": 2, "mode": "mask", "gaba_switch_T": 2}, "topk.mode", "mask"),
        ({"name": "topk", "k": 2, "gaba_switch_T": 0}, "topk.gaba_switch_T", 0),
        ({"name": "topk", "k": 2, "k_max": 1, "anneal_epochs": 5}, "topk.k_max", 1),
        ({"name": "topk", "k": 2, "k_max": 4}, "topk.anneal_epochs", 0),
        ({"name": "topk", "k": 2, "anneal_epochs": 5}, "topk.anneal_epochs", 5),
        ({"name": "topk", "k": 4, "width": 3}, "topk.width", 3),
        ({"name": "topk", "k": 2, "clip_max": 0.0}, "topk.clip_max", 0.0),
        ({"name": "topk", "k": 2, "threshold_grad": 1}, "topk.threshold_grad", 1),
        ({"name": "topk", "k": 2, "mode": "mask", "clip_max": 2.0}, "topk.mode", "mask"),
        ({"name": "lwta", "groups": 0}, "lwta.groups", 0),
        ({"name": "ash", "alpha": 0.0}, "ash.alpha", 0.0),
        ({"name": "hard_ash", "x_max": -1.0}, "hard_ash.x_max", -1.0),
    ],
)
def test_bad_values_name_key_and_value(spec: dict[str, Any], key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{key}: got {value!r}; allowed: ")):
        make_activation(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"name": "topk", "k": 5},
            "topk.k: got 5; allowed: an integer >= 1 and <= layer width (4)",
        ),
        ({"name": "topk", "k": 1, "k_max": 6, "anneal_epochs": 2}, "topk.k_max: got 6"),
        ({"name": "topk", "k": 1, "width": 5}, "topk.width: got 5; allowed: the layer width (4)"),
        (
            {"name": "lwta", "groups": 3},
            "lwta.groups: got 3; allowed: a divisor of the layer width (4)",
        ),
    ],
)
def test_width_errors_at_forward(spec: dict[str, Any], message: str) -> None:
    module = make_activation(spec)
    with pytest.raises(ConfigError, match=re.escape(message)):
        module(torch.zeros(2, 4))


def test_gaba_counters_reject_a_new_width() -> None:
    m = TopK(k=1, gaba_switch_T=2)
    m(torch.zeros(4))
    with pytest.raises(ConfigError, match=re.escape("topk.width: got 4")):
        m(torch.zeros(5))
