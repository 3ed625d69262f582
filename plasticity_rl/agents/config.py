"""The typed config of one RL run: env preset + agent preset + run settings.

An agent preset (``agents/*.yaml``) fills ``ppo``, ``policy_net``, ``value_net``, ``optimizer``,
``method`` and ``normalize_observations``; an env preset (``envs/*.yaml``) fills
``env``. Any field can be overridden with ``--set key=value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plasticity_rl.config import load_preset, preset_names
from plasticity_rl.device import resolve_device
from plasticity_rl.nn import MLPConfig
from plasticity_rl.registry import require


def _lop_net() -> MLPConfig:
    return MLPConfig(hidden_sizes=[256, 256], activation="relu", init="lecun_uniform")


@dataclass
class PPOConfig:
    """PPO hyper-parameters (names as in stable-baselines3's ``PPO``)."""

    n_steps: int = 2048
    """Env steps per rollout, per env copy."""
    batch_size: int = 128
    """Minibatch size (samples per optimiser step)."""
    n_epochs: int = 10
    """Passes over each rollout."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 1.0
    max_grad_norm: float | None = None
    """Global gradient-norm clip; null = none."""
    normalize_advantage: bool = True
    log_std_init: float = 0.0
    """State-independent log standard deviation of the Gaussian policy at init."""
    target_kl: float | None = None


@dataclass
class EnvConfig:
    """Which Gymnasium env to train on and how many copies."""

    id: str = "plasticity_rl/HopperFriction-v5"
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make`` (e.g. the friction schedule). A schedule's
    ``every_env_steps`` counts the run's env steps over all copies: each of ``n_envs`` copies
    gets ``every_env_steps / n_envs`` of its own (a multiple of ``n_envs`` is required)."""
    n_envs: int = 1
    vec_env: str = "dummy"
    """``dummy`` (one process) or ``subproc`` (one process per env copy)."""


@dataclass
class LoggingConfig:
    metrics_every_env_steps: int = 10_000
    """Network-health metrics are logged at the first rollout end after this many env steps."""
    probe_size: int = 1024
    """Observations of the latest rollout used as the probe batch for the metrics."""
    dormant_tau: float = 0.1
    """Threshold of the dormant-ratio metric (Sokar et al. 2023)."""
    checkpoint_every_env_steps: int = 100_000
    """A checkpoint is written at the first rollout start after this many env steps."""


@dataclass
class RLRunConfig:
    """Everything that defines one PPO run; saved as ``config.yaml`` in the run directory."""

    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    policy_net: MLPConfig = field(default_factory=_lop_net)
    value_net: MLPConfig = field(default_factory=_lop_net)
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adam", "lr": 1e-4})
    """Optimiser preset from ``plasticity_rl.optim`` with its settings, ``lr`` included, and
    optionally ``update_clip`` (element-wise clip of every update, Keskinen 2024)."""
    method: dict[str, Any] = field(default_factory=dict)
    """Interventions by name with their settings; each acts once per optimiser step."""
    normalize_observations: bool = False
    """Wrap the env in SB3's ``VecNormalize`` (observations only)."""
    seed: int = 0
    device: str = "cpu"
    """Where the policy and value networks and their updates live: ``auto``, ``cpu``,
    ``cuda`` or ``cuda:N`` (:mod:`plasticity_rl.device`); envs step on the CPU. The CPU is the
    default: SB3's PPO with MLP policies of this size is faster there (the GPU check in
    ``benchmarks/gpu_check.sh`` measures it)."""
    torch_threads: int = 1
    """Threads torch may use (``torch.set_num_threads``). One keeps parallel runs (the sweep
    runs one per core) from competing; a run alone on a machine may take more for its
    updates."""
    total_steps: int = 1_000_000
    """Env steps to train for, summed over env copies."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    env_preset: str = ""
    """Name or path of the env preset the run was built from (recorded, not read)."""
    agent_preset: str = ""
    """Name or path of the agent preset the run was built from (recorded, not read)."""


def rl_agent_presets() -> list[str]:
    """The agent presets that define a PPO agent (``ppo`` and ``policy_net`` sections), the
    bases ``lop`` (the paper's PPO) and layers such as ``fast`` (no networks) aside."""
    return [n for n in preset_names("agents")
            if n != "lop" and {"ppo", "policy_net"} <= set(load_preset("agents", n))]  # fmt: skip


def validate(cfg: RLRunConfig) -> None:
    """Range checks that types alone cannot express; raises ``ConfigError``."""
    resolve_device(cfg.device)
    p = cfg.ppo
    require(cfg.env.n_envs >= 1, "env.n_envs", cfg.env.n_envs, "an integer >= 1")
    require(p.n_steps >= 1, "ppo.n_steps", p.n_steps, "an integer >= 1")
    smallest = 2 if p.normalize_advantage else 1  # one sample's advantage std is NaN
    require(p.batch_size >= smallest, "ppo.batch_size", p.batch_size,
            f"an integer >= {smallest}" + (" (with ppo.normalize_advantage)" if smallest == 2
                                           else ""))  # fmt: skip
    require(
        p.n_steps * cfg.env.n_envs >= p.batch_size,
        "ppo.batch_size",
        p.batch_size,
        f"<= ppo.n_steps * env.n_envs = {p.n_steps * cfg.env.n_envs}",
    )
    require(p.n_epochs >= 1, "ppo.n_epochs", p.n_epochs, "an integer >= 1")
    require(0 <= p.gamma <= 1, "ppo.gamma", p.gamma, "a number in [0, 1]")
    require(0 <= p.gae_lambda <= 1, "ppo.gae_lambda", p.gae_lambda, "a number in [0, 1]")
    require(p.clip_range > 0, "ppo.clip_range", p.clip_range, "a number > 0")
    require(p.ent_coef >= 0, "ppo.ent_coef", p.ent_coef, "a number >= 0")
    require(p.vf_coef >= 0, "ppo.vf_coef", p.vf_coef, "a number >= 0")
    require(
        p.max_grad_norm is None or p.max_grad_norm > 0,
        "ppo.max_grad_norm",
        p.max_grad_norm,
        "null or a number > 0",
    )
    require(
        cfg.env.vec_env in ("dummy", "subproc"), "env.vec_env", cfg.env.vec_env, "dummy, subproc"
    )
    require(cfg.total_steps >= 1, "total_steps", cfg.total_steps, "an integer >= 1")
    require(cfg.torch_threads >= 1, "torch_threads", cfg.torch_threads, "an integer >= 1")
    log = cfg.logging
    require(
        log.metrics_every_env_steps >= 1,
        "logging.metrics_every_env_steps",
        log.metrics_every_env_steps,
        "an integer >= 1",
    )
    require(log.probe_size >= 1, "logging.probe_size", log.probe_size, "an integer >= 1")
    require(
        log.checkpoint_every_env_steps >= 1,
        "logging.checkpoint_every_env_steps",
        log.checkpoint_every_env_steps,
        "an integer >= 1",
    )
