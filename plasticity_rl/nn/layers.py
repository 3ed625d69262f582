"""Linear layers with a selectable init, and the layer constraints of the seed papers.

Every layer built here is an ``nn.Linear`` (possibly with a ``torch.nn.utils.parametrize``
parametrization of its weight), so interventions and metrics can treat all of them alike:

- init schemes (:data:`INIT_SCHEMES`), remembered on the layer so that an intervention that resets
  a unit (CBP, ReDo) can draw fresh weights from the same distribution (:func:`sample_weight`);
- weight normalisation with a fixed gain, w_i = g v_i / ||v_i|| (Salimans & Kingma 2016; fixed
  g = 1 on the first layer as in Keskinen 2024, Hard ASH);
- Powerpropagation, w = v |v|^(alpha - 1) (Schwarz et al. 2021);
- SDM constraints (Bricken et al. 2023): no bias, unit-L2-norm non-negative weight rows,
  L2-normalised inputs; the weight constraints are a projection applied after every optimiser
  step (:func:`register_projections`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from plasticity_rl.registry import ConfigError, require


def _lecun_uniform_(w: Tensor) -> Tensor:
    bound = math.sqrt(3.0 / w.shape[1])
    return nn.init.uniform_(w, -bound, bound)


def _default_(w: Tensor) -> Tensor:
    # PyTorch's own nn.Linear init: U(+-1/sqrt(fan_in)).
    return nn.init.kaiming_uniform_(w, a=math.sqrt(5))


INIT_SCHEMES: dict[str, Callable[[Tensor], Tensor]] = {
    "default": _default_,
    "lecun_uniform": _lecun_uniform_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "xavier_uniform": nn.init.xavier_uniform_,
    "orthogonal": lambda w: nn.init.orthogonal_(w, gain=math.sqrt(2)),
}
"""Weight init schemes by name. Biases start at zero, except for ``default`` (PyTorch's)."""


def make_linear(
    in_features: int,
    out_features: int,
    *,
    bias: bool = True,
    init: str = "default",
    init_scale: float = 1.0,
    weight_norm: bool = False,
    powerprop_alpha: float | None = None,
    sdm: bool = False,
) -> nn.Linear:
    """Build one linear layer with the given init and constraints.

    Args:
        bias: whether the layer has a bias (SDM layers never do).
        init: a name from :data:`INIT_SCHEMES`.
        init_scale: multiplies the sampled init weights (e.g. 0.01 for a policy output layer).
        weight_norm: fixed-gain weight normalisation, w_i = v_i / ||v_i|| (g = 1).
        powerprop_alpha: Powerpropagation exponent alpha > 0 (alpha = 1 is a plain layer).
        sdm: SDM constraints: no bias, L2-normalised input, unit-norm non-negative rows.
    """
    require(init in INIT_SCHEMES, "layer.init", init, sorted(INIT_SCHEMES))
    require(init_scale > 0, "layer.init_scale", init_scale, "a number > 0")
    require(
        powerprop_alpha is None or powerprop_alpha > 0,
        "layer.powerprop_alpha",
        powerprop_alpha,
        "null or a number > 0 (the paper recommends (1, 3])",
    )
    if sdm and (weight_norm or powerprop_alpha is not None):
        raise ConfigError("layer.sdm", sdm, "sdm=false when weight_norm or powerprop is set")
    if weight_norm and powerprop_alpha is not None:
        raise ConfigError(
            "layer.weight_norm", weight_norm, "false when powerprop_alpha is set (not combinable)"
        )
    layer = (SDMLinear if sdm else nn.Linear)(in_features, out_features, bias=bias and not sdm)
    layer.init_scheme = init  # type: ignore[assignment]
    layer.init_scale = init_scale  # type: ignore[assignment]
    with torch.no_grad():
        layer.weight.copy_(sample_weight(layer))
        if layer.bias is not None and init != "default":
            layer.bias.zero_()
    if weight_norm:
        parametrize.register_parametrization(layer, "weight", UnitNormRows())
    if powerprop_alpha is not None:
        parametrize.register_parametrization(layer, "weight", PowerProp(powerprop_alpha))
    return layer


def sample_weight(layer: nn.Linear) -> Tensor:
    """A fresh effective weight matrix drawn from the layer's init distribution.

    Interventions that reset units copy rows of this into the layer (see :func:`set_weight`).
    """
    w = torch.empty(layer.out_features, layer.in_features, device=layer_parameter(layer).device)
    INIT_SCHEMES[getattr(layer, "init_scheme", "default")](w)
    w.mul_(getattr(layer, "init_scale", 1.0))
    if isinstance(layer, SDMLinear):
        w = SDMLinear.project(w.abs())
    return w


def layer_parameter(layer: nn.Linear) -> nn.Parameter:
    """The trainable tensor behind ``layer.weight`` (the parametrization's original, if any)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def set_weight(layer: nn.Linear, index: Tensor, values: Tensor, dim: int) -> None:
    """Set rows (``dim=0``) or columns (``dim=1``) of the effective weight to ``values``.

    Goes through the parametrization's ``right_inverse``, so Powerprop layers store
    v = sign(w)|w|^(1/alpha). For row-wise parametrizations (weight norm) only row writes are exact.
    """
    with torch.no_grad():
        w = layer.weight.detach().clone()
        w.index_copy_(dim, index, values)
        if parametrize.is_parametrized(layer, "weight"):
            for p in reversed(layer.parametrizations.weight):
                w = p.right_inverse(w)
        layer_parameter(layer).index_copy_(dim, index, w.index_select(dim, index))


class UnitNormRows(nn.Module):
    """Weight norm with fixed gain g = 1: w_i = v_i / ||v_i||_2 (Salimans & Kingma 2016)."""

    def forward(self, v: Tensor) -> Tensor:
        return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w


class PowerProp(nn.Module):
    """Powerpropagation (Schwarz et al. 2021): w = v |v|^(alpha - 1).

    ``right_inverse`` gives v = sign(w) |w|^(1/alpha), so registering it on an initialised layer
    keeps the effective weights (and the function) unchanged. dL/dv = dL/dw * alpha |v|^(alpha-1).
    """

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, v: Tensor) -> Tensor:
        return v * v.abs().pow(self.alpha - 1.0)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w.sign() * w.abs().pow(1.0 / self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SDMLinear(nn.Linear):
    """SDM layer (Bricken et al. 2023): y = W x / ||x||_2, rows of W unit-norm and non-negative.

    The constraint on W is kept by :meth:`project_`, which :func:`register_projections` runs
    after every optimiser step.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(x, dim=-1), self.weight)

    @staticmethod
    def project(w: Tensor) -> Tensor:
        """Clamp to >= 0, then scale each row to unit L2 norm."""
        w = w.clamp_min(0.0)
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def project_(self) -> None:
        with torch.no_grad():
            self.weight.copy_(self.project(self.weight))


def register_projections(model: nn.Module, optimizer: torch.optim.Optimizer) -> RemovableHandle:
    """After every optimiser step, project each constrained layer of ``model`` back (SDM)."""
    layers = [m for m in model.modules() if hasattr(m, "project_")]

    def project_all(*_: object) -> None:
        for layer in layers:
            layer.project_()

    return optimizer.register_step_post_hook(project_all)
