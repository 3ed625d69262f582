"""The MLP builder shared by the RL and the supervised side, and hidden-layer discovery.

Interventions and metrics never need to know how a network was built: :func:`hidden_layers`
finds every hidden unit group as (incoming linear, activation, outgoing linear) in forward
order, for an :class:`MLP` and for any network that lists its modules in forward order
(``nn.Sequential``, an SB3 policy's ``mlp_extractor`` + head, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from plasticity_rl.nn.activations import ActivationSpec, make_activation
from plasticity_rl.nn.layers import make_linear
from plasticity_rl.registry import require

WEIGHT_NORM_OPTIONS = ("none", "first", "all")

KAIMING_BY_ACTIVATION = "kaiming_uniform_by_activation"
"""The init name that :func:`build_mlp` resolves per layer (see :func:`activation_gain`)."""

_ACTIVATION_GAINS = {
    nn.ReLU: math.sqrt(2.0),
    nn.LeakyReLU: math.sqrt(2.0),
    nn.ELU: math.sqrt(2.0),
    nn.SiLU: math.sqrt(2.0),
    nn.Tanh: 5.0 / 3.0,
    nn.Sigmoid: 1.0,
    nn.Identity: 1.0,
}


def activation_gain(activation: nn.Module) -> float:
    """The Kaiming gain Dohare et al. 2024's code uses for the layer feeding ``activation``.

    ``torch.nn.init.calculate_gain`` of the activation (relu and leaky_relu sqrt(2), as
    ``kaiming_uniform_`` computes it with its default ``a = 0``; tanh 5/3; sigmoid and identity
    1), with ELU and swish given the ReLU gain (``lop/nets/ffnn.py``).

    Raises:
        ConfigError: an activation without a gain here.
    """
    gain = _ACTIVATION_GAINS.get(type(activation))
    allowed = "relu, leaky_relu, elu, swish, tanh, sigmoid, identity (or another network.init)"
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


class MLP(nn.Module):
    """``output(hidden(x))``: ``hidden`` alternates linear layers and activations.

    ``hidden`` and ``output`` are separate so that a policy can use ``hidden`` as its feature
    extractor and ``output`` as its head (the SB3 split) while staying one network.
    """

    def __init__(self, linears: Sequence[nn.Module], activations: Sequence[nn.Module]):
        super().__init__()
        require(
            len(linears) == len(activations) + 1,
            "mlp layers",
            f"{len(linears)} linears, {len(activations)} activations",
            "one more linear layer than activations",
        )
        body: list[nn.Module] = []
        for linear, act in zip(linears[:-1], activations, strict=True):
            body += [linear, act]
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
) -> MLP:
    """Build an MLP ``in_dim -> hidden_sizes... -> out_dim`` from plain config values.

    Every hidden layer gets its own activation instance (sparse activations keep per-layer
    state). See :class:`MLPConfig` for the meaning of each option.

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
    sizes = [in_dim, *map(int, hidden_sizes), out_dim]
    activations = [make_activation(activation) for _ in hidden_sizes]
    for act, width in zip(activations, hidden_sizes, strict=True):
        # k-winners (Top-K): k and its annealing start must fit in the layer, known only here
        largest = max(getattr(act, "k", None) or 0, getattr(act, "k_max", None) or 0)
        require(largest <= width, "topk.k", largest, f"an integer <= the layer width ({width})")
    by_activation = init == KAIMING_BY_ACTIVATION
    linears = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        is_output = i == len(sizes) - 2
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
    return MLP(linears, activations)


@dataclass(frozen=True)
class HiddenLayer:
    """One group of hidden units: h = activation(incoming(x)), consumed by ``outgoing``.

    Unit j of the group is row j of ``incoming.weight`` (and ``incoming.bias[j]``) and
    column j of ``outgoing.weight``.
    """

    name: str
    incoming: nn.Linear
    activation: nn.Module
    outgoing: nn.Linear

    @property
    def width(self) -> int:
        return self.incoming.out_features


def _forward_order_leaves(module: nn.Module) -> Iterator[nn.Module]:
    """Leaf modules in registration order; a ``Linear`` counts as a leaf (parametrizations too)."""
    children = list(module.children())
    if isinstance(module, nn.Linear) or not children:
        yield module
        return
    for child in children:
        yield from _forward_order_leaves(child)


def hidden_layers(model: nn.Module | Sequence[nn.Module]) -> list[HiddenLayer]:
    """Every hidden layer of ``model`` as (incoming, activation, outgoing), in forward order.

    Modules are read in registration order: each ``Linear`` followed by a parameter-free
    activation module and then another ``Linear`` forms a hidden layer. A list of modules is
    read in the given order (e.g. ``[policy.mlp_extractor.policy_net, policy.action_net]``).
    """
    roots = list(model) if isinstance(model, Sequence) else [model]
    found: list[HiddenLayer] = []
    incoming: nn.Linear | None = None
    activation: nn.Module | None = None
    for root in roots:
        for leaf in _forward_order_leaves(root):
            if isinstance(leaf, nn.Linear):
                if incoming is not None and activation is not None:
                    found.append(HiddenLayer(f"hidden{len(found) + 1}", incoming, activation, leaf))
                incoming, activation = leaf, None
            elif incoming is not None and next(leaf.parameters(), None) is None:
                activation = leaf
    return found
