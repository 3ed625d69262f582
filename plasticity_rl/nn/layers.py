"""Linear layers with a selectable init, and the layer constraints of the seed papers.

Every layer built here is an ``nn.Linear`` (possibly with a ``torch.nn.utils.parametrize``
parametrization of its weight), so interventions and metrics can treat all of them alike:

- init schemes (:data:`INIT_SCHEMES`), remembered on the layer so that an intervention that resets
  a unit (CBP, ReDo) can draw fresh weights from the same distribution (:func:`sample_weight`);
- weight normalisation with a fixed gain, w_i = g v_i / ||v_i|| (Salimans & Kingma 2016; fixed
  g = 1 on the first layer as in Keskinen 2024, Hard ASH, whose code also centres each row);
- Powerpropagation, w = v |v|^(alpha - 1) (Schwarz et al. 2021);
- SDM constraints (Bricken et al. 2023): no bias, unit-L2-norm non-negative weight rows,
  ReLU'd then L2-normalised inputs, and a non-negative output layer; the weight constraints are
  a projection applied after every optimiser step (:func:`register_projections`).
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from plasticity_rl.registry import ConfigError, require


def _lecun_uniform_(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    bound = math.sqrt(3.0 / w[0].numel())  # fan_in: a row's inputs (a conv kernel's C*kh*kw)
    return nn.init.uniform_(w, -bound, bound, generator=generator)


def _default_(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    # PyTorch's own nn.Linear init: U(+-1/sqrt(fan_in)).
    return nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)


InitScheme = Callable[..., Tensor]
"""``init_(w, generator=None)``: fill a weight in place (``None``: torch's global RNG): a 2-D
linear weight, or a conv weight ``(out, in, kh, kw)`` with torch's fans for convs."""

INIT_SCHEMES: dict[str, InitScheme] = {
    "default": _default_,
    "lecun_uniform": _lecun_uniform_,
    "kaiming_uniform": partial(nn.init.kaiming_uniform_, nonlinearity="relu"),
    "kaiming_normal": partial(nn.init.kaiming_normal_, nonlinearity="relu"),
    "xavier_uniform": nn.init.xavier_uniform_,
    "orthogonal": partial(nn.init.orthogonal_, gain=math.sqrt(2)),
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
    weight_norm_centred: bool = False,
    powerprop_alpha: float | None = None,
    sdm: bool = False,
    nonneg: bool = False,
) -> nn.Linear:
    """Build one linear layer with the given init and constraints.

    Args:
        bias: whether the layer has a bias (SDM layers never do).
        init: a name from :data:`INIT_SCHEMES`.
        init_scale: multiplies the sampled init weights (e.g. 0.01 for a policy output layer).
        weight_norm: fixed-gain weight normalisation, w_i = v_i / ||v_i|| (g = 1).
        weight_norm_centred: with ``weight_norm``, centre each row first (:class:`UnitNormRows`).
        powerprop_alpha: Powerpropagation exponent alpha > 0 (alpha = 1 is a plain layer).
        sdm: SDM constraints: no bias, ReLU'd and L2-normalised input, unit-norm non-negative
            rows (:class:`SDMLinear`).
        nonneg: weights (and bias) clamped to >= 0 (:class:`NonNegLinear`; the output layer of
            an SDM network).
    """
    require(init in INIT_SCHEMES, "layer.init", init, sorted(INIT_SCHEMES))
    require(init_scale > 0, "layer.init_scale", init_scale, "a number > 0")
    require(
        powerprop_alpha is None or powerprop_alpha > 0,
        "layer.powerprop_alpha",
        powerprop_alpha,
        "null or a number > 0 (the paper recommends (1, 3])",
    )
    require(
        weight_norm or not weight_norm_centred,
        "layer.weight_norm_centred",
        weight_norm_centred,
        "false unless weight_norm is set",
    )
    if (sdm or nonneg) and (weight_norm or powerprop_alpha is not None):
        raise ConfigError("layer.sdm", True, "sdm=false when weight_norm or powerprop is set")
    if weight_norm and powerprop_alpha is not None:
        raise ConfigError(
            "layer.weight_norm", weight_norm, "false when powerprop_alpha is set (not combinable)"
        )
    kind = SDMLinear if sdm else NonNegLinear if nonneg else nn.Linear
    layer = kind(in_features, out_features, bias=bias and not sdm)
    layer.init_scheme = init  # type: ignore[assignment]
    layer.init_scale = init_scale  # type: ignore[assignment]
    with torch.no_grad():
        layer.weight.copy_(sample_weight(layer))
        if layer.bias is not None and init != "default":
            layer.bias.zero_()
        if isinstance(layer, NonNegLinear) and layer.bias is not None:
            layer.bias.clamp_(min=0.0)
    if weight_norm:
        parametrize.register_parametrization(layer, "weight", UnitNormRows(weight_norm_centred))
    if powerprop_alpha is not None:
        parametrize.register_parametrization(layer, "weight", PowerProp(powerprop_alpha))
    return layer


_UNIFORM_BOUNDS: dict[str, Callable[[int, int], float]] = {
    "default": lambda fan_in, fan_out: 1.0 / math.sqrt(fan_in),
    "lecun_uniform": lambda fan_in, fan_out: math.sqrt(3.0 / fan_in),
    "kaiming_uniform": lambda fan_in, fan_out: math.sqrt(6.0 / fan_in),
    "xavier_uniform": lambda fan_in, fan_out: math.sqrt(6.0 / (fan_in + fan_out)),
}
"""b(fan_in, fan_out) of the init schemes that draw weights from U(-b, b)."""


def fans(layer: nn.Linear | nn.Conv2d) -> tuple[int, int]:
    """(fan_in, fan_out) of one run's weight, as torch's init functions count them: a linear
    layer's inputs and outputs; a conv's (in_channels / groups) kh kw and out_channels kh kw."""
    if isinstance(layer, nn.Conv2d):
        kernel = math.prod(layer.kernel_size)
        return layer.in_channels // layer.groups * kernel, layer.out_channels * kernel
    return layer.in_features, layer.out_features


def weight_shape(layer: nn.Linear | nn.Conv2d) -> tuple[int, ...]:
    """The shape of one run's weight: ``(out, in)``, or a conv's ``(out, in / groups, kh, kw)``."""
    if isinstance(layer, nn.Conv2d):
        return (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
    return layer.out_features, layer.in_features


def init_bound(layer: nn.Linear | nn.Conv2d) -> float | None:
    """b of the layer's uniform init distribution U(-b, b), times its ``init_scale``; None
    for a scheme that is not uniform (``kaiming_normal``, ``orthogonal``).

    ``default`` (PyTorch's kaiming_uniform_ with a = sqrt(5)): 1 / sqrt(fan_in);
    ``lecun_uniform``: sqrt(3 / fan_in); ``kaiming_uniform`` (ReLU gain): sqrt(6 / fan_in);
    ``xavier_uniform``: sqrt(6 / (fan_in + fan_out)).
    """
    bound = _UNIFORM_BOUNDS.get(getattr(layer, "init_scheme", "default"))
    if bound is None:
        return None
    return bound(*fans(layer)) * getattr(layer, "init_scale", 1.0)


def sample_weight(layer: nn.Linear | nn.Conv2d, runs: Tensor | None = None) -> Tensor:
    """A fresh effective weight matrix drawn from the layer's init distribution.

    Interventions that reset units copy rows of this into the layer (see :func:`set_weight`).
    For a :class:`BatchedLinear` the result is ``(S, out, in)``: run s is drawn exactly as a
    single layer would draw it, from the run's own generator (:func:`run_generators`); with
    ``runs`` (bool, ``(S,)``) only those runs are drawn and the others are left at zero.
    """
    weight = torch.zeros(*run_shape(layer), *weight_shape(layer), device=draw_device(layer))
    init = INIT_SCHEMES[getattr(layer, "init_scheme", "default")]
    wanted = [True] * len(run_generators(layer)) if runs is None else runs.tolist()
    scale = getattr(layer, "init_scale", 1.0)
    for w, generator, draw in zip(with_run_dim(weight, layer), run_generators(layer), wanted,
                                  strict=True):  # fmt: skip
        if draw:
            init(w, generator=generator).mul_(scale)
    if isinstance(layer, NonNegLinear):
        weight = layer.project(weight)
    return weight.to(layer_parameter(layer).device)


def sample_bias(layer: nn.Linear | nn.Conv2d) -> Tensor:
    """A fresh bias as :func:`make_linear` gives a new layer: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (PyTorch's ``nn.Linear`` init) for the ``default`` scheme, zero for every other scheme,
    clamped to >= 0 for a :class:`NonNegLinear`. ``(S, out)`` for a :class:`BatchedLinear`,
    each run drawn from its own generator (:func:`run_generators`)."""
    bias = torch.zeros(*run_shape(layer), weight_shape(layer)[0], device=draw_device(layer))
    if getattr(layer, "init_scheme", "default") == "default":
        bound = 1.0 / math.sqrt(fans(layer)[0])
        for b, generator in zip(with_run_dim(bias, layer), run_generators(layer), strict=True):
            b.uniform_(-bound, bound, generator=generator)
    bias = bias.clamp_min(0.0) if isinstance(layer, NonNegLinear) else bias
    return bias.to(layer_parameter(layer).device)


def sample_normal(layer: nn.Linear, like: Tensor) -> Tensor:
    """N(0, 1) noise shaped like ``like`` (a tensor of ``layer``, with the layer's run dims).

    Each run draws from its own generator (:func:`run_generators`; torch's global RNG for a
    plain layer, where this equals ``torch.randn_like(like)``).
    """
    noise = torch.empty_like(like, device=draw_device(layer))
    normal_per_run_(with_run_dim(noise, layer), run_generators(layer))
    return noise.to(like.device)


def normal_per_run_(tensor: Tensor, generators: Sequence[torch.Generator | None]) -> Tensor:
    """Fill ``tensor`` ``(S, ...)`` with N(0, 1) in place, run s's slice from ``generators[s]``
    (None: torch's global generator); returns ``tensor``."""
    for run, generator in zip(tensor, generators, strict=True):
        run.normal_(generator=generator)
    return tensor


def per_run(values: Tensor, like: Tensor) -> Tensor:
    """One value per run, ``(S,)``, viewed ``(S, 1, ..., 1)`` to broadcast against a tensor
    ``like`` of shape ``(S, ...)``."""
    return values.view(-1, *[1] * (like.dim() - 1))


def draw_device(layer: nn.Module) -> torch.device:
    """Where ``layer``'s random draws are made: its own device with torch's global generator
    (a plain layer), the CPU with the runs' own generators (a batched layer: CPU generators,
    so a batched run draws what its single run draws on any device; moved afterwards)."""
    if run_generators(layer)[0] is None:
        return layer_parameter(layer).device
    return torch.device("cpu")


def layer_parameter(layer: nn.Linear) -> nn.Parameter:
    """The trainable tensor behind ``layer.weight`` (the parametrization's original, if any)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


_PENDING_UPDATES: weakref.WeakKeyDictionary[nn.Module, weakref.WeakMethod] = (
    weakref.WeakKeyDictionary()
)


def keep_updates_pending(layer: nn.Linear, apply: Callable[[], None]) -> None:
    """Declare that steps of ``layer``'s weight are kept aside until the bound method
    ``apply()`` writes them into it (the hand-written backward's deferred input-layer steps,
    :mod:`plasticity_rl.nn.backprop`). :func:`set_weight` applies them before it writes, so
    unit resets see and replace the weight the network computes with. Only a weak reference
    to ``apply`` is kept."""
    _PENDING_UPDATES[layer] = weakref.WeakMethod(apply)  # type: ignore[arg-type]


def apply_pending_updates(layer: nn.Module) -> None:
    """Write the steps kept aside for ``layer`` (:func:`keep_updates_pending`) into its weight."""
    reference = _PENDING_UPDATES.get(layer)
    apply = None if reference is None else reference()
    if apply is not None:
        apply()


def stored_weight(layer: nn.Linear, weight: Tensor) -> Tensor:
    """What ``layer`` stores for the effective weight ``weight``: the parametrizations'
    ``right_inverse`` in reverse order (Powerprop: v = sign(w)|w|^(1/alpha)); ``weight`` itself
    for a plain layer."""
    if parametrize.is_parametrized(layer, "weight"):
        for p in reversed(layer.parametrizations.weight):
            weight = p.right_inverse(weight)
    return weight


def set_weight(layer: nn.Linear, index: Tensor, values: Tensor, dim: int) -> None:
    """Set rows (``dim=0``) or columns (``dim=1``) of the effective weight to ``values``.

    ``index`` is either a 1-D long tensor of rows/columns of a plain layer, with ``values``
    holding just those rows/columns, or a bool unit mask (:func:`unit_selector`) shaped
    ``(*run_dims, n)`` -- ``(n,)`` for a plain layer, ``(S, n)`` for a :class:`BatchedLinear` --
    with ``values`` shaped like the effective weight, of which the masked rows/columns are
    written. Other entries keep their exact values.

    Goes through the parametrization's ``right_inverse``, so Powerprop layers store
    v = sign(w)|w|^(1/alpha). For row-wise parametrizations (weight norm) only row writes are exact.
    Steps kept pending for the layer (:func:`keep_updates_pending`) are applied first.
    """
    apply_pending_updates(layer)
    with torch.no_grad():
        current = layer.weight.detach()
        if index.dtype != torch.bool:
            if isinstance(layer, BatchedLinear):
                raise ValueError("set_weight: a BatchedLinear takes a bool (runs, units) mask")
            values = current.index_copy(dim, index, values)
            index = torch.zeros(current.shape[dim], dtype=torch.bool,
                                device=current.device).index_fill_(0, index, True)  # fmt: skip
        if not parametrize.is_parametrized(layer, "weight"):  # write just the selected units
            param = layer.weight.detach()
            for s in index.any(-1).nonzero().squeeze(1).tolist() if index.dim() > 1 else [None]:
                target, source = (param, values) if s is None else (param[s], values[s])
                units = (index if s is None else index[s]).nonzero().squeeze(1)
                target.index_copy_(dim, units, source.index_select(dim, units))
            return
        select = unit_selector(index, current.dim(), dim)
        # Only the runs with a selected unit are read and written (all of a plain layer).
        runs = index.any(-1).nonzero().squeeze(1) if index.dim() > 1 else slice(None)
        select = select[runs]
        w = stored_weight(layer, torch.where(select, values[runs], current[runs]))
        param = layer_parameter(layer)
        param[runs] = torch.where(select, w, param[runs])


def unit_selector(mask: Tensor, ndim: int, dim: int) -> Tensor:
    """A unit mask viewed so that it broadcasts against a tensor of a layer.

    ``mask`` is bool ``(*run_dims, n)``: no run dims for a plain layer, ``(S,)`` for a
    :class:`BatchedLinear`, where ``mask[s, j]`` selects unit j of run s. The tensor has the same
    run dims followed by ``ndim - len(run_dims)`` per-run dims, of which dim ``dim`` has size n
    (0: rows of a weight or entries of a bias, 1: columns of a weight).

    Example: a ``(S, n)`` mask against a ``(S, out, n)`` weight with ``dim=1`` is ``(S, 1, n)``.
    """
    run_dims = mask.dim() - 1
    shape = [*mask.shape[:-1]] + [1] * (ndim - run_dims)
    shape[run_dims + dim] = mask.shape[-1]
    return mask.view(shape)


def run_shape(layer: nn.Module) -> tuple[int, ...]:
    """The layer's run dims: ``(S,)`` for a :class:`BatchedLinear`, ``()`` for a plain layer."""
    return (layer.runs,) if isinstance(layer, BatchedLinear) else ()


def with_run_dim(tensor: Tensor, layer: nn.Module) -> Tensor:
    """``tensor`` of ``layer`` with a leading run dim: itself if batched, else a (1, ...) view.

    In-place changes to the view change ``tensor``, so code written for ``(S, ...)`` tensors
    serves plain layers as S = 1.
    """
    return tensor if isinstance(layer, BatchedLinear) else tensor.unsqueeze(0)


def run_generators(layer: nn.Module) -> list[torch.Generator | None]:
    """The random generator of each run: the layer's own for a :class:`BatchedLinear`,
    ``[None]`` (torch's global RNG) for a plain layer."""
    return layer.generators if isinstance(layer, BatchedLinear) else [None]


class BatchedLinear(nn.Linear):
    """S independent linear layers of one shape, stacked: run s computes x_s W_s^T + b_s.

    ``weight`` is ``(S, out, in)`` and ``bias`` ``(S, out)``; the input is ``(S, B, in)`` and
    the output ``(S, B, out)`` (one ``torch.baddbmm``). It is an ``nn.Linear`` with a leading run
    dim on its tensors, so everything that finds linear layers (``hidden_layers``, Shrink and
    Perturb, the weight metrics) finds it: unit j of run s is ``weight[s, j, :]`` and
    ``bias[s, j]``, and column ``weight[s, :, j]`` of the next layer. Build one from S plain
    layers with :meth:`stack`.

    Randomness: run s draws its fresh init weights and noise (:func:`sample_weight`,
    :func:`sample_normal`) from ``generators[s]``, so it draws what the plain layer would draw
    from the global RNG in a single run seeded the same way.
    """

    def __init__(self, runs: int, in_features: int, out_features: int, bias: bool = True,
                 generators: Sequence[torch.Generator] | None = None):  # fmt: skip
        nn.Module.__init__(self)
        require(runs >= 1, "runs", runs, "an integer >= 1")
        self.runs, self.in_features, self.out_features = runs, in_features, out_features
        self.weight = nn.Parameter(torch.empty(runs, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(runs, out_features)) if bias else None
        if generators is None:
            seeds = torch.randint(2**62, (runs,)).tolist()
            generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        require(len(generators) == runs, "generators", len(generators), f"{runs} generators")
        self.generators = list(generators)

    @classmethod
    def stack(cls, layers: Sequence[nn.Linear],
              generators: Sequence[torch.Generator]) -> BatchedLinear:  # fmt: skip
        """One batched layer whose run s is ``layers[s]`` (same shape, init and constraints).

        The stored tensors are copied (a parametrized layer keeps its parametrization, e.g.
        Powerprop or weight norm, applied per run); SDM (non-negative) layers are refused.
        """
        first = layers[0]
        if any(isinstance(layer, NonNegLinear) for layer in layers):
            raise ConfigError("network.sdm", True, "false for batched runs")
        batched = cls(len(layers), first.in_features, first.out_features,
                      first.bias is not None, generators)  # fmt: skip
        batched.init_scheme = getattr(first, "init_scheme", "default")  # type: ignore[assignment]
        batched.init_scale = getattr(first, "init_scale", 1.0)  # type: ignore[assignment]
        if parametrize.is_parametrized(first, "weight"):
            for p in first.parametrizations.weight:
                parametrize.register_parametrization(batched, "weight", copy.deepcopy(p),
                                                     unsafe=True)  # fmt: skip
        with torch.no_grad():
            layer_parameter(batched).copy_(torch.stack([layer_parameter(m) for m in layers]))
            if batched.bias is not None:
                batched.bias.copy_(torch.stack([m.bias for m in layers]))
        return batched

    def forward(self, x: Tensor) -> Tensor:
        return self.apply_weights(x, self.weight, self.bias)

    @staticmethod
    def apply_weights(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """x_s W_s^T + b_s for every run s: ``(S, B, in) -> (S, B, out)``.

        With autograd on, the backward is :class:`_BatchedAffine`'s (the weight gradient comes
        out in the weight's own layout, without a transposing copy).
        """
        if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
            return _BatchedAffine.apply(x, weight, bias)
        return BatchedLinear.apply_operands(x, *BatchedLinear.operands(weight, bias))

    @staticmethod
    def operands(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The views :meth:`apply_operands` takes: W^T ``(S, in, out)`` and b ``(S, 1, out)``.

        They are views of ``weight`` and ``bias``, so they can be made once and reused while
        the parameters change in place.
        """
        return weight.transpose(1, 2), None if bias is None else bias.unsqueeze(1)

    @staticmethod
    def apply_operands(x: Tensor, weight_t: Tensor, bias_rows: Tensor | None) -> Tensor:
        """:meth:`apply_weights` on the views of :meth:`operands` (one batched matmul)."""
        if bias_rows is None:
            return torch.bmm(x, weight_t)
        return torch.baddbmm(bias_rows, x, weight_t)

    def extra_repr(self) -> str:
        return (f"runs={self.runs}, in_features={self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")  # fmt: skip


class BatchedLayerNorm(nn.LayerNorm):
    """S independent LayerNorms of one width, stacked: run s computes
    (x_s - mean(x_s)) / sqrt(var(x_s) + eps) * gain_s + bias_s over the last dim.

    ``weight`` (the gain) and ``bias`` are ``(S, n)``; the input is ``(S, B, n)``, normalised
    run by run (S calls of torch's fused kernel, so each run gets exactly the numbers of its
    own ``nn.LayerNorm``). It is an ``nn.LayerNorm`` with a leading run dim on its tensors, so
    hidden-layer discovery finds it as a layer's norm. Build one from S ``nn.LayerNorm`` with
    :meth:`stack`.
    """

    def __init__(self, runs: int, width: int, eps: float = 1e-5, bias: bool = True):
        nn.Module.__init__(self)
        self.runs, self.normalized_shape, self.eps = runs, (width,), eps
        self.elementwise_affine = True
        self.weight = nn.Parameter(torch.ones(runs, width))
        self.bias = nn.Parameter(torch.zeros(runs, width)) if bias else None

    @classmethod
    def stack(cls, norms: Sequence[nn.LayerNorm]) -> BatchedLayerNorm:
        """One batched norm whose run s is ``norms[s]`` (affine, over the last dim only)."""
        first = norms[0]
        if not (first.elementwise_affine and len(first.normalized_shape) == 1):
            raise ConfigError("network", "LayerNorm", "an affine LayerNorm over the last dim "
                              "for batched runs")  # fmt: skip
        batched = cls(len(norms), first.normalized_shape[0], first.eps, first.bias is not None)
        with torch.no_grad():
            batched.weight.copy_(torch.stack([norm.weight for norm in norms]))
            if batched.bias is not None:
                batched.bias.copy_(torch.stack([norm.bias for norm in norms]))
        return batched

    def forward(self, x: Tensor) -> Tensor:
        # run by run, with torch's fused kernel: the numbers of each run's own nn.LayerNorm
        biases = [None] * self.runs if self.bias is None else self.bias
        return torch.stack(
            [
                F.layer_norm(x_s, self.normalized_shape, w_s, b_s, self.eps)
                for x_s, w_s, b_s in zip(x, self.weight, biases, strict=True)
            ]
        )

    def extra_repr(self) -> str:
        return f"runs={self.runs}, width={self.normalized_shape[0]}, eps={self.eps}"


BATCHED_MODULES = (BatchedLinear, BatchedLayerNorm)
"""Modules whose tensors carry a leading run dim."""


class _BatchedAffine(torch.autograd.Function):
    """y_s = x_s W_s^T + b_s with the gradients written out: dW_s = g_s^T x_s, dx_s = g_s W_s,
    db_s = sum_b g_s. Autograd's own backward of ``baddbmm(b, x, W^T)`` makes dW^T and then
    copies it transposed into W's layout, which costs more than the matmul for wide layers."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        return BatchedLinear.apply_operands(x, *BatchedLinear.operands(weight, bias))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        grad_x = torch.bmm(grad, weight) if need_x else None
        grad_weight = torch.bmm(grad.transpose(1, 2), x) if need_weight else None
        grad_bias = grad.sum(1) if need_bias else None
        return grad_x, grad_weight, grad_bias


class UnitNormRows(nn.Module):
    """Weight norm with fixed gain g = 1: w_i = v_i / ||v_i||_2 (Salimans & Kingma 2016).

    With ``centred=True`` each row is first centred, w_i = c_i / ||c_i||_2 with
    c_i = v_i - mean(v_i), as the code of Keskinen 2024 (Hard ASH) does (the gradient flows
    through the mean). Rows are the last dim, so a batched ``(S, out, in)`` weight is normalised
    per run and row.
    """

    def __init__(self, centred: bool = False):
        super().__init__()
        self.centred = bool(centred)

    def forward(self, v: Tensor) -> Tensor:
        if self.centred:
            v = v - v.mean(dim=-1, keepdim=True)
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w

    def extra_repr(self) -> str:
        return "centred=True" if self.centred else ""


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


class NonNegLinear(nn.Linear):
    """A linear layer whose weights (and bias) are kept >= 0 (Bricken et al. 2023's
    ``all_positive_weights``, on the output layer of an SDM network).

    The constraint is kept by :meth:`project_`, which :func:`register_projections` runs after
    every optimiser step; a new layer's init weights are projected too (:func:`sample_weight`):
    the code of Bricken et al. clamps PyTorch's init (about half the weights become 0).
    """

    @staticmethod
    def project(w: Tensor) -> Tensor:
        """Clamp to >= 0."""
        return w.clamp_min(0.0)

    def project_(self) -> None:
        with torch.no_grad():
            self.weight.copy_(self.project(self.weight))
            if self.bias is not None:
                self.bias.clamp_(min=0.0)


class SDMLinear(NonNegLinear):
    """SDM layer (Bricken et al. 2023): y = W u / ||u||_2 with u = relu(x), rows of W unit-norm
    and non-negative (the code ReLUs the input before normalising it)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(F.relu(x), dim=-1), self.weight)

    @staticmethod
    def project(w: Tensor) -> Tensor:
        """Clamp to >= 0, then scale each row to unit L2 norm."""
        w = w.clamp_min(0.0)
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def register_projections(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> RemovableHandle | None:
    """After every optimiser step, project each constrained layer of ``model`` back (SDM).

    Returns the hook's handle, or None for a model without constrained layers: it gets no
    hook (a step post-hook makes the hand-written backward apply every input-layer step at
    once, :mod:`plasticity_rl.nn.backprop`).
    """
    layers = [m for m in model.modules() if hasattr(m, "project_")]
    if not layers:
        return None

    def project_all(*_: object) -> None:
        for layer in layers:
            layer.project_()

    return optimizer.register_step_post_hook(project_all)


class Dropout(nn.Module):
    """Dropout (Srivastava et al. 2014): in training mode h -> h * m / (1 - p), m_i ~
    Bernoulli(1 - p) drawn anew for every entry and forward; the identity in eval mode.

    The mask comes from torch's global RNG, or, in a batched network (``generators`` set, one
    per run: :func:`plasticity_rl.nn.batched.stack_runs` does it), run s's mask from
    ``generators[s]``, so run s draws exactly the masks of a single run seeded the same way.
    """

    def __init__(self, p: float, generators: Sequence[torch.Generator] | None = None):
        super().__init__()
        require(0 <= p < 1, "network.dropout", p, "a number in [0, 1)")
        self.p = float(p)
        self.generators = None if generators is None else list(generators)

    def forward(self, h: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return h
        if self.generators is None:
            keep = torch.empty_like(h).bernoulli_(1 - self.p)
        else:  # the runs' CPU generators (see draw_device)
            keep = torch.empty_like(h, device="cpu")
            for mask, generator in zip(keep, self.generators, strict=True):
                mask.bernoulli_(1 - self.p, generator=generator)
            keep = keep.to(h.device)
        return h * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
