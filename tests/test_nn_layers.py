"""Init schemes, weight normalisation, Powerpropagation and SDM constraints."""

import math

import pytest
import torch
from torch import nn

from plasticity_rl.nn import (
    NonNegLinear,
    PowerProp,
    SDMLinear,
    UnitNormRows,
    layer_parameter,
    make_linear,
    register_projections,
    sample_weight,
    set_weight,
)
from plasticity_rl.registry import ConfigError


def test_lecun_uniform_bounds_and_zero_bias():
    torch.manual_seed(0)
    layer = make_linear(300, 50, init="lecun_uniform")
    bound = math.sqrt(3 / 300)  # U(+-sqrt(3 / fan_in))
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.95 * bound  # really uses the whole range
    # Var of U(-b, b) = b^2 / 3 = 1 / fan_in
    assert layer.weight.var().item() == pytest.approx(1 / 300, rel=0.05)
    assert torch.all(layer.bias == 0)


def test_init_scale_and_sample_weight_follow_the_scheme():
    torch.manual_seed(0)
    layer = make_linear(400, 64, init="lecun_uniform", init_scale=0.01)
    bound = 0.01 * math.sqrt(3 / 400)
    fresh = sample_weight(layer)
    assert fresh.shape == layer.weight.shape
    assert layer.weight.abs().max() <= bound and fresh.abs().max() <= bound
    assert not torch.equal(fresh, layer.weight)


def test_unknown_init_is_a_config_error():
    with pytest.raises(ConfigError, match=r"layer.init: got 'glorot'.*lecun_uniform"):
        make_linear(3, 3, init="glorot")


def test_weight_norm_rows_have_unit_norm_and_stay_so_after_a_step():
    torch.manual_seed(0)
    layer = make_linear(5, 4, weight_norm=True)
    assert isinstance(layer.parametrizations.weight[0], UnitNormRows)
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(4))
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(torch.randn(8, 5)).pow(2).sum().backward()
    opt.step()
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(4))


def test_centred_weight_norm_rows_have_zero_mean_and_unit_norm():
    torch.manual_seed(0)
    layer = make_linear(5, 4, weight_norm=True, weight_norm_centred=True)
    torch.testing.assert_close(layer.weight.mean(dim=1), torch.zeros(4), atol=1e-7, rtol=0)
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(4))
    with pytest.raises(ConfigError, match="layer.weight_norm_centred: got True"):
        make_linear(5, 4, weight_norm_centred=True)


def test_powerprop_keeps_the_function_of_the_base_layer_at_init():
    torch.manual_seed(0)
    base = make_linear(6, 3, init="kaiming_uniform")
    torch.manual_seed(0)
    power = make_linear(6, 3, init="kaiming_uniform", powerprop_alpha=2.0)
    x = torch.randn(4, 6)
    torch.testing.assert_close(power(x), base(x))
    # the stored parameter is v = sign(w) |w|^(1/alpha)
    v = layer_parameter(power)
    torch.testing.assert_close(v, base.weight.sign() * base.weight.abs().sqrt())


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
def test_powerprop_gradient_is_scaled_by_alpha_abs_v_pow_alpha_minus_one(alpha):
    torch.manual_seed(0)
    plain = nn.Linear(3, 2)
    power = make_linear(3, 2, powerprop_alpha=alpha)
    with torch.no_grad():
        power.parametrizations.weight.original.copy_(PowerProp(alpha).right_inverse(plain.weight))
        power.bias.copy_(plain.bias)
    x = torch.randn(5, 3)
    plain(x).sum().backward()
    power(x).sum().backward()
    v = power.parametrizations.weight.original
    # dL/dv = dL/dw * dw/dv, and dw/dv = alpha |v|^(alpha - 1) for w = v |v|^(alpha - 1)
    expected = plain.weight.grad * alpha * v.detach().abs().pow(alpha - 1)
    torch.testing.assert_close(v.grad, expected)


def test_set_weight_writes_effective_weights_through_powerprop():
    torch.manual_seed(0)
    layer = make_linear(3, 4, powerprop_alpha=3.0)
    before = layer.weight.detach().clone()
    set_weight(layer, torch.tensor([1, 3]), torch.full((2, 3), 0.125), dim=0)
    after = layer.weight.detach()
    torch.testing.assert_close(after[[1, 3]], torch.full((2, 3), 0.125))
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])
    # stored v = 0.125^(1/3) = 0.5
    torch.testing.assert_close(layer_parameter(layer)[1], torch.full((3,), 0.5))
    set_weight(layer, torch.tensor([0]), torch.zeros(4, 1), dim=1)
    assert torch.all(layer.weight[:, 0] == 0)


def test_sdm_layer_normalises_inputs_and_projects_after_each_step():
    torch.manual_seed(0)
    layer = make_linear(4, 3, sdm=True, init="kaiming_uniform")
    assert isinstance(layer, SDMLinear) and layer.bias is None
    assert torch.all(layer.weight >= 0)
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(3))
    x = torch.tensor([[3.0, 0.0, 4.0, 0.0]])
    # input scaled to unit norm: [0.6, 0, 0.8, 0]
    torch.testing.assert_close(layer(x), layer(x * 10))
    torch.testing.assert_close(layer(x)[0], layer.weight @ torch.tensor([0.6, 0.0, 0.8, 0.0]))
    # the input goes through ReLU before it is normalised (Bricken et al.'s code)
    torch.testing.assert_close(layer(torch.tensor([[3.0, -5.0, 4.0, -1.0]])), layer(x))
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    handle = register_projections(layer, opt)
    layer(x).sum().backward()  # a large step that pushes weights negative
    opt.step()
    assert torch.all(layer.weight >= 0)
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(3))
    handle.remove()
    assert not opt._optimizer_step_post_hooks


def test_nonneg_layer_clamps_its_init_and_every_step():
    torch.manual_seed(0)
    raw = make_linear(6, 5).weight.detach()
    torch.manual_seed(0)
    layer = make_linear(6, 5, nonneg=True)
    assert isinstance(layer, NonNegLinear) and not isinstance(layer, SDMLinear)
    # PyTorch's init clamped at 0 (Bricken et al.'s code), not its absolute value
    torch.testing.assert_close(layer.weight, raw.clamp_min(0.0))
    assert torch.all(layer.bias >= 0)
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    register_projections(layer, opt)
    layer(torch.ones(1, 6)).sum().backward()
    opt.step()
    assert torch.all(layer.weight >= 0) and torch.all(layer.bias >= 0)
    assert (layer.weight == 0).any() and (layer.bias == 0).any()


def test_incompatible_layer_options_are_config_errors():
    with pytest.raises(ConfigError, match="layer.sdm"):
        make_linear(3, 3, sdm=True, powerprop_alpha=2.0)
    with pytest.raises(ConfigError, match="layer.weight_norm"):
        make_linear(3, 3, weight_norm=True, powerprop_alpha=2.0)
    with pytest.raises(ConfigError, match=r"layer.powerprop_alpha: got -1.0"):
        make_linear(3, 3, powerprop_alpha=-1.0)
