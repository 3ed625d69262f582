"""Optimiser presets created by name, shared by the RL and the supervised side.

Each preset in :data:`OPTIMIZERS` is a small function with explicit keyword arguments that
returns an :data:`OptimizerRecipe` ``(optimizer_class, kwargs)``. Both entry points read this one
table: :func:`make_optimizer` builds the optimiser (and attaches the step hooks),
:func:`sb3_optimizer_args` hands class and kwargs to stable-baselines3, which builds it itself.

Every preset accepts ``lr`` and ``weight_decay`` (coupled L2: weight_decay * p is added to the
gradient, as all torch optimisers here do), and every spec ``update_clip`` (element-wise clip of
the update) and ``grad_clip_norm`` (joint L2-norm clip of the gradients, before the step).
Default learning rates are torch's own defaults.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> opt = make_optimizer(net, {"name": "adagrad", "lr": 2e-4,
    ...                            "initial_accumulator_value": 1e-6, "update_clip": 0.01})
    >>> type(opt).__name__, len(opt.plasticity_handles)
    ('Adagrad', 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from plasticity_rl.nn.layers import register_projections
from plasticity_rl.optim.adam import Adam, check_adam_args
from plasticity_rl.optim.rmsprop import RMSpropEpsInSqrt
from plasticity_rl.optim.trac import DEFAULT_BETAS as DEFAULT_TRAC_BETAS
from plasticity_rl.optim.trac import trac_class
from plasticity_rl.optim.transforms import clip_grad_norm, clip_updates
from plasticity_rl.optim.upgd import UPGD
from plasticity_rl.registry import ConfigError, Registry, require, split_spec

OptimizerRecipe = tuple[type[torch.optim.Optimizer], dict[str, Any]]
"""An optimiser class and the keyword arguments (including ``lr``) to construct it with."""

OPTIMIZERS: Registry[OptimizerRecipe] = Registry("optimizer", setting_key="optimizer.{key}")
"""Optimiser presets by name; each returns an :data:`OptimizerRecipe`."""

SpecType = str | Mapping[str, Any]


def _check_lr_and_decay(lr: float, weight_decay: float) -> None:
    require(lr >= 0, "optimizer.lr", lr, "a number >= 0")
    require(weight_decay >= 0, "optimizer.weight_decay", weight_decay, "a number >= 0")


def _check_decay_rate(key: str, value: float) -> None:
    require(0 <= value < 1, f"optimizer.{key}", value, "a number in [0, 1)")


@OPTIMIZERS.register("sgd")
def sgd(lr: float = 1e-3, weight_decay: float = 0.0) -> OptimizerRecipe:
    """Plain SGD: p <- p - lr (g + weight_decay p)."""
    return sgdm(lr=lr, momentum=0.0, weight_decay=weight_decay)


@OPTIMIZERS.register("sgdm")
def sgdm(lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0) -> OptimizerRecipe:
    """SGD with heavy-ball momentum (torch.optim.SGD): b <- momentum b + g, p <- p - lr b."""
    _check_lr_and_decay(lr, weight_decay)
    _check_decay_rate("momentum", momentum)
    return torch.optim.SGD, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}


def _check_eps(eps: float, eps_in_sqrt: bool) -> None:
    require(eps >= 0, "optimizer.eps", eps, "a number >= 0")
    require(isinstance(eps_in_sqrt, bool), "optimizer.eps_in_sqrt", eps_in_sqrt, "a bool")


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    eps_in_sqrt: bool = False,
) -> OptimizerRecipe:
    """RMSprop (Tieleman & Hinton 2012).

    v <- alpha v + (1 - alpha) g^2,  p <- p - lr g / (sqrt(v) + eps) (``torch.optim.RMSprop``);
    with ``eps_in_sqrt``, p <- p - lr g / sqrt(v + eps) (optax's placement, used by the code of
    Keskinen 2024; :class:`~plasticity_rl.optim.rmsprop.RMSpropEpsInSqrt`).
    """
    _check_lr_and_decay(lr, weight_decay)
    _check_decay_rate("alpha", alpha)
    _check_eps(eps, eps_in_sqrt)
    optimizer_class = RMSpropEpsInSqrt if eps_in_sqrt else torch.optim.RMSprop
    return optimizer_class, {
        "lr": lr,
        "alpha": alpha,
        "eps": eps,
        "weight_decay": weight_decay,
    }


@OPTIMIZERS.register("adagrad")
def adagrad(
    lr: float = 1e-2,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
    eps_in_sqrt: bool = False,
) -> OptimizerRecipe:
    """Adagrad (Duchi et al. 2011): s <- s + g^2 from s_0, p <- p - lr g / (sqrt(s) + eps).

    With ``eps_in_sqrt``, p <- p - lr g / sqrt(s + eps) (``optax.adagrad``, used by the code of
    Keskinen 2024 with s_0 = ``initial_accumulator_value`` = 1e-6 and optax's eps = 1e-7). As
    s + eps = (s_0 + eps) + sum g^2, that is ``torch.optim.Adagrad`` started from s_0 + eps
    with eps = 0, which is what this preset builds (its ``sum`` state then holds s + eps).
    """
    _check_lr_and_decay(lr, weight_decay)
    require(
        initial_accumulator_value >= 0,
        "optimizer.initial_accumulator_value",
        initial_accumulator_value,
        "a number >= 0",
    )
    _check_eps(eps, eps_in_sqrt)
    if eps_in_sqrt:
        initial_accumulator_value, eps = initial_accumulator_value + eps, 0.0
    return torch.optim.Adagrad, {
        "lr": lr,
        "initial_accumulator_value": initial_accumulator_value,
        "eps": eps,
        "weight_decay": weight_decay,
    }


@OPTIMIZERS.register("adam")
def adam(
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    bias_correction: bool = True,
) -> OptimizerRecipe:
    """Adam (Kingma & Ba 2015), :class:`plasticity_rl.optim.Adam`."""
    betas = check_adam_args(lr, betas, eps, weight_decay)
    return Adam, {
        "lr": lr,
        "betas": betas,
        "eps": eps,
        "weight_decay": weight_decay,
        "bias_correction": bool(bias_correction),
    }


@OPTIMIZERS.register("adam_tuned")
def adam_tuned(lr: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0.0) -> OptimizerRecipe:
    """Adam with beta1 = beta2 = 0.99, as tuned by Dohare et al. 2024."""
    return adam(lr=lr, betas=(0.99, 0.99), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adam_no_bias_correction")
def adam_no_bias_correction(
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> OptimizerRecipe:
    """Adam without bias correction (m_hat = m, v_hat = v), as in Keskinen 2024 (Hard ASH)."""
    return adam(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=False)


def _check_upgd_args(lr: float, weight_decay: float, beta_utility: float, sigma: float) -> None:
    _check_lr_and_decay(lr, weight_decay)
    _check_decay_rate("beta_utility", beta_utility)
    require(sigma >= 0, "optimizer.sigma", sigma, "a number >= 0")


@OPTIMIZERS.register("upgd")
def upgd(
    lr: float = 1e-5, weight_decay: float = 0.001, beta_utility: float = 0.999, sigma: float = 0.001
) -> OptimizerRecipe:
    """UPGD (Elsayed & Mahmood 2024), the authors' README version and defaults:
    theta <- theta (1 - lr wd) - 2 lr (g + xi)(1 - s), s the weight's scaled utility
    (:mod:`plasticity_rl.optim.upgd`). ``weight_decay`` is decoupled here."""
    _check_upgd_args(lr, weight_decay, beta_utility, sigma)
    return UPGD, {"lr": lr, "weight_decay": weight_decay, "beta_utility": beta_utility,
                  "sigma": sigma, "adaptive": False}  # fmt: skip


@OPTIMIZERS.register("adaptive_upgd")
def adaptive_upgd(
    lr: float = 3e-4,
    weight_decay: float = 0.001,
    beta_utility: float = 0.999,
    sigma: float = 0.001,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-5,
) -> OptimizerRecipe:
    """UPGD with Adam's moments, as the authors' PPO runs use it (their settings as defaults):
    theta <- theta (1 - lr wd) - 2 lr [m_hat (1 - s) / (sqrt(v_hat) + eps) + xi (1 - s)]
    (:mod:`plasticity_rl.optim.upgd`)."""
    _check_upgd_args(lr, weight_decay, beta_utility, sigma)
    betas = check_adam_args(lr, betas, eps, weight_decay)
    return UPGD, {"lr": lr, "weight_decay": weight_decay, "beta_utility": beta_utility,
                  "sigma": sigma, "adaptive": True, "betas": betas, "eps": eps}  # fmt: skip


@OPTIMIZERS.register("trac")
def trac(
    lr: float = 1e-3,
    base: SpecType = "adam",
    weight_decay: float = 0.0,
    betas: Sequence[float] = DEFAULT_TRAC_BETAS,
    s_prev: float = 1e-8,
    eps: float = 1e-8,
) -> OptimizerRecipe:
    """TRAC (Muppidi et al. 2024) around the ``base`` optimiser preset (a name, or a spec
    without ``lr``/``weight_decay``, which are given here): theta = theta_ref + S_t Delta_t with
    the parameter-free scale S_t (:mod:`plasticity_rl.optim.trac`). ``betas``, ``s_prev`` and
    ``eps`` are TRAC's own (the package's defaults)."""
    _check_lr_and_decay(lr, weight_decay)
    require(len(betas) > 0 and all(0 <= float(b) < 1 for b in betas), "optimizer.betas", betas,
            "a non-empty list of numbers in [0, 1)")  # fmt: skip
    require(s_prev > 0, "optimizer.s_prev", s_prev, "a number > 0")
    require(eps > 0, "optimizer.eps", eps, "a number > 0")
    base_name, base_kwargs = split_spec(base, "optimizer.base")
    require(base_name != "trac", "optimizer.base", base_name, "an optimiser preset other than trac")
    base_class, kwargs = OPTIMIZERS.create(base_name, lr=lr, weight_decay=weight_decay,
                                           **base_kwargs)  # fmt: skip
    return trac_class(base_class), {**kwargs, "trac_betas": tuple(float(b) for b in betas),
                                    "trac_s_prev": s_prev, "trac_eps": eps}  # fmt: skip


@OPTIMIZERS.register("sam")
def sam(
    lr: float = 0.1,
    base: SpecType = "sgdm",
    weight_decay: float = 0.0,
    rho: float = 0.05,
    adaptive: bool = False,
) -> OptimizerRecipe:
    """SAM (Foret et al. 2021) around the ``base`` optimiser preset (a name, or a spec without
    ``lr``/``weight_decay``, which are given here): the base steps on the gradient at
    w + rho g / ||g|| (:mod:`plasticity_rl.optim.sam`); ``adaptive``: ASAM (Kwon et al. 2021),
    w + rho |w|^2 g / || |w| g ||. Defaults as the authors' setting: rho 0.05 on SGD with
    momentum 0.9 at lr 0.1 (ASAM's papers use rho 0.5-2). Supervised runs only (two passes a
    step: the trainer drives them)."""
    from plasticity_rl.optim.sam import sam_class

    _check_lr_and_decay(lr, weight_decay)
    require(rho >= 0, "optimizer.rho", rho, "a number >= 0")
    require(isinstance(adaptive, bool), "optimizer.adaptive", adaptive, "a bool")
    base_name, base_kwargs = split_spec(base, "optimizer.base")
    require(base_name not in ("sam", "trac", "kron"), "optimizer.base", base_name,
            "an optimiser preset other than sam, trac or kron")  # fmt: skip
    base_class, kwargs = OPTIMIZERS.create(base_name, lr=lr, weight_decay=weight_decay,
                                           **base_kwargs)  # fmt: skip
    return sam_class(base_class), {**kwargs, "sam_rho": float(rho), "sam_adaptive": adaptive}


@OPTIMIZERS.register("kron")
def kron(
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    beta: float = 0.9,
    precond_lr: float = 0.1,
    max_size_triangular: int = 2048,
    memory_save_mode: str | None = None,
) -> OptimizerRecipe:
    """PSGD Kron (Li 2018), heavyball's ``PSGDKron`` with its defaults: theta <- theta - lr P m
    with momentum m (``beta``) and a learned Kronecker-factored preconditioner P
    (:mod:`plasticity_rl.optim.kron`). ``weight_decay`` is decoupled here; ``memory_save_mode``
    (null, ``one_diag``, ``smart_one_diag``, ``all_diag``) makes factors diagonal."""
    from plasticity_rl.optim.kron import Kron

    _check_lr_and_decay(lr, weight_decay)
    _check_decay_rate("beta", beta)
    require(precond_lr > 0, "optimizer.precond_lr", precond_lr, "a number > 0")
    require(isinstance(max_size_triangular, int) and max_size_triangular >= 1,
            "optimizer.max_size_triangular", max_size_triangular, "an integer >= 1")  # fmt: skip
    modes = (None, "one_diag", "smart_one_diag", "all_diag")
    require(memory_save_mode in modes, "optimizer.memory_save_mode", memory_save_mode, modes)
    return Kron, {"lr": lr, "weight_decay": weight_decay, "beta": beta, "precond_lr": precond_lr,
                  "max_size_triangular": max_size_triangular,
                  "memory_save_mode": memory_save_mode}  # fmt: skip


STEP_HOOK_KEYS = ("update_clip", "grad_clip_norm")
"""Spec keys that are not preset kwargs but step hooks (:func:`attach_step_hooks`)."""


def _recipe(spec: SpecType, overrides: Mapping[str, Any]) -> tuple[OptimizerRecipe, dict[str, Any]]:
    """Look up a spec's preset: ``((class, kwargs), step hook settings)``; overrides win."""
    name, kwargs = split_spec(spec, "optimizer")
    kwargs.update(overrides)
    hooks = {key: kwargs.pop(key, None) for key in STEP_HOOK_KEYS}
    return OPTIMIZERS.create(name, **kwargs), hooks


def make_optimizer(
    model_or_params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
    spec: SpecType,
    **overrides: Any,
) -> torch.optim.Optimizer:
    """Build the optimiser a spec names and attach its step hooks (see :func:`attach_step_hooks`).

    Args:
        model_or_params: a module (its projections are registered too), or parameters /
            parameter groups.
        spec: a preset name, or ``{name: ..., **preset kwargs, update_clip: float | None,
            grad_clip_norm: float | None}``.
        **overrides: preset kwargs (or step hook settings) that replace the spec's.

    Returns:
        the optimiser; the attached hook handles are in ``optimizer.plasticity_handles``.
    """
    (optimizer_class, kwargs), hooks = _recipe(spec, overrides)
    is_module = isinstance(model_or_params, nn.Module)
    params = model_or_params.parameters() if is_module else model_or_params
    optimizer = optimizer_class(params, **kwargs)
    attach_step_hooks(optimizer, model_or_params if is_module else None, **hooks)
    return optimizer


def attach_step_hooks(
    optimizer: torch.optim.Optimizer,
    model: nn.Module | None = None,
    *,
    update_clip: float | None = None,
    grad_clip_norm: float | None = None,
) -> list[Any]:
    """Attach, in this order, the gradient-norm clip, the update clip and the model's
    constraint projections (SDM).

    The order matters: the projection must see the clipped step. The new handles are appended
    to the list ``optimizer.plasticity_handles`` (created if missing) and also returned; each has
    ``remove()``.

    Args:
        update_clip: clip each element of the update to [-update_clip, update_clip]; None = off.
        grad_clip_norm: rescale the gradients to a joint L2 norm <= grad_clip_norm before the
            step (:func:`~plasticity_rl.optim.transforms.clip_grad_norm`); None = off. Gradient
            pre-hooks attached later (EWC/MAS/SI penalties) add their terms after the clip.
        model: if given, :func:`plasticity_rl.nn.layers.register_projections` is attached.
    """
    handles: list[Any] = []
    if grad_clip_norm is not None:
        handles.append(clip_grad_norm(optimizer, grad_clip_norm))
    if update_clip is not None:
        handles.append(clip_updates(optimizer, update_clip))
    projections = None if model is None else register_projections(model, optimizer)
    if projections is not None:
        handles.append(projections)
    existing = getattr(optimizer, "plasticity_handles", [])
    optimizer.plasticity_handles = existing + handles  # type: ignore[attr-defined]
    return handles


def sb3_optimizer_args(spec: SpecType) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``(optimizer_class, optimizer_kwargs)`` for stable-baselines3's ``policy_kwargs``.

    SB3 builds ``optimizer_class(params, lr=lr_schedule(1), **optimizer_kwargs)`` itself, so the
    kwargs exclude ``lr``: set SB3's ``learning_rate`` instead (a spec that sets ``lr`` raises
    :class:`ConfigError`, rather than being silently ignored). ``update_clip`` cannot reach SB3
    this way: once SB3 has built the optimiser, call
    ``attach_step_hooks(policy.optimizer, policy, update_clip=...)`` with the spec's value.
    """
    name, kwargs = split_spec(spec, "optimizer")
    if name == "sam":
        why = "an optimiser SB3's PPO can step (SAM needs two passes a step: supervised only)"
        raise ConfigError("optimizer.name", name, why)
    if "lr" in kwargs:
        raise ConfigError(
            "optimizer.lr", kwargs["lr"], "no lr in an SB3 optimizer spec (set SB3's learning_rate)"
        )
    if kwargs.get("grad_clip_norm") is not None:
        raise ConfigError(
            "optimizer.grad_clip_norm", kwargs["grad_clip_norm"],
            "null for SB3 (PPO clips the gradient norm itself: ppo.max_grad_norm)",
        )  # fmt: skip
    (optimizer_class, optimizer_kwargs), _ = _recipe(spec, {})
    optimizer_kwargs.pop("lr")
    return optimizer_class, optimizer_kwargs
