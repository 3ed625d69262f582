"""The MLP builder shared by the RL and the supervised side, and hidden-layer discovery.

Interventions and metrics never need to know how a network was built: :func:`hidden_layers`
finds every hidden unit group as (incoming linear, activation, outgoing linear) in forward
order, for an :class:`MLP` and for any network that lists its modules in forward order
(``nn.Sequential``, an SB3 policy's ``mlp_extractor`` + head, ...). A hidden layer of an MLP
is ``linear -> [LayerNorm] -> activation -> [Dropout]``; the activations that methods and
metrics read are the activation module's output (before dropout).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from plasticity_rl.nn.activations import ActivationSpec, CReLU, features_per_unit, make_activation
from plasticity_rl.nn.layers import Dropout, make_linear
from plasticity_rl.registry import require

WEIGHT_NORM_OPTIONS = ("none", "first", "all")

KAIMING_BY_ACTIVATION = "kaiming_uniform_by_activation"
"""The init name that :func:`build_mlp` resolves per layer (see :func:`activation_gain`)."""

_ACTIVATION_GAINS = {
    nn.ReLU: math.sqrt(2.0),
    nn.LeakyReLU: math.sqrt(2.0),
    nn.ELU: math.sqrt(2.0),
    nn.SiLU: math.sqrt(2.0),
    CReLU: math.sqrt(2.0),
    nn.Tanh: 5.0 / 3.0,
    nn.Sigmoid: 1.0,
    nn.Identity: 1.0,
}


def activation_gain(activation: nn.Module) -> float:
    """The Kaiming gain Dohare et al. 2024's code uses for the layer feeding ``activation``.

    ``torch.nn.init.calculate_gain`` of the activation (relu and leaky_relu sqrt(2), as
    ``kaiming_uniform_`` computes it with its default ``a = 0``; tanh 5/3; sigmoid and identity
    1), with ELU and swish given the ReLU gain (``lop/nets/ffnn.py``), and CReLU the ReLU gain
    too (each of its features keeps half of E[z^2], as a ReLU does).

    Raises:
        ConfigError: an activation without a gain here.
    """
    gain = _ACTIVATION_GAINS.get(type(activation))
    allowed = "relu, leaky_relu, elu, swish, crelu, tanh, sigmoid, identity (or another init)"
    require(gain is not None, f"{KAIMING_BY_ACTIVATION} activation", activation, allowed)
    return gain  # type: ignore[return-value]


@dataclass
class MLPConfig:
    """Plain-data description of an MLP; ``build_mlp(in_dim, out_dim=..., **asdict(cfg))``."""

    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    """Width of each hidden layer."""
    activation: Any = "relu"
    """Activation name or ``{name: ..., **kwargs}`` from the activation registry."""
    init: str = "default"
    """Weight init scheme of every layer (see ``plasticity_rl.nn.layers.INIT_SCHEMES``), or
    ``kaiming_uniform_by_activation`` (see :func:`build_mlp`)."""
    output_init_scale: float = 1.0
    """Multiplier on the output layer's init weights."""
    bias: bool = True
    """Biases in the hidden layers."""
    output_bias: bool = True
    """Bias in the output layer."""
    weight_norm: str = "none"
    """Fixed-gain (g = 1) weight normalisation: none, first (layer only) or all."""
    weight_norm_centred: bool = False
    """Centre each weight-normalised row, w - mean(w), before dividing by its norm (the code of
    Keskinen 2024, Hard ASH)."""
    powerprop_alpha: float | None = None
    """Powerpropagation exponent for every layer; null for plain weights."""
    sdm: bool = False
    """SDM constraints (Bricken et al. 2023): hidden layers without bias, with ReLU'd and
    L2-normalised inputs and unit-norm non-negative rows; output weights (and bias) >= 0."""
    layer_norm: bool = False
    """Pre-activation layer normalisation in every hidden layer, h = act(LN(W x + b)) with a
    learned gain and bias per unit (Ba et al. 2016; against plasticity loss: Lyle et al. 2024,
    "Disentangling the causes of plasticity loss in neural networks")."""
    dropout: float = 0.0
    """Dropout probability after every hidden activation (0: none); active in training mode
    only, so SB3 rollouts and all evaluations (eval mode) run without it. In PPO the update's
    log-probabilities are computed with dropout and the rollout's without, so an update's
    first importance ratios are not exactly 1."""


class MLP(nn.Module):
    """``output(hidden(x))``: ``hidden`` alternates linear layers and activations.

    ``hidden`` and ``output`` are separate so that a policy can use ``hidden`` as its feature
    extractor and ``output`` as its head (the SB3 split) while staying one network.
    """

    def __init__(self, linears: Sequence[nn.Module], activations: Sequence[nn.Module],
                 norms: Sequence[nn.Module] | None = None, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        require(
            len(linears) == len(activations) + 1,
            "mlp layers",
            f"{len(linears)} linears, {len(activations)} activations",
            "one more linear layer than activations",
        )
        body: list[nn.Module] = []
        for i, (linear, act) in enumerate(zip(linears[:-1], activations, strict=True)):
            body += [linear, *([norms[i]] if norms else []), act]
            body += [Dropout(dropout)] if dropout > 0 else []
        self.hidden = nn.Sequential(*body)
        self.output = linears[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.hidden(x))


def build_mlp(
    in_dim: int,
    hidden_sizes: Sequence[int],
    out_dim: int,
    activation: ActivationSpec = "relu",
    *,
    init: str = "default",
    output_init_scale: float = 1.0,
    bias: bool = True,
    output_bias: bool = True,
    weight_norm: str = "none",
    weight_norm_centred: bool = False,
    powerprop_alpha: float | None = None,
    sdm: bool = False,
    layer_norm: bool = False,
    dropout: float = 0.0,
) -> MLP:
    """Build an MLP ``in_dim -> hidden_sizes... -> out_dim`` from plain config values.

    Every hidden layer gets its own activation instance (sparse activations keep per-layer
    state). See :class:`MLPConfig` for the meaning of each option. A concatenating activation
    (``crelu``, ``fourier``: :func:`~plasticity_rl.nn.activations.features_per_unit` 2) doubles
    the next layer's inputs.

    ``init="kaiming_uniform_by_activation"`` (Dohare et al. 2024's learners, ``lop/nets/ffnn.py``):
    every weight ``~ U(+-g sqrt(3 / fan_in))`` with ``g`` the gain of the activation the layer
    feeds (:func:`activation_gain`) and ``g = 1`` for the output layer (``nonlinearity='linear'``);
    biases 0. It is the ``lecun_uniform`` scheme scaled by ``g``, so units reset later (CBP,
    ReDo) are drawn with the same gain.

    Example:
        >>> net = build_mlp(4, [8, 8], 2, {"name": "leaky_relu", "negative_slope": 0.1})
        >>> [h.name for h in hidden_layers(net)]
        ['hidden1', 'hidden2']
    """
    require(in_dim >= 1, "mlp.in_dim", in_dim, "an integer >= 1")
    require(out_dim >= 1, "mlp.out_dim", out_dim, "an integer >= 1")
    for size in hidden_sizes:
        require(int(size) >= 1, "mlp.hidden_sizes", list(hidden_sizes), "integers >= 1")
    require(weight_norm in WEIGHT_NORM_OPTIONS, "mlp.weight_norm", weight_norm, WEIGHT_NORM_OPTIONS)
    require(
        weight_norm != "none" or not weight_norm_centred,
        "mlp.weight_norm_centred",
        weight_norm_centred,
        "false when weight_norm is none",
    )
    require(isinstance(layer_norm, bool), "mlp.layer_norm", layer_norm, "true or false")
    is_number = isinstance(dropout, int | float) and not isinstance(dropout, bool)
    require(is_number and 0 <= dropout < 1, "mlp.dropout", dropout, "a number in [0, 1)")
    widths = [int(size) for size in hidden_sizes]
    activations = [make_activation(activation) for _ in hidden_sizes]
    fan_ins = [
        in_dim,
        *(w * features_per_unit(a) for w, a in zip(widths, activations, strict=True)),
    ]
    for act, width in zip(activations, hidden_sizes, strict=True):
        # k-winners (Top-K): k and its annealing start must fit in the layer, known only here
        largest = max(getattr(act, "k", None) or 0, getattr(act, "k_max", None) or 0)
        require(largest <= width, "topk.k", largest, f"an integer <= the layer width ({width})")
    by_activation = init == KAIMING_BY_ACTIVATION
    linears = []
    for i, (fan_in, fan_out) in enumerate(zip(fan_ins, [*widths, out_dim], strict=True)):
        is_output = i == len(widths)
        normed = weight_norm == "all" or (weight_norm == "first" and i == 0)
        gain = 1.0 if is_output or not by_activation else activation_gain(activations[i])
        linears.append(
            make_linear(
                fan_in,
                fan_out,
                bias=output_bias if is_output else bias,
                init="lecun_uniform" if by_activation else init,
                init_scale=gain * (output_init_scale if is_output else 1.0),
                weight_norm=normed,
                weight_norm_centred=weight_norm_centred and normed,
                powerprop_alpha=powerprop_alpha,
                sdm=sdm and not is_output,
                nonneg=sdm and is_output,
            )
        )
    norms = [nn.LayerNorm(width) for width in widths] if layer_norm else None
    return MLP(linears, activations, norms, float(dropout))


@dataclass(frozen=True)
class HiddenLayer:
    """One group of hidden units: h = activation(norm(incoming(x))), consumed by ``outgoing``.

    Unit j of the group is row j of ``incoming.weight`` (and ``incoming.bias[j]``, and entry j
    of the norm's gain and bias, if any) and column j of ``outgoing.weight``. In a
    convolutional layer (``incoming`` an ``nn.Conv2d``) a unit is an output channel: its
    incoming kernel ``incoming.weight[j]``, its BatchNorm entries, and the kernels
    ``outgoing.weight[:, j]`` that read it: a conv, a linear layer after global pooling, or a
    linear layer reading the flattened (pooled) map, whose columns ``j P ... (j + 1) P - 1``
    are channel j's P positions (:attr:`positions_per_unit`); methods and metrics see a
    channel's activation as its spatial mean (:meth:`unit_activations`). With a
    concatenating activation (CReLU, deep Fourier features: ``features_per_unit`` k = 2) the
    activation output has k n features for n units: unit j makes features j, j + n, ...,
    read by those columns of ``outgoing.weight`` (:meth:`per_feature`), and a per-feature
    quantity becomes a per-unit one by summing over the unit's features (:meth:`per_unit`).
    """

    name: str
    incoming: nn.Linear | nn.Conv2d
    activation: nn.Module
    outgoing: nn.Linear | nn.Conv2d
    norm: nn.LayerNorm | nn.BatchNorm2d | None = None
    """The pre-activation LayerNorm (or BatchNorm of a conv layer), if any."""

    @property
    def width(self) -> int:
        """n, the number of units (rows of ``incoming.weight``, channels of a conv layer)."""
        if isinstance(self.incoming, nn.Conv2d):
            return self.incoming.out_channels
        return self.incoming.out_features

    @property
    def convolutional(self) -> bool:
        """Whether the units are the output channels of a conv layer."""
        return isinstance(self.incoming, nn.Conv2d)

    def unit_activations(self, h: Tensor) -> Tensor:
        """The activation output as ``(..., examples, features)``: itself for a linear layer;
        for a conv layer ``(N, C, H, W)`` each channel's mean over the H x W positions, ``(N, C)``
        (the channel activation that Dohare et al. 2024's ``cbp_conv.py`` and Sokar et al.
        2023's ReDo score)."""
        return h.mean(dim=(-2, -1)) if self.convolutional else h

    @property
    def features_per_unit(self) -> int:
        """k, the activation's output features per unit (1, or 2 for CReLU and Fourier)."""
        return features_per_unit(self.activation)

    @property
    def features(self) -> int:
        """k n, the width of the activation output (columns of ``outgoing.weight``)."""
        return self.width * self.features_per_unit

    def per_feature(self, values: Tensor) -> Tensor:
        """Per-unit values ``(..., n)`` repeated for each feature of the unit: ``(..., k n)``
        (a unit mask becomes the mask of the units' features)."""
        k = self.features_per_unit
        return values if k == 1 else torch.cat([values] * k, dim=-1)

    @property
    def positions_per_unit(self) -> int:
        """P, the outgoing linear layer's columns per feature: the positions of a conv
        channel's flattened map (1 otherwise)."""
        if self.convolutional and isinstance(self.outgoing, nn.Linear):
            return self.outgoing.in_features // self.features
        return 1

    def outgoing_columns(self, units: Tensor) -> Tensor:
        """A unit mask ``(..., n)`` as the mask of the outgoing weight's columns (dim 1) that
        read those units: their features (:meth:`per_feature`), each repeated for its
        positions (:attr:`positions_per_unit`)."""
        features = self.per_feature(units)
        p = self.positions_per_unit
        return features if p == 1 else features.repeat_interleave(p, dim=-1)

    def outgoing_kernels(self, weight: Tensor) -> Tensor:
        """The outgoing weight (with a leading run dim) as ``(S, next units, features, ...)``:
        itself, or for a linear layer reading a flattened conv map its columns grouped as
        ``(features, P)`` (a view)."""
        p = self.positions_per_unit
        return weight if p == 1 else weight.unflatten(2, (self.features, p))

    def per_unit(self, values: Tensor) -> Tensor:
        """Per-feature values ``(..., k n)`` summed over each unit's features: ``(..., n)``."""
        k = self.features_per_unit
        return values if k == 1 else values.unflatten(-1, (k, self.width)).sum(-2)


def _forward_order_leaves(module: nn.Module) -> Iterator[nn.Module]:
    """Leaf modules in registration order; a ``Linear`` (with its parametrizations) and a
    module marked ``wraps_activation`` (e.g. :class:`~plasticity_rl.nn.cnn.FeatureMapActivation`)
    count as leaves."""
    children = list(module.children())
    if isinstance(module, nn.Linear) or getattr(module, "wraps_activation", False) or not children:
        yield module
        return
    for child in children:
        yield from _forward_order_leaves(child)


def hidden_layers(model: nn.Module | Sequence[nn.Module]) -> list[HiddenLayer]:
    """Every hidden layer of ``model`` as (incoming, activation, outgoing), in forward order.

    Modules are read in registration order: each ``Linear`` or ``Conv2d`` followed by a
    parameter-free activation module and then another ``Linear`` or ``Conv2d`` forms a hidden
    layer; the activation is the first parameter-free module after the weight layer (later
    ones, such as dropout or max-pooling, are not it), and an ``nn.LayerNorm`` or
    ``nn.BatchNorm2d`` before it is the layer's ``norm``. A list of modules is
    read in the given order (e.g. ``[policy.mlp_extractor.policy_net, policy.action_net]``).

    A network whose modules do not run in that order (a ResNet: skip connections, one module
    reading two others) declares its hidden layers instead: a root with a
    ``hidden_units()`` method returning ``(incoming, activation, outgoing, norm)`` tuples in
    forward order contributes exactly those.
    """
    roots = list(model) if isinstance(model, Sequence) else [model]
    found: list[HiddenLayer] = []
    incoming: nn.Linear | nn.Conv2d | None = None
    activation: nn.Module | None = None
    norm: nn.LayerNorm | nn.BatchNorm2d | None = None
    for root in roots:
        declared = getattr(root, "hidden_units", None)
        if callable(declared):
            for units in declared():
                found.append(HiddenLayer(f"hidden{len(found) + 1}", *units))
            incoming, activation, norm = None, None, None
            continue
        for leaf in _forward_order_leaves(root):
            if isinstance(leaf, nn.Linear | nn.Conv2d):
                if incoming is not None and activation is not None:
                    name = f"hidden{len(found) + 1}"
                    found.append(HiddenLayer(name, incoming, activation, leaf, norm))
                incoming, activation, norm = leaf, None, None
            elif incoming is None or activation is not None:
                continue
            elif next(leaf.parameters(), None) is None:
                activation = leaf
            elif isinstance(leaf, nn.LayerNorm | nn.BatchNorm2d):
                norm = leaf
    return found
