"""Checkpoints of a PPO run that resume to exactly the uninterrupted run (on CPU, same seed).

A checkpoint holds only tensors and plain Python data and is loaded with
``torch.load(weights_only=True)``: no arbitrary object is ever unpickled. It contains the policy
and optimiser state, every method's state, each env copy's full state (MuJoCo state, episode
counters, non-stationary schedule), the observation normaliser, SB3's rollout counters and the
Python, NumPy and PyTorch random states. It is written and verified by
:mod:`plasticity_rl.rundir` (atomic, sha256, ``previous.pt`` kept), and checked against the run
being resumed (env copies, network shapes, methods) before any of it is used.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from plasticity_rl.device import cuda_rng_state, set_cuda_rng_state, to_device
from plasticity_rl.methods import Method
from plasticity_rl.registry import ConfigError
from plasticity_rl.rundir import check_state_dict
from plasticity_rl.rundir import load_checkpoint as load_verified
from plasticity_rl.rundir import save_checkpoint as save_verified

FORMAT_VERSION = 1


def _rng_state(device: torch.device) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": cuda_rng_state(device),
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    set_cuda_rng_state(state.get("cuda"), device)


def _normalizer_state(env: Any) -> dict[str, Any] | None:
    if not isinstance(env, VecNormalize):
        return None
    return {
        "obs_mean": torch.from_numpy(env.obs_rms.mean.copy()),
        "obs_var": torch.from_numpy(env.obs_rms.var.copy()),
        "obs_count": float(env.obs_rms.count),
        "ret_mean": torch.from_numpy(np.asarray(env.ret_rms.mean, dtype=np.float64).copy()),
        "ret_var": torch.from_numpy(np.asarray(env.ret_rms.var, dtype=np.float64).copy()),
        "ret_count": float(env.ret_rms.count),
        "returns": torch.from_numpy(env.returns.copy()),
        "old_obs": torch.from_numpy(np.asarray(env.old_obs).copy()),
    }


def _set_normalizer_state(env: Any, state: dict[str, Any] | None) -> None:
    if state is None:
        return
    env.obs_rms.mean, env.obs_rms.var = state["obs_mean"].numpy(), state["obs_var"].numpy()
    env.obs_rms.count = state["obs_count"]
    env.ret_rms.mean, env.ret_rms.var = state["ret_mean"].numpy(), state["ret_var"].numpy()
    env.ret_rms.count = state["ret_count"]
    env.returns, env.old_obs = state["returns"].numpy(), state["old_obs"].numpy()


def _check(state: dict[str, Any], path: Path, model: PPO, methods: dict[str, Method]) -> None:
    """Refuse a checkpoint that this run cannot use, before anything is restored."""
    if state.get("format") != FORMAT_VERSION:
        raise ConfigError("--resume", str(path), f"an RL checkpoint of format {FORMAT_VERSION}")
    env = model.get_env()
    envs = state.get("envs")
    if not isinstance(envs, list) or len(envs) != env.num_envs:
        count = len(envs) if isinstance(envs, list) else 0
        raise ConfigError("--resume", str(path), f"a checkpoint of {env.num_envs} env copies "
                          f"(env.n_envs of the run); it holds {count}")  # fmt: skip
    check_state_dict(
        "policy", state.get("policy"), model.policy.state_dict(), path, allow_extra=True
    )  # fully once the methods have grown the network
    saved_methods = sorted(state.get("methods") or {})
    if saved_methods != sorted(methods):
        raise ConfigError("--resume", str(path), f"a checkpoint with the run's methods "
                          f"{sorted(methods)}; it has {saved_methods}")  # fmt: skip
    current = env.env_method("get_snapshot")
    for i, (saved, now) in enumerate(zip(envs, current, strict=True)):
        if _env_layout(saved) != _env_layout(now):
            raise ConfigError("--resume", str(path), f"a checkpoint of the run's env "
                              f"{_env_layout(now)}; env copy {i} holds "
                              f"{_env_layout(saved)}")  # fmt: skip


def _env_layout(snapshot: Any) -> list[str]:
    """The wrapper chain of an env snapshot and the size of its MuJoCo state."""
    if not isinstance(snapshot, list) or not all(isinstance(s, dict) for s in snapshot):
        return ["?"]
    return [f"{s.get('type')}" + (f"[{len(s['mujoco'])}]" if "mujoco" in s else "")
            for s in snapshot]  # fmt: skip


def save_checkpoint(
    path: Path, model: PPO, methods: dict[str, Method], extra: dict[str, Any]
) -> None:
    """Write the complete training state to ``path`` (verified: :mod:`plasticity_rl.rundir`)."""
    env = model.get_env()
    state = {
        "format": FORMAT_VERSION,
        "num_timesteps": model.num_timesteps,
        "n_updates": model._n_updates,
        "policy": model.policy.state_dict(),
        "optimizer": model.policy.optimizer.state_dict(),
        "methods": {name: m.state_dict() for name, m in methods.items()},
        "envs": env.env_method("get_snapshot"),
        "normalizer": _normalizer_state(env),
        "last_obs": torch.from_numpy(np.asarray(model._last_obs).copy()),
        "last_original_obs": None
        if model._last_original_obs is None
        else torch.from_numpy(np.asarray(model._last_original_obs).copy()),
        "last_episode_starts": torch.from_numpy(np.asarray(model._last_episode_starts).copy()),
        "ep_info_buffer": [dict(info) for info in model.ep_info_buffer or []],
        "rng": _rng_state(model.device),
        "extra": extra,
    }
    save_verified(path, state)


def load_checkpoint(path: Path, model: PPO, methods: dict[str, Method]) -> dict[str, Any]:
    """Restore a checkpoint into a freshly built ``model``; returns the ``extra`` data.

    Call this after the model, its env and its methods are built and attached, and right
    before ``model.learn(..., reset_num_timesteps=False)``.

    Raises:
        ConfigError: no intact checkpoint, or one of another run (format, env copies, network
            shapes, methods); nothing is restored then.
    """
    state = load_verified(path)
    _check(state, path, model, methods)
    # Methods first: one that grows the network (plasticity injection) rebuilds the saved
    # shape and optimiser groups from its state, which the policy and optimiser states need.
    for name, method in methods.items():
        method.load_state_dict(to_device(state["methods"][name], model.device))
    check_state_dict("policy", state.get("policy"), model.policy.state_dict(), path)
    model.policy.load_state_dict(state["policy"])
    model.policy.optimizer.load_state_dict(state["optimizer"])
    env = model.get_env()
    for i, snapshot in enumerate(state["envs"]):
        env.env_method("set_snapshot", snapshot, indices=[i])
    _set_normalizer_state(env, state["normalizer"])
    model.num_timesteps = state["num_timesteps"]
    model._n_updates = state["n_updates"]
    model._last_obs = state["last_obs"].numpy()
    if state["last_original_obs"] is not None:
        model._last_original_obs = state["last_original_obs"].numpy()
    model._last_episode_starts = state["last_episode_starts"].numpy()
    model.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(maxlen=model._stats_window_size)
    _set_rng_state(state["rng"], model.device)
    return to_device(state["extra"], model.device)
