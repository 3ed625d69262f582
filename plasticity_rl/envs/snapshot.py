"""Save and restore the full state of a MuJoCo env mid-episode, for exact resume.

:class:`Snapshot` is an outermost wrapper with ``get_snapshot()`` / ``set_snapshot(state)``,
reachable through any SB3 ``VecEnv`` with ``env_method``. The snapshot holds only plain Python
data and tensors (safe for ``torch.load(weights_only=True)``):

- the MuJoCo integration state (``mj_getState`` with ``mjSTATE_INTEGRATION``: time, qpos, qvel,
  act, warm start, controls, ...), the body poses the last step left behind, and the env's
  ``np_random`` state;
- the episode counters of the wrappers in between (``TimeLimit``, ``OrderEnforcing``, SB3's
  ``Monitor``) and the state of any non-stationary schedule (``get_schedule_state``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

from plasticity_rl.envs.nonstationary import ScheduledShift

_INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION
# Body poses from the last forward pass inside mj_step (one substep behind qpos); rewards such as
# Ant's forward progress read them before stepping, so they are restored as they were.
_KINEMATICS = ("xpos", "xquat", "xmat", "xipos", "ximat")
_MONITOR_FIELDS = (
    "rewards",
    "needs_reset",
    "total_steps",
    "episode_returns",
    "episode_lengths",
    "episode_times",
)


def _chain(env: gym.Env) -> list[gym.Env]:
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def get_env_snapshot(env: gym.Env) -> list[dict[str, Any]]:
    """The state of every level of ``env``'s wrapper chain, outermost first."""
    snapshot = []
    for level in _chain(env):
        state: dict[str, Any] = {"type": type(level).__name__}
        if isinstance(level, TimeLimit):
            state["elapsed_steps"] = level._elapsed_steps
        if isinstance(level, OrderEnforcing):
            state["has_reset"] = level._has_reset
        if type(level).__name__ == "Monitor":
            state.update({k: _plain(getattr(level, k)) for k in _MONITOR_FIELDS})
        if isinstance(level, ScheduledShift):
            state["schedule"] = level.get_schedule_state()
        if not isinstance(level, gym.Wrapper):
            model, data = level.unwrapped.model, level.unwrapped.data
            buffer = np.empty(mujoco.mj_stateSize(model, _INTEGRATION))
            mujoco.mj_getState(model, data, buffer, _INTEGRATION)
            state["mujoco"] = torch.from_numpy(buffer)
            state["kinematics"] = {
                k: torch.from_numpy(getattr(data, k).copy()) for k in _KINEMATICS
            }
            state["np_random"] = level.np_random.bit_generator.state
        snapshot.append(state)
    return snapshot


def set_env_snapshot(env: gym.Env, snapshot: list[dict[str, Any]]) -> None:
    """Restore a snapshot taken by :func:`get_env_snapshot` on an identically built env."""
    chain = _chain(env)
    types = [type(level).__name__ for level in chain]
    if types != [s["type"] for s in snapshot]:
        raise ValueError(f"env snapshot of {[s['type'] for s in snapshot]} does not fit {types}")
    for level, state in zip(chain, snapshot, strict=True):
        if "elapsed_steps" in state:
            level._elapsed_steps = state["elapsed_steps"]
        if "has_reset" in state:
            level._has_reset = state["has_reset"]
        if isinstance(level, PassiveEnvChecker):
            # The one-off API checks ran before the snapshot; a restored env is mid-episode.
            level.checked_reset = level.checked_step = level.checked_data_reuse = True
        for k in _MONITOR_FIELDS:
            if k in state:
                setattr(level, k, list(state[k]) if isinstance(state[k], list) else state[k])
        if "schedule" in state:
            level.set_schedule_state(state["schedule"])
        if "mujoco" in state:
            model, data = level.unwrapped.model, level.unwrapped.data
            mujoco.mj_setState(model, data, state["mujoco"].numpy(), _INTEGRATION)
            mujoco.mj_forward(model, data)  # recompute derived quantities (contacts, ...)
            for k, value in state["kinematics"].items():
                getattr(data, k)[:] = value.numpy()
            level.np_random.bit_generator.state = state["np_random"]


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [float(v) for v in value]
    return value


class Snapshot(gym.Wrapper):
    """Outermost wrapper exposing :func:`get_env_snapshot` / :func:`set_env_snapshot`.

    Example:
        >>> env = Snapshot(gym.make("Hopper-v5"))
        >>> _ = env.reset(seed=0)
        >>> state = env.get_snapshot()
        >>> env.set_snapshot(state)
    """

    def get_snapshot(self) -> list[dict[str, Any]]:
        return get_env_snapshot(self.env)

    def set_snapshot(self, snapshot: list[dict[str, Any]]) -> None:
        set_env_snapshot(self.env, snapshot)
