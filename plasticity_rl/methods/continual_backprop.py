"""Continual backprop: keep replacing a small fraction of the least useful mature hidden units.

Dohare et al. 2024, "Loss of plasticity in deep continual learning", Nature, Algorithm 1.

After every optimiser step, for each hidden layer with activations h (batch x units) from the
last training forward, incoming weights w_in (this layer's weight) and outgoing weights w_out
(next layer's weight), both after the step:

    a_j <- a_j + 1                                               (age, in optimiser steps)
    f_j <- eta f_j + (1 - eta) mean_i h_ij                       (running mean activation)
    f^_j = f_j / (1 - eta^a_j)                                   (bias-corrected)
    u_j <- eta u_j + (1 - eta) y_j,   u^_j = u_j / (1 - eta^a_j)  (utility, bias-corrected)

with the instantaneous utility ``y_j`` chosen by ``utility``:

- ``"contribution"`` (Dohare et al. 2024, Algorithm 1): ``y_j = mean_i |h_ij| agg_k |w_out[k, j]|``;
- ``"adaptable_contribution"`` (Dohare et al. 2021, arXiv:2108.06325, the utility the authors'
  code runs for the slowly-changing regression and Online Permuted MNIST):
  ``y_j = mean_i |h_ij - f^_j| agg_k |w_out[k, j]| / agg_l |w_in[j, l]|`` (``f^`` of this step).

``agg`` is the sum over the weights (the paper) or their mean (the reference code, ``outgoing``).
Units with a_j > m are eligible. How many are replaced (rho = replacement rate):

- ``accumulate=True``: an accumulator gains rho * n_eligible per step, and floor(accumulator)
  units are replaced (and subtracted from it);
- ``accumulate=False`` (the reference code's ``GnT`` default, used by its regression and RL
  runs): x = rho * n_eligible; if x < 1, one unit with probability x (a uniform draw from the
  run's generator every step), else floor(x).

The eligible units with the lowest u^ are replaced: the removed unit's mean contribution
w_out[:, j] f^_j is added to the next layer's bias (``bias_transfer``; skipped if that layer
has no bias, so the contribution is then lost), the unit gets fresh incoming weights and zero
outgoing weights
(:func:`~plasticity_rl.methods.base.reset_units`), and u_j = f_j = a_j = 0.

A unit of a concatenating activation (CReLU, deep Fourier features: features h_j, h_{j+n})
keeps a running mean f per feature (for the bias transfer, over all the unit's outgoing
columns) and one utility and age: y_j is the sum of its features' terms, each feature with its
own outgoing column (``adaptable_contribution``: the sum divided once by the unit's incoming
magnitude), so replacing the unit removes exactly what its features contributed.

The reference code (``lop/algos/gnt.py``) zeroes f_j before it computes that bias transfer, so
there it adds nothing; this is a plain bug (the transfer is the step the 2021 paper describes)
and is kept out here.

Convolutional layers (a channel is a unit, :class:`~plasticity_rl.nn.mlp.HiddenLayer`): h_ij
is channel j's mean over the positions of example i's feature map, a unit's outgoing weights
are all the kernel entries ``w_out[:, j]`` that read it (``agg`` over output channels and
kernel positions) and its incoming weights its kernel ``w_in[j]``; the bias transfer uses each
kernel's sum (exact away from the zero-padded border). Dohare et al.'s ResNet code
(``lop/algos/res_gnt.py``, ``ResGnT``) scores a channel as ``mean |w_out|`` now times a running
``mean |h|``, counts rho times all the layer's channels (not only the eligible ones), does
not transfer the bias, and keeps the optimiser state; ``agents/resnet18-cbp.yaml`` says how
it is set to match, and where it differs. (ResGnT's running mean of |h| is never decayed,
``mean_feature_mag += (1 - eta) |h|``: a plain bug, kept out; here it decays with eta.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from plasticity_rl.methods.base import (
    METHODS,
    HiddenLayerMethod,
    check_count,
    check_number,
    reset_units,
)
from plasticity_rl.nn.layers import layer_parameter, run_generators, run_shape, with_run_dim
from plasticity_rl.nn.mlp import HiddenLayer
from plasticity_rl.optim.state import check_optimizer_state_mode
from plasticity_rl.registry import require

OUTGOING_AGGREGATES = ("sum", "mean")
"""How a unit's weight magnitudes enter its utility."""

UTILITIES = ("contribution", "adaptable_contribution")
"""The instantaneous utilities (module docstring)."""


@dataclass
class UnitStatistics:
    """Continual backprop's running statistics of one hidden layer (one entry per unit).

    Every tensor has the layer's run dims in front: ``(units,)`` for a plain layer,
    ``(S, units)`` for a batched one (:class:`plasticity_rl.nn.layers.BatchedLinear`).
    """

    utility: Tensor
    """u: running contribution utility (not bias-corrected)."""
    mean_activation: Tensor
    """f: running mean activation (not bias-corrected), one per output feature of the layer
    (k per unit for a concatenating activation, :attr:`HiddenLayer.features`)."""
    age: Tensor
    """a: optimiser steps since the unit was created (int64)."""
    pending_replacements: Tensor
    """The accumulator (float64, one per run): replacements owed to the layer, not yet made."""


@dataclass
class _LayerViews:
    """(S, ...) views of one layer's :class:`UnitStatistics` and outgoing weight."""

    utility: Tensor
    mean_activation: Tensor
    age: Tensor
    pending: Tensor
    w_out: Tensor | None
    """The outgoing weight ``(S, next units, units)``; None if parametrized (recomputed)."""
    w_in: Tensor | None
    """The incoming weight ``(S, units, inputs)``; None if parametrized (recomputed)."""


def batch_mean(values: Tensor) -> Tensor:
    """The mean over dim 1 (examples) of ``(S, B, units)``; for B = 1 a view of the example."""
    return values.select(1, 0) if values.shape[1] == 1 else values.mean(1)


PerRun = float | Sequence[float]
"""One value for every run, or a list with one value per batched run."""


@METHODS.register("continual_backprop")
class ContinualBackprop(HiddenLayerMethod):
    """Continual backprop: replace low-utility mature units with fresh ones (see module doc).

    Works on plain and batched networks with the same code: statistics carry the layer's run
    dims, and each run selects, resets and counts its own units. With a batched network,
    ``replacement_rate`` and ``maturity_threshold`` may be lists with one value per run.

    Args:
        replacement_rate: rho, fraction of eligible units replaced per optimiser step.
        maturity_threshold: m, units older than m optimiser steps are eligible.
        decay_rate: eta, decay of the running utility and mean activation.
        outgoing: ``"sum"`` (paper) or ``"mean"`` (reference code) over a unit's outgoing
            (and, for ``adaptable_contribution``, incoming) weight magnitudes.
        utility: ``"contribution"`` (Nature paper) or ``"adaptable_contribution"``.
        accumulate: replace floor(accumulated rho * n_eligible) units (True) or one unit with
            probability rho * n_eligible when that is below 1 (False, the reference's default).
        bias_transfer: add a replaced unit's mean contribution to the next layer's bias
            (Dohare et al. 2021; their ResNet code does not).
        optimizer_state: what happens to the replaced weights' optimiser state (see
            :data:`plasticity_rl.optim.state.OPTIMIZER_STATE_RESETS`).
    """

    counter = "replacements"

    def __init__(
        self,
        replacement_rate: PerRun = 1e-4,
        maturity_threshold: int | Sequence[int] = 100,
        decay_rate: float = 0.99,
        outgoing: str = "sum",
        optimizer_state: str = "zero_moments",
        utility: str = "contribution",
        accumulate: bool = True,
        bias_transfer: bool = True,
    ):
        super().__init__()
        self.replacement_rate = per_run(
            replacement_rate,
            lambda v: check_number(v, "continual_backprop.replacement_rate",
                                   lambda x: 0 <= x <= 1, "a number in [0, 1]"),
        )  # fmt: skip
        self.maturity_threshold = per_run(
            maturity_threshold,
            lambda v: check_count(v, "continual_backprop.maturity_threshold", 0),
        )
        self.decay_rate = check_number(
            decay_rate, "continual_backprop.decay_rate", lambda v: 0 <= v < 1, "a number in [0, 1)"
        )
        require(
            outgoing in OUTGOING_AGGREGATES,
            "continual_backprop.outgoing",
            outgoing,
            OUTGOING_AGGREGATES,
        )
        require(utility in UTILITIES, "continual_backprop.utility", utility, UTILITIES)
        require(isinstance(accumulate, bool), "continual_backprop.accumulate", accumulate,
                "true or false")  # fmt: skip
        check_optimizer_state_mode(optimizer_state, "continual_backprop.optimizer_state")
        self.outgoing = outgoing
        self.utility = utility
        self.accumulate = accumulate
        require(isinstance(bias_transfer, bool), "continual_backprop.bias_transfer",
                bias_transfer, "true or false")  # fmt: skip
        self.bias_transfer = bias_transfer
        self.optimizer_state = optimizer_state
        self.statistics: dict[str, UnitStatistics] = {}
        self._views: dict[str, _LayerViews] = {}
        self._rate: float | Tensor = 0.0
        self._maturity: int | Tensor = 0

    def _setup(self) -> None:
        for layer in self.layers:
            runs = run_shape(layer.incoming)
            device = layer_parameter(layer.incoming).device
            zeros = torch.zeros(*runs, layer.width, device=device)
            stats = UnitStatistics(
                utility=zeros.clone(),
                mean_activation=torch.zeros(*runs, layer.features, device=device),
                age=zeros.long(),
                pending_replacements=torch.zeros(runs, dtype=torch.float64, device=device),
            )
            self.statistics[layer.name] = stats
            # (S, ...) views, made once (S = 1 for a plain layer): the statistics and a plain
            # outgoing weight are only ever changed in place.
            outgoing, incoming = layer.outgoing, layer.incoming
            self._views[layer.name] = _LayerViews(
                utility=with_run_dim(stats.utility, layer.incoming),
                mean_activation=with_run_dim(stats.mean_activation, layer.incoming),
                age=with_run_dim(stats.age, layer.incoming),
                pending=with_run_dim(stats.pending_replacements, layer.incoming),
                w_out=None if parametrize.is_parametrized(outgoing, "weight")
                else layer.outgoing_kernels(with_run_dim(outgoing.weight.detach(), outgoing)),
                w_in=None if parametrize.is_parametrized(incoming, "weight")
                else with_run_dim(incoming.weight.detach(), incoming),
            )  # fmt: skip
        num_runs = max(math.prod(run_shape(layer.incoming)) for layer in self.layers)
        device = layer_parameter(self.layers[0].incoming).device
        self._rate = per_run_tensor(self.replacement_rate, num_runs, torch.float64,
                                    "continual_backprop.replacement_rate", device)  # fmt: skip
        maturity = per_run_tensor(self.maturity_threshold, num_runs, torch.long,
                                  "continual_backprop.maturity_threshold", device)  # fmt: skip
        self._maturity = maturity.unsqueeze(1) if isinstance(maturity, Tensor) else maturity

    def _after_step(self, activations: dict[str, Tensor]) -> None:
        for layer in self.layers:
            if layer.name in activations:
                self._update_layer(layer, activations[layer.name])

    def _update_layer(self, layer: HiddenLayer, h: Tensor) -> None:
        stats, views, eta = self.statistics[layer.name], self._views[layer.name], self.decay_rate
        utility, mean_activation, age, pending = (
            views.utility, views.mean_activation, views.age, views.pending)  # fmt: skip
        h = h.reshape(utility.shape[0], -1, layer.features)
        w_out = views.w_out
        if w_out is None:  # a parametrized weight is recomputed from its parameter
            w_out = layer.outgoing_kernels(
                with_run_dim(layer.outgoing.weight.detach(), layer.outgoing)
            )
        contribution = self._magnitude(w_out, unit_dim=2)  # per feature, (S, features)
        age += 1
        bias_correction = 1 - eta ** age.to(utility.dtype)
        h_mean = batch_mean(h)  # mean_i h_ij, (S, features)
        if self.utility == "contribution":
            contribution = layer.per_unit(contribution.mul_(batch_mean(h.abs())))
            # eta u + (1 - eta) x for u and f together
            torch._foreach_lerp_([utility, mean_activation], [contribution, h_mean], 1 - eta)
        else:
            mean_activation.lerp_(h_mean, 1 - eta)
            w_in = views.w_in
            if w_in is None:
                w_in = with_run_dim(layer.incoming.weight.detach(), layer.incoming)
            mean_hat = mean_activation / layer.per_feature(bias_correction)
            deviation = (h - mean_hat.unsqueeze(1)).abs()
            contribution = layer.per_unit(contribution.mul_(batch_mean(deviation)))
            contribution.div_(self._magnitude(w_in, unit_dim=1))
            utility.lerp_(contribution, 1 - eta)

        eligible = age > self._maturity
        n_eligible = eligible.sum(1, dtype=torch.float64)
        n_replace = self._replacements(layer, n_eligible, pending)
        if n_replace is None:
            return
        # Each run's n_replace eligible units of lowest bias-corrected utility (ties: lowest
        # index first), as a mask: rank units by utility, ineligible ones last.
        corrected_utility = torch.where(eligible, utility / bias_correction, math.inf)
        order = corrected_utility.sort(dim=1, stable=True).indices
        positions = torch.arange(layer.width, device=order.device).expand_as(order)
        ranks = torch.empty_like(order).scatter_(1, order, positions)
        units = ranks < n_replace.unsqueeze(1)

        features = layer.per_feature(units)
        if self.bias_transfer and layer.outgoing.bias is not None:
            mean_activation_hat = torch.where(
                features, mean_activation / layer.per_feature(bias_correction), 0.0
            )
            # a conv's kernels summed over their positions (border padding neglected)
            w_sum = w_out if w_out.dim() == 3 else w_out.flatten(3).sum(3)  # (S, next, units)
            shift = torch.bmm(w_sum, mean_activation_hat.unsqueeze(2)).squeeze(2)
            with torch.no_grad():
                with_run_dim(layer.outgoing.bias, layer.outgoing).add_(shift)
        reset_units(layer, units.view(stats.utility.shape), self.optimizer, self.optimizer_state)
        utility.masked_fill_(units, 0.0)
        mean_activation.masked_fill_(features, 0.0)
        age.masked_fill_(units, 0)
        self._counts[layer.name] += n_replace.view(stats.pending_replacements.shape)

    def _magnitude(self, weight: Tensor, unit_dim: int) -> Tensor:
        """``agg |weight|`` over every dim but the run dim (0) and ``unit_dim``: a unit's
        weights (sum or mean, :data:`OUTGOING_AGGREGATES`), ``(S, units)``."""
        dims = tuple(d for d in range(1, weight.dim()) if d != unit_dim)
        return weight.abs().sum(dims) if self.outgoing == "sum" else weight.abs().mean(dims)

    def _replacements(
        self, layer: HiddenLayer, n_eligible: Tensor, pending: Tensor
    ) -> Tensor | None:
        """Units each run replaces this step, ``(S,)`` float64 whole numbers (module
        docstring); None when no run replaces any. Updates the accumulator ``pending``."""
        owed = n_eligible * self._rate  # rho * n (float64)
        if self.accumulate:
            pending += owed
            if pending.max().item() < 1:  # no run owes a whole replacement: nothing to replace
                return None
            n_replace = torch.minimum(pending.floor(), n_eligible)
            pending -= n_replace
        else:
            draws = torch.stack([torch.rand((), dtype=torch.float64, generator=generator)
                                 for generator in run_generators(layer.incoming)])  # fmt: skip
            draws = draws.to(owed.device)  # drawn on the CPU: the runs' generators are there
            one = ((draws <= owed) & (owed > 0)).to(torch.float64)
            n_replace = torch.where(owed < 1, one, owed.floor())
        return n_replace if n_replace.any() else None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["layers"] = {
            name: {
                "utility": stats.utility.clone(),
                "mean_activation": stats.mean_activation.clone(),
                "age": stats.age.clone(),
                "pending_replacements": stats.pending_replacements.tolist(),
            }
            for name, stats in self.statistics.items()
        }
        return state

    def _run_shaped(self) -> dict[str, Any]:
        per_layer = dict.fromkeys(("utility", "mean_activation", "age", "pending_replacements"),
                                  True)  # fmt: skip
        return {**super()._run_shaped(), "layers": dict.fromkeys(self.statistics, per_layer)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for name, saved in state["layers"].items():
            stats = self.statistics[name]
            stats.utility.copy_(saved["utility"])
            stats.mean_activation.copy_(saved["mean_activation"])
            stats.age.copy_(saved["age"])
            stats.pending_replacements.copy_(
                torch.as_tensor(saved["pending_replacements"], dtype=torch.float64)
            )


def per_run(value: Any, check: Any) -> Any:
    """``check(value)``, or ``[check(v) for v in value]`` for a list of per-run values."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [check(v) for v in value]
    return check(value)


def per_run_tensor(value: Any, runs: int, dtype: torch.dtype, key: str,
                   device: torch.device | None = None) -> Any:  # fmt: skip
    """A per-run list as an ``(S,)`` tensor of ``dtype`` (on ``device``) for ``runs`` runs; a
    number as is.

    Raises:
        ConfigError: a list whose length is not the number of runs.
    """
    if not isinstance(value, list):
        return value
    require(len(value) == runs, key, value, f"a number, or a list of {runs} (one per run)")
    return torch.tensor(value, dtype=dtype, device=device)
