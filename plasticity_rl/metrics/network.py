"""Network-health metrics: pure functions of a layer's activations or of a model's weights.

An activation matrix ``h`` is one layer's post-activation output on a probe batch, shape
``(n_samples, n_units)``; any leading shape is accepted and flattened into rows, so
``h[..., j]`` are the values of unit j. :func:`collect_activations` gathers these matrices for
every hidden layer found by :func:`plasticity_rl.nn.mlp.hidden_layers`.

The rank metrics use the singular values sigma_1 >= sigma_2 >= ... of ``h``, computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plasticity_rl.nn.mlp import hidden_layers
from plasticity_rl.registry import require

SRANK_TOLERANCE = 1e-6
"""Slack on the srank threshold: k counts once its cumulative share is >= threshold - 1e-6.

Singular values carry round-off (about 1e-7 relative for float32 activations), so a share that
is exactly on the threshold (sigma = [3, 1], threshold 0.75) would otherwise land on either side.
"""

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
"""Module types whose ``weight`` (and ``bias``) the weight metrics read."""


def _rows(h: Tensor) -> Tensor:
    """``h`` as a detached ``(n_rows, n_units)`` matrix: all but the last dim flattened."""
    return h.detach().reshape(-1, h.shape[-1])


def _singular_values(h: Tensor) -> Tensor:
    """Singular values of the row-flattened ``h`` in float64, sorted descending.

    Computed as sqrt of the eigenvalues of the smaller Gram matrix (h^T h or h h^T), several
    times faster than an SVD of a tall probe matrix (1024 x 256: about 5 ms instead of 30 ms);
    in float64 the relative error of sigma_i is ~1e-16 * (sigma_max / sigma_i)^2, far below
    what the rank metrics resolve.
    """
    rows = _rows(h).to(torch.float64)
    gram = rows.T @ rows if rows.shape[0] >= rows.shape[1] else rows @ rows.T
    eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    return eigenvalues.flip(0).sqrt()


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
    rows = h.detach().reshape(*h.shape[:run_dims], -1, h.shape[-1])
    return _normalised_by_layer_mean(rows.abs().mean(dim=-2))


def _normalised_by_layer_mean(magnitude: Tensor) -> Tensor:
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
    return _normalised_by_layer_mean(weight_grad.detach().abs().mean(dim=-1))


def grama_dormant_fraction(weight_grad: Tensor, tau: float = 0.0) -> float:
    """Fraction of gradient-dormant units, s_j <= tau with s from :func:`grama_scores`
    (Liu et al. 2025, GraMa); ``weight_grad`` is a layer's incoming weight gradient
    ``(n_units, n_inputs)``."""
    return (grama_scores(weight_grad) <= tau).float().mean().item()


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


def layer_health(h: Tensor, dormant_tau: float = 0.1) -> dict[str, float]:
    """All activation metrics of one layer (one SVD shared by the three rank metrics).

    Keys: ``dead_fraction``, ``dormant_ratio`` (at ``dormant_tau``), ``effective_rank``,
    ``srank99`` (:func:`srank` at 0.99), ``approximate_rank`` (:func:`approximate_rank` at
    0.99), ``stable_rank``, ``activation_sparsity``.
    Activations of a diverged network (inf or NaN) give NaN rank metrics instead of an error,
    so a run that blows up is still logged.
    """
    finite = bool(torch.isfinite(h).all())
    sigma = _singular_values(h) if finite else None
    nan = float("nan")
    return {
        "dead_fraction": dead_fraction(h),
        "dormant_ratio": dormant_ratio(h, dormant_tau),
        "effective_rank": _effective_rank_of(sigma) if finite else nan,
        "srank99": float(_srank_of(sigma, 0.99)) if finite else nan,
        "approximate_rank": float(_srank_of(sigma.square(), 0.99)) if finite else nan,
        "stable_rank": _stable_rank_of(sigma) if finite else nan,
        "activation_sparsity": activation_sparsity(h),
    }


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
                    [[float(id(p) in ids) for p in params] for ids in members]
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
            self._max = change if self._max is None else torch.maximum(self._max, change)

        return HookHandles(
            [optimizer.register_step_pre_hook(snapshot), optimizer.register_step_post_hook(record)]
        )

    def pop_max(self) -> dict[str, float]:
        """The largest step change of each model since the last call (then reset); {} if none."""
        value, self._max = self._max, None
        return {} if value is None else dict(zip(self._names, value.tolist(), strict=True))


def collect_activations(
    model: nn.Module | Sequence[nn.Module],
    probe: Tensor,
    forward: Callable[[Tensor], Any] | None = None,
) -> dict[str, Tensor]:
    """Post-activation output of every hidden layer of ``model`` on ``probe``, by layer name.

    Hidden layers are found by :func:`plasticity_rl.nn.mlp.hidden_layers` (names ``hidden1``,
    ``hidden2``, ...). Runs ``forward(probe)`` (default ``model(probe)``) under
    ``torch.no_grad()`` with the modules of ``model`` in eval mode and a forward hook on each
    layer's activation module. Hooks are removed and every module's training flag restored
    afterwards, also on error.

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

    def recorder(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def record(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            if name in outputs:
                raise RuntimeError(f"collect_activations: layer {name} ran more than once")
            outputs[name] = output.detach().clone()

        return record

    layers = hidden_layers(model)
    modes = [(m, m.training) for root in roots for m in root.modules()]
    handles: list[RemovableHandle] = []
    try:
        for layer in layers:
            handles.append(layer.activation.register_forward_hook(recorder(layer.name)))
        for root in roots:
            root.eval()
        with torch.no_grad():
            forward(probe)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    missing = [layer.name for layer in layers if layer.name not in outputs]
    if missing:
        raise RuntimeError(f"collect_activations: forward did not run hidden layers {missing}")
    return outputs
