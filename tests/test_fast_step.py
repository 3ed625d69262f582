"""The faster Hopper/Walker2d step returns exactly what Gymnasium's returns, step for step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.envs.mujoco.ant_v5 import AntEnv

import plasticity_rl.envs  # noqa: F401  (registers the ids)
from plasticity_rl.envs.fast_step import FAST_STEP_ENVS, FastHopperEnv, FastWalker2dEnv

STATE = mujoco.mjtState.mjSTATE_FULLPHYSICS


def _state(env: gym.Env) -> np.ndarray:
    model, data = env.unwrapped.model, env.unwrapped.data  # type: ignore[attr-defined]
    state = np.empty(mujoco.mj_stateSize(model, STATE))
    mujoco.mj_getState(model, data, state, STATE)
    return state


def _assert_same(got: Any, want: Any) -> None:
    """Equal values (bit for bit for floats; NaN equals NaN), equal info keys."""
    if isinstance(want, tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _assert_same(g, w)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            _assert_same(got[key], want[key])
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), strict=False)
        assert np.asarray(got).dtype == np.asarray(want).dtype or np.ndim(want) == 0


def _compare(base_id: str, steps: int, action_scale: float, **kwargs: Any) -> int:
    """Step Gymnasium's env and ours with the same actions and reset seeds; returns the
    number of terminations seen."""
    ours = FAST_STEP_ENVS[base_id](**kwargs)
    theirs = gym.make(base_id, disable_env_checker=True, **kwargs).unwrapped
    rng = np.random.default_rng(1)
    episodes = terminations = 0
    _assert_same(ours.reset(seed=7), theirs.reset(seed=7))
    for t in range(steps):
        action = (action_scale * rng.standard_normal(ours.action_space.shape)).astype(np.float32)
        want = theirs.step(action)
        _assert_same(ours.step(action), want)
        np.testing.assert_array_equal(_state(ours), _state(theirs))
        np.testing.assert_array_equal(ours.data.cfrc_ext, theirs.data.cfrc_ext)
        terminations += bool(want[2])
        if want[2] or t % 200 == 199:
            episodes += 1
            _assert_same(ours.reset(seed=episodes), theirs.reset(seed=episodes))
    return terminations


@pytest.mark.parametrize("base_id", ["Hopper-v5", "Walker2d-v5"])
def test_same_as_gymnasium_with_falls_and_resets(base_id: str) -> None:
    # Large actions make the robot fall: the unhealthy branch and resets are exercised.
    assert _compare(base_id, 600, action_scale=1.0) >= 3


@pytest.mark.parametrize("base_id", ["Hopper-v5", "Walker2d-v5"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"terminate_when_unhealthy": False, "exclude_current_positions_from_observation": False},
        {"healthy_reward": 0.5, "forward_reward_weight": 2.0, "ctrl_cost_weight": 0.1},
        {"healthy_z_range": (0.5, 1.5), "healthy_angle_range": (-0.5, 0.5)},
    ],
)
def test_same_as_gymnasium_with_keywords(base_id: str, kwargs: dict[str, Any]) -> None:
    _compare(base_id, 300, action_scale=0.5, **kwargs)


def test_hopper_state_range_and_nan_are_unhealthy() -> None:
    env = FastHopperEnv(healthy_state_range=(-0.5, 0.5))
    gym_env = gym.make("Hopper-v5", healthy_state_range=(-0.5, 0.5)).unwrapped
    for e in (env, gym_env):
        e.reset(seed=0)
    assert env.is_healthy and gym_env.is_healthy
    for e in (env, gym_env):
        e.data.qvel[3] = 0.6  # one velocity out of range
    assert not env.is_healthy and not gym_env.is_healthy
    for e in (env, gym_env):
        e.data.qvel[3] = 0.0
        e.data.qpos[4] = np.nan
    assert not env.is_healthy and not gym_env.is_healthy


@pytest.mark.parametrize(
    ("env_id", "cls"),
    [("plasticity_rl/HopperFriction-v5", FastHopperEnv),
     ("plasticity_rl/Walker2dObsPermutation-v5", FastWalker2dEnv),
     ("plasticity_rl/AntFriction-v5", AntEnv)],
)  # fmt: skip
def test_registered_ids_build_the_fast_envs(env_id: str, cls: type) -> None:
    assert type(gym.make(env_id).unwrapped) is cls
