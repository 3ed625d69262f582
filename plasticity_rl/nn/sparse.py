"""Sparse activations: Top-K (with k annealing and the GABA switch), ASH, Hard ASH, LWTA.

Every activation acts on the pre-activation vector of one sample over the units of a layer,
which is the LAST dimension of its input; any leading batch shape works (``(units,)``,
``(B, units)``, ``(T, B, units)``). They register themselves in
:data:`plasticity_rl.nn.activations.ACTIVATIONS`:

    >>> from plasticity_rl.nn.activations import make_activation
    >>> make_activation({"name": "topk", "k": 2})
    TopK(k=2, mode=subtract)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plasticity_rl.nn.activations import ACTIVATIONS
from plasticity_rl.registry import require

TOPK_MODES = ("subtract", "mask")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _size_gaba_counts(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: give unsized (lazy) GABA counters the saved width."""
    saved = state_dict.get(prefix + "gaba_counts")
    if saved is not None and module.gaba_counts.numel() == 0:
        module.gaba_counts = torch.zeros_like(saved, device=module.gaba_counts.device)


@ACTIVATIONS.register("topk")
class TopK(nn.Module):
    """Top-K activation: only the k largest pre-activations of each sample stay non-zero.

    With x_(i) the i-th largest value of a sample (over the last dimension):

    - ``mode="mask"``: ``x_j if x_j >= x_(k) else 0`` (Keskinen 2024's ``topk_mask``). With
      ``relu_input=True`` the input goes through ReLU first, as in the code of Bricken et al.
      2023 ("Sparse Distributed Memory is a Continual Learner", ``Top_K``): a sample with fewer
      than k positive values keeps only those. Ties at the threshold: every unit equal to it is
      kept.
    - ``mode="subtract"``: ``clip(x_j - x_(k), 0, clip_max)`` (``clip_max=None``:
      ``relu(x_j - x_(k))``). Subtracting the k-th largest value, as the code of Keskinen 2024
      ("Hard ASH", with ``clip_max=2``) and of Bricken et al. 2023 does, leaves k - 1 non-zero
      units when there are no ties (none for k = 1): unit k sits exactly at the threshold.
      With ``threshold_grad=False`` x_(k) is detached; with ``threshold_grad=True`` (Keskinen's
      code: ``jax.lax.top_k`` is differentiable) the gradient flows through the threshold to
      the unit at rank k, which receives minus the sum of the gradients of the units above 0
      and below ``clip_max``.

    k annealing (``k_max`` and ``anneal_epochs``), as Bricken et al.'s ``LINEAR_DECAY``: after
    e finished training epochs (:func:`end_epoch`, which the trainer calls at the end of every
    epoch), the k in use (:attr:`current_k`) is
    ``int(min(k_max, max(k_max - (k_max - k) / anneal_epochs * e, k)))`` (truncated, not
    rounded), so it steps once per epoch and equals ``k`` from epoch ``anneal_epochs`` on.

    GABA switch (Bricken et al. 2023; subtract mode only), with ``gaba_switch_T = T``: the
    input goes through ReLU first and the threshold is the (k+1)-th largest value (the code
    adds 1 to k only here), so a unit's output is
    ``o_j = relu(relu(x_j) - g_j * relu(x)_(k+1))`` with ``g_j = clamp(-1 + 2 c_j / T, -1, 1)``.
    c_j counts the samples in which o_j > 0, in EVERY forward pass (training and evaluation,
    as the code does), after the output is computed. A unit starts excitatory (g = -1: all
    units with a positive threshold fire) and turns into a plain Top-K unit (g = +1, k winners)
    after T activations. If k + 1 exceeds the width, the smallest value is the threshold.

    Both counters are buffers (in ``state_dict`` and checkpoints). Without ``width`` the GABA
    counters are sized at the first forward pass; loading a state dict into a fresh module sizes
    them from the saved tensor.

    Args:
        k: number of active units per sample (the final k when annealing).
        mode: ``"subtract"`` or ``"mask"`` (see above).
        k_max: k at the start of annealing (>= k); requires ``anneal_epochs >= 1``.
        anneal_epochs: training epochs over which k goes from ``k_max`` to ``k``.
        gaba_switch_T: activations after which a unit becomes inhibitory.
        width: layer width; optional, sizes the GABA counters up front and is checked at forward.
        clip_max: upper clip of the subtract output (Keskinen 2024: 2); None: no upper clip.
        threshold_grad: let the gradient flow through the subtracted threshold.
        relu_input: apply ReLU to the input first (Bricken et al. 2023's mask; the GABA switch
            always does).
    """

    def __init__(
        self,
        k: int,
        mode: str = "subtract",
        k_max: int | None = None,
        anneal_epochs: int = 0,
        gaba_switch_T: float | None = None,
        width: int | None = None,
        clip_max: float | None = None,
        threshold_grad: bool = False,
        relu_input: bool = False,
    ):
        super().__init__()
        require(_is_int(k) and k >= 1, "topk.k", k, "an integer >= 1 (and <= layer width)")
        require(mode in TOPK_MODES, "topk.mode", mode, TOPK_MODES)
        require(
            _is_int(anneal_epochs) and anneal_epochs >= 0,
            "topk.anneal_epochs",
            anneal_epochs,
            "an integer >= 0",
        )
        if k_max is not None:
            require(
                _is_int(k_max) and k_max >= k,
                "topk.k_max",
                k_max,
                f"null or an integer >= k ({k}) (and <= layer width)",
            )
            require(
                anneal_epochs >= 1,
                "topk.anneal_epochs",
                anneal_epochs,
                "an integer >= 1 with k_max",
            )
        else:
            require(
                anneal_epochs == 0,
                "topk.anneal_epochs",
                anneal_epochs,
                "0 unless k_max is set (k_max gives the k annealing starts from)",
            )
        if gaba_switch_T is not None:
            require(
                _is_real(gaba_switch_T) and gaba_switch_T > 0,
                "topk.gaba_switch_T",
                gaba_switch_T,
                "null or a number > 0",
            )
            require(mode == "subtract", "topk.mode", mode, "subtract (with gaba_switch_T)")
        if clip_max is not None:
            require(
                _is_real(clip_max) and clip_max > 0,
                "topk.clip_max",
                clip_max,
                "null or a number > 0",
            )
        require(isinstance(threshold_grad, bool), "topk.threshold_grad", threshold_grad, "a bool")
        require(isinstance(relu_input, bool), "topk.relu_input", relu_input, "a bool")
        if clip_max is not None or threshold_grad:
            require(
                mode == "subtract", "topk.mode", mode, "subtract (with clip_max or threshold_grad)"
            )
        if width is not None:
            require(
                _is_int(width) and width >= max(k, k_max or k),
                "topk.width",
                width,
                f"null or an integer >= k_max and k ({max(k, k_max or k)})",
            )
        self.k = int(k)
        self.mode = mode
        self.k_max = None if k_max is None else int(k_max)
        self.anneal_epochs = int(anneal_epochs)
        self.gaba_switch_T = None if gaba_switch_T is None else float(gaba_switch_T)
        self.width = None if width is None else int(width)
        self.clip_max = None if clip_max is None else float(clip_max)
        self.threshold_grad = threshold_grad
        self.relu_input = relu_input or gaba_switch_T is not None
        self.counting = True  # False inside activity_counters_paused
        if self.k_max is not None:
            # Training epochs finished so far (end_epoch).
            self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        if self.gaba_switch_T is not None:
            # c_j: samples in which unit j fired; empty until the width is known.
            self.register_buffer("gaba_counts", torch.zeros(self.width or 0, dtype=torch.long))
            self.register_load_state_dict_pre_hook(_size_gaba_counts)

    @property
    def current_k(self) -> int:
        """The k in use now: annealed from ``k_max`` to ``k``, or ``k`` without annealing."""
        if self.k_max is None:
            return self.k
        slope = -(self.k_max - self.k) / self.anneal_epochs
        return int(min(self.k_max, max(self.k_max + slope * int(self.epochs), self.k)))

    def end_epoch(self) -> None:
        """Count one finished training epoch (advances the k annealing)."""
        if self.k_max is not None:
            self.epochs += 1

    def gaba_gain(self) -> Tensor:
        """g_j = clamp(-1 + 2 c_j / T, -1, 1) for every unit (empty before the first forward)."""
        return (-1.0 + (2.0 / self.gaba_switch_T) * self.gaba_counts.float()).clamp(-1.0, 1.0)

    def _check_width(self, width: int) -> None:
        require(self.k <= width, "topk.k", self.k, f"an integer >= 1 and <= layer width ({width})")
        if self.k_max is not None:
            require(
                self.k_max <= width,
                "topk.k_max",
                self.k_max,
                f"an integer >= k and <= layer width ({width})",
            )
        known = self.width
        if self.gaba_switch_T is not None and self.gaba_counts.numel() > 0:
            known = self.gaba_counts.numel()  # the width the GABA counters were sized for
        if known is not None:
            require(known == width, "topk.width", known, f"the layer width ({width})")

    def forward(self, x: Tensor) -> Tensor:
        width = x.shape[-1]
        self._check_width(width)
        k = self.current_k
        gaba = self.gaba_switch_T is not None
        if self.relu_input:
            x = F.relu(x)
        # The k (+1 if it exists) largest values of each sample, largest first.
        top = (x if self.threshold_grad else x.detach()).topk(min(k + 1, width), dim=-1).values
        if self.mode == "mask":
            return x * (x.detach() >= top[..., k - 1 : k].detach())
        # Bricken et al.'s code: the (k+1)-th largest value with the GABA switch, the k-th without.
        rank = min(k + 1, width) if gaba else k
        threshold = top[..., rank - 1 : rank]
        if gaba:
            if self.gaba_counts.numel() == 0:
                self.gaba_counts = torch.zeros(width, dtype=torch.long, device=x.device)
            threshold = self.gaba_gain().to(x.dtype) * threshold
        out = F.relu(x - threshold)
        if self.clip_max is not None:
            out = out.clamp(max=self.clip_max)
        if gaba and self.counting:
            with torch.no_grad():
                self.gaba_counts += (out.detach() > 0).reshape(-1, width).sum(0)
        return out

    def extra_repr(self) -> str:
        parts = [f"k={self.k}", f"mode={self.mode}"]
        if self.k_max is not None:
            parts += [f"k_max={self.k_max}", f"anneal_epochs={self.anneal_epochs}"]
        if self.gaba_switch_T is not None:
            parts.append(f"gaba_switch_T={self.gaba_switch_T:g}")
        if self.width is not None:
            parts.append(f"width={self.width}")
        if self.clip_max is not None:
            parts.append(f"clip_max={self.clip_max:g}")
        if self.threshold_grad:
            parts.append("threshold_grad=True")
        if self.relu_input and self.gaba_switch_T is None:
            parts.append("relu_input=True")
        return ", ".join(parts)


@contextmanager
def activity_counters_paused(model: nn.Module) -> Iterator[None]:
    """Inside, the GABA counters of ``model``'s Top-K layers do not move: for forwards that are
    not the learner's own (per-sample gradients under ``torch.func``, which cannot mutate
    buffers, e.g. EWC's Fisher information)."""
    layers = [m for m in model.modules() if isinstance(m, TopK)]
    for layer in layers:
        layer.counting = False
    try:
        yield
    finally:
        for layer in layers:
            layer.counting = True


def end_epoch(model: nn.Module) -> None:
    """Tell every layer of ``model`` that a training epoch has ended (:meth:`TopK.end_epoch`)."""
    for module in model.modules():
        if isinstance(module, TopK):
            module.end_epoch()


def ash_gate_input(x: Tensor, alpha: float, z_k: float) -> Tensor:
    """alpha * (x - mu - z_k * sigma), mu and sigma the mean and population std of each sample.

    The statistics are over the last dimension (the layer's units); sigma uses the population
    std (``correction=0``, i.e. divided by the width, not width - 1), as in Lee et al. 2022.
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, correction=0, keepdim=True)
    return alpha * (x - mean - z_k * std)


def _check_ash_args(name: str, alpha: float, z_k: float) -> None:
    require(_is_real(alpha) and alpha > 0, f"{name}.alpha", alpha, "a number > 0")
    require(_is_real(z_k), f"{name}.z_k", z_k, "a finite number")


@ACTIVATIONS.register("ash")
class ASH(nn.Module):
    """Adaptive SwisH: ``x * sigmoid(alpha * (x - mu - z_k * sigma))``.

    Lee et al. 2022, "Stochastic Adaptive Activation Function" (NeurIPS). mu and sigma are the
    mean and population std of the sample over the layer's units (:func:`ash_gate_input`); with
    Gaussian pre-activations ``z_k = 2.3`` lets roughly the top 1% of units through. z_k is a
    fixed setting here, not a trained parameter.
    """

    def __init__(self, alpha: float = 3.0, z_k: float = 2.3):
        super().__init__()
        _check_ash_args("ash", alpha, z_k)
        self.alpha, self.z_k = float(alpha), float(z_k)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(ash_gate_input(x, self.alpha, self.z_k))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, z_k={self.z_k:g}"


@ACTIVATIONS.register("hard_ash")
class HardASH(nn.Module):
    """Hard ASH: ``clip(x, 0, x_max) * hard_sigmoid(alpha * (x - mu - z_k * sigma))``.

    Keskinen 2024 ("Hard ASH"); ``hard_sigmoid(u) = clip(u + 3, 0, 6) / 6`` and mu, sigma as in
    :class:`ASH` (population std over the layer's units).
    """

    def __init__(self, alpha: float = 3.0, z_k: float = 2.3, x_max: float = 2.0):
        super().__init__()
        _check_ash_args("hard_ash", alpha, z_k)
        require(_is_real(x_max) and x_max > 0, "hard_ash.x_max", x_max, "a number > 0")
        self.alpha, self.z_k, self.x_max = float(alpha), float(z_k), float(x_max)

    def forward(self, x: Tensor) -> Tensor:
        gate = F.hardsigmoid(ash_gate_input(x, self.alpha, self.z_k))
        return x.clamp(0.0, self.x_max) * gate

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, z_k={self.z_k:g}, x_max={self.x_max:g}"


@ACTIVATIONS.register("lwta")
class LWTA(nn.Module):
    """Local winner-take-all: in each of ``groups`` contiguous equal groups only the max survives.

    Srivastava et al. 2013, "Compete to Compute". Units ``[i * s, (i + 1) * s)`` form group i
    (s = width / groups); the largest value of each group passes unchanged, the others become 0,
    so gradient flows only to the winners. Ties: the first maximal unit of the group wins.
    """

    def __init__(self, groups: int):
        super().__init__()
        require(_is_int(groups) and groups >= 1, "lwta.groups", groups, "an integer >= 1")
        self.groups = int(groups)

    def forward(self, x: Tensor) -> Tensor:
        width = x.shape[-1]
        require(
            width % self.groups == 0,
            "lwta.groups",
            self.groups,
            f"a divisor of the layer width ({width})",
        )
        grouped = x.unflatten(-1, (self.groups, width // self.groups))
        # argmax returns the first maximal index, hence first-max-wins on ties.
        winner = grouped.detach().argmax(dim=-1, keepdim=True)
        keep = torch.zeros_like(grouped).scatter_(-1, winner, 1.0)
        return (grouped * keep).flatten(-2)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
