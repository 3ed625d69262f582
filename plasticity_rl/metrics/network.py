"""Network-health metrics: pure functions of a layer's activations or of a model's weights.

An activation matrix ``h`` is one layer's post-activation output on a probe batch, shape
``(n_samples, n_units)``; any leading shape is accepted and flattened into rows, so
``h[..., j]`` are the values of unit j. :func:`collect_activations` gathers these matrices for
every hidden layer found by :func:`plasticity_rl.nn.mlp.hidden_layers`.

The rank metrics use the singular values sigma_1 >= sigma_2 >= ... of ``h``, computed in float64.
With a concatenating activation (CReLU, deep Fourier features) the columns of ``h`` are the
layer's output features (two per unit), and the activation metrics count features.

Metrics of a whole network: :func:`weight_magnitude`, :func:`gradient_norm` (of the gradients
the last backward left, no backward of its own) and :class:`OutputChurn` (the change of the
outputs on a fixed reference batch between two measurements).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plasticity_rl.nn.layers import BatchedLayerNorm, BatchedLinear, layer_parameter
from plasticity_rl.nn.mlp import HiddenLayer, hidden_layers
from plasticity_rl.registry import require

SRANK_TOLERANCE = 1e-6
"""Slack on the srank threshold: k counts once its cumulative share is >= threshold - 1e-6.

Singular values carry round-off (about 1e-7 relative for float32 activations), so a share that
is exactly on the threshold (sigma = [3, 1], threshold 0.75) would otherwise land on either side.
"""

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
"""Module types whose ``weight`` (and ``bias``) the weight metrics read."""

DUPLICATE_TOLERANCE = 1e-3
"""Units j != k are duplicates when ||h_j - h_k||_2 <= 1e-3 max(||h_j||_2, ||h_k||_2)."""

SATURATION_MARGIN = 0.01
"""A bounded unit is saturated within 1% of its range of a bound (tanh: |h| >= 0.98)."""

SATURATION_BOUNDS: dict[type[nn.Module], tuple[float, float]] = {
    nn.Tanh: (-1.0, 1.0),
    nn.Sigmoid: (0.0, 1.0),
}
"""The bounds of the saturating activations, by module type."""


def _rows(h: Tensor) -> Tensor:
    """``h`` as a detached ``(n_rows, n_units)`` matrix: all but the last dim flattened."""
    return h.detach().reshape(-1, h.shape[-1])


def _gram(rows: Tensor) -> Tensor:
    """The smaller Gram matrix of a float64 ``(n_rows, n_units)`` matrix: h^T h or h h^T."""
    return rows.T @ rows if rows.shape[0] >= rows.shape[1] else rows @ rows.T


def _singular_values_of_gram(gram: Tensor) -> Tensor:
    """sqrt of the eigenvalues of a Gram matrix, sorted descending."""
    return torch.linalg.eigvalsh(gram).clamp_min(0.0).flip(0).sqrt()


def _singular_values(h: Tensor) -> Tensor:
    """Singular values of the row-flattened ``h`` in float64, sorted descending.

    Computed as sqrt of the eigenvalues of the smaller Gram matrix (h^T h or h h^T), several
    times faster than an SVD of a tall probe matrix (1024 x 256: about 5 ms instead of 30 ms);
    in float64 the relative error of sigma_i is ~1e-16 * (sigma_max / sigma_i)^2, far below
    what the rank metrics resolve.
    """
    return _singular_values_of_gram(_gram(_rows(h).to(torch.float64)))


def dead_fraction(h: Tensor, eps: float = 0.0) -> float:
    """Fraction of units with |h_ij| <= eps on every row i of the probe batch.

    Dohare et al. 2024 (Loss of plasticity in deep continual learning, Nature) count a ReLU unit
    as dead when it outputs zero for all probe inputs (``eps = 0``).
    """
    return (_rows(h).abs() <= eps).all(dim=0).float().mean().item()


def dormancy_scores(h: Tensor, run_dims: int = 0) -> Tensor:
    """ReDo's normalised unit scores s_j = mean_i |h_ij| / ((1/n_units) sum_k mean_i |h_ik|).

    Sokar et al. 2023 (The Dormant Neuron Phenomenon in Deep RL). Returns the vector ``s`` of
    shape ``(n_units,)``; if the whole layer is zero every score is 0 (every unit dormant).
    With ``run_dims = r`` the first r dims of ``h`` are independent runs (batched networks),
    each scored on its own: ``s`` is then ``(*h.shape[:r], n_units)``.
    """
    return normalised_by_layer_mean(activation_magnitudes(h, run_dims))


def activation_magnitudes(h: Tensor, run_dims: int = 0) -> Tensor:
    """Each unit's mean |h_ij| over the rows i of ``h`` (the numerator of
    :func:`dormancy_scores`), with the first ``run_dims`` dims kept as runs."""
    rows = h.detach().reshape(*h.shape[:run_dims], -1, h.shape[-1])
    return rows.abs().mean(dim=-2)


def normalised_by_layer_mean(magnitude: Tensor) -> Tensor:
    """m_j / ((1/n_units) sum_k m_k) over the last dim; all zeros where the layer sum is 0."""
    layer_mean = magnitude.mean(dim=-1, keepdim=True)
    return torch.where(layer_mean > 0, magnitude / layer_mean, torch.zeros_like(magnitude))


def grama_scores(weight_grad: Tensor) -> Tensor:
    """GraMa, the gradient-magnitude unit scores of Liu et al. 2025 ("Measure gradients not
    activations! Enhancing neuronal activity in deep reinforcement learning"):

        s_j = mean_l |g_jl| / ((1/n_units) sum_k mean_l |g_kl|)

    with g = dL/dW the gradient of the layer's incoming weight, ``(n_units, n_inputs)``: unit
    j's row is the gradient of its incoming weights. As :func:`dormancy_scores`, but on the
    gradient instead of the activations, so it also flags units that still fire but no
    longer learn (tanh, leaky ReLU, saturated units). If the whole gradient is zero every
    score is 0. Leading dims before ``(n_units, n_inputs)`` are independent runs (a batched
    weight ``(S, n_units, n_inputs)`` gives ``(S, n_units)``), each scored on its own.
    """
    return normalised_by_layer_mean(gradient_magnitudes(weight_grad))


def gradient_magnitudes(weight_grad: Tensor) -> Tensor:
    """Each unit's mean |g_jl| over its incoming weights l (the numerator of
    :func:`grama_scores`), leading run dims kept."""
    return weight_grad.detach().abs().mean(dim=-1)


def grama_dormant_fraction(weight_grad: Tensor, tau: float = 0.0) -> float:
    """Fraction of gradient-dormant units, s_j <= tau with s from :func:`grama_scores`
    (Liu et al. 2025, GraMa); ``weight_grad`` is a layer's incoming weight gradient
    ``(n_units, n_inputs)``."""
    return (grama_scores(weight_grad) <= tau).float().mean().item()


def hidden_layer_grama_scores(layer: HiddenLayer) -> Tensor | None:
    """:func:`grama_scores` of a hidden layer's units from its incoming weight's current
    ``.grad`` (a conv channel scored over its whole kernel), with the layer's run dims; None
    when the weight has no gradient."""
    magnitudes = hidden_layer_gradient_magnitudes(layer)
    return None if magnitudes is None else normalised_by_layer_mean(magnitudes)


def hidden_layer_gradient_magnitudes(layer: HiddenLayer) -> Tensor | None:
    """:func:`gradient_magnitudes` of a hidden layer's units from its incoming weight's current
    ``.grad`` (a conv channel over its whole kernel); None when the weight has no gradient."""
    grad = layer_parameter(layer.incoming).grad
    if grad is None:
        return None
    return gradient_magnitudes(grad.flatten(1) if layer.convolutional else grad)


def dormant_ratio(h: Tensor, tau: float = 0.0) -> float:
    """Fraction of tau-dormant units, s_j <= tau with s from :func:`dormancy_scores`.

    Sokar et al. 2023 (ReDo). ``tau = 0`` counts units that are exactly zero on the probe batch.
    """
    return (dormancy_scores(h) <= tau).float().mean().item()


def _effective_rank_of(sigma: Tensor) -> float:
    total = sigma.sum()
    if total == 0:
        return 0.0
    return math.exp(torch.special.entr(sigma / total).sum().item())


def _srank_of(sigma: Tensor, threshold: float) -> int:
    total = sigma.sum()
    if total == 0:
        return 0
    share = sigma.cumsum(0) / total
    return int((share < threshold - SRANK_TOLERANCE).sum().item()) + 1


def _stable_rank_of(sigma: Tensor) -> float:
    if sigma.sum() == 0:
        return 0.0
    return (sigma.square().sum() / sigma[0].square()).item()


def effective_rank(h: Tensor) -> float:
    """Effective rank exp(-sum_i p_i log p_i) with p_i = sigma_i / sum_k sigma_k (0 log 0 = 0).

    Roy & Vetterli 2007 (The effective rank: a measure of effective dimensionality), as used by
    Dohare et al. 2024. An all-zero (or empty) matrix has effective rank 0.
    """
    return _effective_rank_of(_singular_values(h))


def srank(h: Tensor, threshold: float = 0.99) -> int:
    """Smallest k with (sum_{i<=k} sigma_i) / (sum_i sigma_i) >= threshold, sigma descending.

    Kumar et al. 2021 (Implicit Under-Parameterization)'s srank, which Dohare et al. 2024 plot
    as "stable rank". The comparison allows :data:`SRANK_TOLERANCE` of round-off, so sigma =
    [3, 1] at threshold 0.75 gives 1. An all-zero (or empty) matrix has srank 0.
    """
    require(0 < threshold <= 1, "srank.threshold", threshold, "a number in (0, 1]")
    return _srank_of(_singular_values(h), threshold)


def approximate_rank(h: Tensor, threshold: float = 0.99) -> int:
    """Smallest k with (sum_{i<=k} sigma_i^2) / (sum_i sigma_i^2) >= threshold, sigma descending.

    The approximate rank of Yang et al. 2020 (Harnessing structures for value-based planning and
    reinforcement learning): the number of principal directions holding ``threshold`` of the
    squared singular values (the variance), as Dohare et al. 2024 save it
    (``compute_approximate_rank`` of their code). :func:`srank` is the same count on the singular
    values themselves, so it is never smaller. Same round-off slack as :func:`srank`; an all-zero
    (or empty) matrix gives 0.
    """
    require(0 < threshold <= 1, "approximate_rank.threshold", threshold, "a number in (0, 1]")
    return _srank_of(_singular_values(h).square(), threshold)


def stable_rank(h: Tensor) -> float:
    """Classic stable rank ||h||_F^2 / ||h||_2^2 = sum_i sigma_i^2 / sigma_max^2.

    Rudelson & Vershynin 2007 (Sampling from large matrices). A zero (or empty) matrix gives 0.
    """
    return _stable_rank_of(_singular_values(h))


def activation_sparsity(h: Tensor) -> float:
    """Fraction of entries of ``h`` that are exactly zero: #{(i, j): h_ij = 0} / h.numel()."""
    return (h.detach() == 0).float().mean().item()


def feature_norm(h: Tensor) -> float:
    """Mean L2 norm of a row, (1/N) sum_i ||h_i||_2: the size of the layer's feature vectors.

    Growing feature norms accompany plasticity loss (Lyle et al. 2024, "Disentangling the
    causes of plasticity loss in neural networks"). An empty matrix gives NaN.
    """
    return _rows(h).to(torch.float64).norm(dim=1).mean().item()


def _duplicate_fraction_of(column_gram: Tensor, tol: float) -> float:
    """:func:`duplicate_fraction` from the units' Gram matrix G = h^T h (float64)."""
    squared = column_gram.diagonal()
    distance = (squared.unsqueeze(0) + squared.unsqueeze(1) - 2 * column_gram).clamp_min(0.0)
    scale = torch.maximum(squared.unsqueeze(0), squared.unsqueeze(1))
    close = distance <= tol**2 * scale  # ||h_j - h_k||^2 <= tol^2 max(||h_j||^2, ||h_k||^2)
    close.fill_diagonal_(False)
    alive = squared > 0
    return ((close & alive.unsqueeze(0)).any(dim=1) & alive).double().mean().item()


def duplicate_fraction(h: Tensor, tol: float = DUPLICATE_TOLERANCE) -> float:
    """Fraction of units whose activation column duplicates another unit's on the probe batch.

    Unit j counts when some unit k != j has ||h_j - h_k||_2 <= tol max(||h_j||_2, ||h_k||_2)
    (columns over the probe rows). Units that are zero on every row are left out (they are
    :func:`dead_fraction`'s): they count neither as duplicates nor as the unit duplicated.
    Duplicated units add nothing to the layer's function that one of them could not (a loss of
    effective width, as dead units are).
    """
    require(tol >= 0, "duplicate_fraction.tol", tol, "a number >= 0")
    rows = _rows(h).to(torch.float64)
    return _duplicate_fraction_of(rows.T @ rows, tol)


def saturation_bounds(activation: nn.Module) -> tuple[float, float] | None:
    """(low, high) of a saturating activation (tanh, sigmoid); None for any other."""
    return SATURATION_BOUNDS.get(type(activation))


def saturated_fraction(
    h: Tensor, low: float = -1.0, high: float = 1.0, margin: float = SATURATION_MARGIN
) -> float:
    """Fraction of units pinned near a bound of a bounded activation on every probe row.

    Unit j is saturated when, for every row i, h_ij <= low + margin (high - low) or
    h_ij >= high - margin (high - low): with the defaults (tanh, 1%) |h_ij| >= 0.98 on every
    row, where tanh' = 1 - h^2 <= 0.04; for sigmoid (low 0, high 1) h_ij <= 0.01 or >= 0.99.
    Such a unit passes almost no gradient (Glorot & Bengio 2010 on saturated units).
    """
    require(high > low, "saturated_fraction.high", high, f"a number > low ({low})")
    require(0 < margin < 0.5, "saturated_fraction.margin", margin, "a number in (0, 0.5)")
    rows, band = _rows(h), margin * (high - low)
    pinned = (rows <= low + band) | (rows >= high - band)
    return pinned.all(dim=0).float().mean().item()


def layer_health(
    h: Tensor, dormant_tau: float = 0.1, saturation: tuple[float, float] | None = None
) -> dict[str, float]:
    """All activation metrics of one layer (one Gram matrix shared by the three rank metrics
    and, for a probe with at least as many rows as units, the duplicate count).

    Keys: ``dead_fraction``, ``dormant_ratio`` (at ``dormant_tau``), ``effective_rank``,
    ``srank99`` (:func:`srank` at 0.99), ``approximate_rank`` (:func:`approximate_rank` at
    0.99), ``stable_rank``, ``activation_sparsity``, ``feature_norm``, ``duplicate_fraction``,
    and, given the activation's ``saturation`` bounds (:func:`saturation_bounds`),
    ``saturated_fraction``.
    Activations of a diverged network (inf or NaN) give NaN rank and duplicate metrics instead
    of an error, so a run that blows up is still logged.
    """
    finite = bool(torch.isfinite(h).all())
    nan = float("nan")
    rows = _rows(h).to(torch.float64)
    gram = _gram(rows) if finite else None
    sigma = _singular_values_of_gram(gram) if finite else None
    duplicates = nan
    if finite:
        column_gram = gram if rows.shape[0] >= rows.shape[1] else rows.T @ rows
        duplicates = _duplicate_fraction_of(column_gram, DUPLICATE_TOLERANCE)
    health = {
        "dead_fraction": dead_fraction(h),
        "dormant_ratio": dormant_ratio(h, dormant_tau),
        "effective_rank": _effective_rank_of(sigma) if finite else nan,
        "srank99": float(_srank_of(sigma, 0.99)) if finite else nan,
        "approximate_rank": float(_srank_of(sigma.square(), 0.99)) if finite else nan,
        "stable_rank": _stable_rank_of(sigma) if finite else nan,
        "activation_sparsity": activation_sparsity(h),
        "feature_norm": feature_norm(h),
        "duplicate_fraction": duplicates,
    }
    if saturation is not None:
        health["saturated_fraction"] = saturated_fraction(h, *saturation)
    return health


def hidden_layer_health(
    model: nn.Module | Sequence[nn.Module],
    probe: Tensor,
    dormant_tau: float = 0.1,
    forward: Callable[[Tensor], Any] | None = None,
) -> dict[str, float]:
    """:func:`layer_health` of every hidden layer on ``probe``, as ``{"<layer>/<metric>": v}``.

    Activations as :func:`collect_activations` records them; ``saturated_fraction`` for the
    layers whose activation saturates (tanh, sigmoid).
    """
    bounds = {layer.name: saturation_bounds(layer.activation) for layer in hidden_layers(model)}
    return {
        f"{name}/{metric}": value
        for name, h in collect_activations(model, probe, forward).items()
        for metric, value in layer_health(h, dormant_tau, bounds[name]).items()
    }


def _gradients(parameters: Iterable[Tensor]) -> list[Tensor]:
    return [p.grad.detach() for p in parameters if p.grad is not None]


def gradient_norm(model: nn.Module | Iterable[Tensor]) -> float | None:
    """Global L2 norm of the current gradients, sqrt(sum_p ||p.grad||_2^2).

    Reads the ``.grad`` the last backward left (no backward of its own), over the parameters
    that have one; None when none has (before the first backward, or when the optimiser's
    steps consumed the gradients: the hand-written backward's fused SGD steps,
    :mod:`plasticity_rl.optim.fused`). In PPO the gradients are those of the last minibatch,
    after SB3's gradient clipping. For a batched network it is the norm over all runs
    (:func:`run_gradient_norms` gives each run's).
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    grads = _gradients(params)
    if not grads:
        return None
    return torch.stack(torch._foreach_norm(grads)).double().norm().item()


def run_gradient_norms(model: nn.Module) -> list[float] | None:
    """:func:`gradient_norm` of each run of a batched network (a list of one for a plain one).

    The gradients of batched layers (:class:`~plasticity_rl.nn.layers.BatchedLinear` and
    :class:`~plasticity_rl.nn.layers.BatchedLayerNorm`, leading run dim) are split by run; any
    other gradient counts in every run.
    """
    batched = {id(p) for m in model.modules() if isinstance(m, BatchedLinear | BatchedLayerNorm)
               for p in m.parameters()}  # fmt: skip
    per_run: list[Tensor] = []
    shared = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.grad is None:
            continue
        g = p.grad.detach().double()
        if id(p) in batched:
            per_run.append(g.flatten(1).square().sum(1))
        else:
            shared = shared + g.square().sum()
    if not per_run:
        norm = gradient_norm(model)
        return None if norm is None else [norm]
    return (torch.stack(per_run).sum(0) + shared).sqrt().tolist()


def run_gradient_metrics(model: nn.Module, tau: float = 0.1) -> list[dict[str, float]] | None:
    """Each run's metrics of the current gradients (a list of one dict for a plain network):

    - ``gradient_norm``: :func:`run_gradient_norms`;
    - ``<layer>/grama_dormant_ratio`` for every hidden layer whose incoming weight has a
      gradient: the fraction of units with GraMa score s_j <= ``tau`` (:func:`grama_scores`,
      Liu et al. 2025: gradient-magnitude dormancy, which also counts units that still fire
      but no longer learn; a conv layer's unit is a channel, scored over its kernel).

    Reads the ``.grad`` the last backward left; None when there is none (see
    :func:`gradient_norm`).
    """
    norms = run_gradient_norms(model)
    if norms is None:
        return None
    per_run: list[dict[str, float]] = [{"gradient_norm": norm} for norm in norms]
    for layer in hidden_layers(model):
        scores = hidden_layer_grama_scores(layer)
        if scores is None:
            continue
        fractions = (scores <= tau).double().mean(-1).reshape(-1).tolist()
        for metrics, fraction in zip(per_run, fractions, strict=True):
            metrics[f"{layer.name}/grama_dormant_ratio"] = fraction
    return per_run


def output_churn(before: Tensor, after: Tensor) -> float:
    """Mean absolute change of the outputs, (1/(N K)) sum_i sum_k |after_ik - before_ik|.

    The outputs of one network on the same N reference inputs at two times (K outputs each):
    the churn of Schaul et al. 2022 ("The phenomenon of policy churn") and Tang & Berseth
    2024 ("Improving deep reinforcement learning by reducing the chain effect of value and
    policy churn"), whose value churn is this with K = 1.
    """
    if before.shape != after.shape:
        raise ValueError(f"output_churn: shapes differ, {tuple(before.shape)} and "
                         f"{tuple(after.shape)}")  # fmt: skip
    return (after.detach().double() - before.detach().double()).abs().mean().item()


class OutputChurn:
    """:func:`output_churn` of a network between consecutive calls of :meth:`measure`, on a
    fixed reference batch: the probe given at the first call.

    The outputs are computed in eval mode under ``no_grad`` (dropout off, modules' training
    flags restored). The reference batch and the last outputs are kept in ``state`` (a dict
    with the keys ``reference`` and ``outputs``), which the caller may hand in and keep in its
    checkpoint, so a resumed run measures against the same batch and outputs. Example::

        churn = OutputChurn()
        churn.measure(net, probe)  # None: keeps probe as the reference batch and net's outputs
        ...  # train
        churn.measure(net, probe)  # mean |f_now(reference) - f_then(reference)|
    """

    def __init__(self, state: dict[str, Tensor | None] | None = None) -> None:
        self.state = {} if state is None else state
        self.state.setdefault("reference", None)
        self.state.setdefault("outputs", None)

    def measure(self, model: nn.Module, probe: Tensor) -> float | None:
        """The churn since the previous call (None at the first); ``probe`` is used only at
        the first call, as the reference batch."""
        if self.state["reference"] is None:
            self.state["reference"] = probe.detach().clone()
        with evaluation_mode([model]), torch.no_grad():
            outputs = model(self.state["reference"]).detach().clone()
        before = self.state["outputs"]
        self.state["outputs"] = outputs
        return None if before is None else output_churn(before, outputs)


def _weight_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS))


def weight_magnitude(model: nn.Module) -> float:
    """Mean |w| over every entry of the effective weights of the model's linear/conv layers.

    Reads ``module.weight`` of each ``nn.Linear`` / ``nn.Conv2d``, so parametrized layers
    (weight norm, Powerprop) contribute their effective w, not the trained tensor behind it.
    Biases and the gains of normalisation layers are excluded. Dohare et al. 2024 track this
    average weight magnitude as a correlate of loss of plasticity.

    Raises:
        ValueError: if the model has no linear or conv layer.
    """
    total, count = 0.0, 0
    with torch.no_grad():
        for _, module in _weight_layers(model):
            weight = module.weight
            total += weight.abs().sum().item()
            count += weight.numel()
    if count == 0:
        raise ValueError(f"weight_magnitude: {type(model).__name__} has no Linear/Conv2d layer")
    return total / count


def weight_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Detached clones of the effective weights and biases of every ``nn.Linear`` / ``nn.Conv2d``.

    Keys are ``"<module name>.weight"`` and ``"<module name>.bias"``; pair with
    :func:`weight_change`.
    """
    snapshot: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, module in _weight_layers(model):
            snapshot[f"{name}.weight"] = module.weight.detach().clone()
            if module.bias is not None:
                snapshot[f"{name}.bias"] = module.bias.detach().clone()
    return snapshot


def weight_change(before: dict[str, Tensor], after: dict[str, Tensor]) -> float:
    """Total absolute change sum_k sum_entries |after[k] - before[k]|.

    Raises:
        ValueError: if the two dicts do not have the same keys (the message names the
            keys missing from each side).
    """
    if before.keys() != after.keys():
        raise ValueError(
            "weight_change: keys differ; missing from after: "
            f"{sorted(before.keys() - after.keys())}, missing from before: "
            f"{sorted(after.keys() - before.keys())}"
        )
    return float(sum((after[k].detach() - before[k].detach()).abs().sum().item() for k in before))


class HookHandles:
    """Several hook handles removed together with one :meth:`remove` call."""

    def __init__(self, handles: Sequence[RemovableHandle]):
        self.handles = list(handles)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class WeightChangeMonitor:
    """Largest per-optimiser-step weight change, sum_p sum_entries |p_after - p_before|.

    Measured on the tensors the optimiser updates (for a parametrized layer that is the
    trained tensor behind the weight, e.g. Powerprop's v), restricted to the parameters of
    each model given to :meth:`attach`; biases are included. Several named models (a policy
    and a value network) share one set of hooks: per step, one copy, one subtraction and one
    L1 norm over all their tensors, so the cost stays small inside a training loop.

    Example::

        monitor = WeightChangeMonitor()
        handle = monitor.attach({"pi": policy_net, "vf": value_net}, optimizer)
        ...  # optimizer.step() several times
        largest = monitor.pop_max()  # {"pi": ..., "vf": ...} since the last pop; {} if no step
        handle.remove()
    """

    def __init__(self) -> None:
        self._params: list[Tensor] = []
        self._before: list[Tensor] = []
        self._groups = torch.zeros(0, 0)  # (models, tensors): 1 where a tensor is in a model
        self._names: list[str] = []
        self._max: Tensor | None = None

    def attach(
        self, model: nn.Module | Mapping[str, nn.Module], optimizer: torch.optim.Optimizer
    ) -> HookHandles:
        """Hook ``optimizer``'s steps; returns a handle whose ``remove()`` detaches both hooks.

        A single module is reported under the name ``"model"``.
        """
        models = dict(model) if isinstance(model, Mapping) else {"model": model}
        self._names = list(models)
        members = [{id(p) for p in m.parameters()} for m in models.values()]
        watched = set().union(*members)

        def snapshot(*_: Any) -> None:
            params = [
                p for group in optimizer.param_groups for p in group["params"] if id(p) in watched
            ]
            if [id(p) for p in params] != [id(p) for p in self._params]:
                self._params, self._before = params, [p.detach().clone() for p in params]
                self._groups = torch.tensor(
                    [[float(id(p) in ids) for p in params] for ids in members],
                    device=params[0].device if params else None,
                )
            else:  # reuse the buffers: no allocation
                torch._foreach_copy_(self._before, [p.detach() for p in params])

        def record(*_: Any) -> None:
            if not self._params:
                return
            with torch.no_grad():
                diffs = torch._foreach_sub([p.detach() for p in self._params], self._before)
                norms = torch.stack(torch._foreach_norm(diffs, 1)).to(self._groups.dtype)
                change = self._groups @ norms
            self._max = change if self._max is None else torch.maximum(self._max.to(change), change)

        return HookHandles(
            [optimizer.register_step_pre_hook(snapshot), optimizer.register_step_post_hook(record)]
        )

    def pop_max(self) -> dict[str, float]:
        """The largest step change of each model since the last call (then reset); {} if none."""
        value, self._max = self._max, None
        return {} if value is None else dict(zip(self._names, value.tolist(), strict=True))

    def running_max(self) -> dict[str, float] | None:
        """The largest step change of each model since the last :meth:`pop_max`, without
        resetting it (None if no step since): what a checkpoint keeps."""
        return (
            None if self._max is None else dict(zip(self._names, self._max.tolist(), strict=True))
        )

    def load_running_max(self, values: Mapping[str, float] | None) -> None:
        """Continue from :meth:`running_max` of a checkpoint (after :meth:`attach`)."""
        if values is not None:
            self._max = torch.tensor([values[name] for name in self._names])


def collect_activations(
    model: nn.Module | Sequence[nn.Module],
    probe: Tensor,
    forward: Callable[[Tensor], Any] | None = None,
) -> dict[str, Tensor]:
    """Post-activation output of every hidden layer of ``model`` on ``probe``, by layer name.

    Hidden layers are found by :func:`plasticity_rl.nn.mlp.hidden_layers` (names ``hidden1``,
    ``hidden2``, ...); a conv layer's activations are its channels' spatial means, ``(N, C)``
    (:meth:`~plasticity_rl.nn.mlp.HiddenLayer.unit_activations`). Runs ``forward(probe)``
    (default ``model(probe)``) under ``torch.no_grad()`` with the modules of ``model`` in eval
    mode and a forward hook on each layer's activation module. Hooks are removed and every
    module's training flag restored afterwards, also on error.

    Args:
        model: a module, or a list of modules in forward order (e.g. an SB3 policy's
            ``[mlp_extractor.policy_net, action_net]``), which then needs ``forward``.
        probe: the probe batch.
        forward: callable run on ``probe``; must run each hidden layer exactly once.

    Raises:
        ValueError: if ``model`` is a list and ``forward`` is None.
        RuntimeError: if ``forward`` runs a hidden layer more than once or not at all.
    """
    if forward is None:
        if not isinstance(model, nn.Module):
            raise ValueError("collect_activations: a list of modules needs a forward callable")
        forward = model
    roots = [model] if isinstance(model, nn.Module) else list(model)
    outputs: dict[str, Tensor] = {}

    def recorder(layer: HiddenLayer) -> Callable[[nn.Module, Any, Tensor], None]:
        def record(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            if layer.name in outputs:
                raise RuntimeError(f"collect_activations: layer {layer.name} ran more than once")
            outputs[layer.name] = layer.unit_activations(output.detach()).clone()

        return record

    layers = hidden_layers(model)
    handles: list[RemovableHandle] = []
    try:
        for layer in layers:
            handles.append(layer.activation.register_forward_hook(recorder(layer)))
        with evaluation_mode(roots), torch.no_grad():
            forward(probe)
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer.name for layer in layers if layer.name not in outputs]
    if missing:
        raise RuntimeError(f"collect_activations: forward did not run hidden layers {missing}")
    return outputs


@contextmanager
def evaluation_mode(roots: Sequence[nn.Module]) -> Iterator[None]:
    """Every module of ``roots`` in eval mode inside the block; each module's own training
    flag is restored afterwards, also on error."""
    modes = [(m, m.training) for root in roots for m in root.modules()]
    try:
        for root in roots:
            root.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training
