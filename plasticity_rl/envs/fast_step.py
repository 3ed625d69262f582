"""Hopper-v5 and Walker2d-v5 with a faster ``step`` that returns exactly Gymnasium's numbers.

Gymnasium's ``step`` of these two envs evaluates ``is_healthy`` twice per step (once for the
survival reward, once for termination), and Hopper's builds the whole state vector with
``np.concatenate`` and tests it with ``np.all(np.logical_and(...))`` each time. On this project's
2-core machine that Python work was about a fifth of an env step (cProfile of PPO on Hopper
with 16 copies: 0.85 s of 3.9 s in ``step`` went to ``is_healthy``), and with the fast rollout
layout the env step is a third of a run. The classes here compute the same quantities once,
with the same floating-point operations in the same order:

- reward ``= (forward_reward_weight * x_velocity + healthy * healthy_reward) - ctrl_cost``,
  ``x_velocity = (x_after - x_before) / dt``, ``ctrl_cost = ctrl_cost_weight * sum(action^2)``;
- observation ``[qpos (without x unless asked), clip(qvel, -10, 10)]``;
- healthy: every bound of Gymnasium's ``is_healthy`` as a strict inequality (a NaN makes the
  state unhealthy, as there); terminated ``= not healthy and terminate_when_unhealthy``;
- the same ``info`` keys and values, ``truncated = False`` (``TimeLimit`` truncates).

Everything else (constructor keywords, reset, the MuJoCo data after a step, rendering) is
Gymnasium's: these are subclasses that override ``step`` and ``is_healthy`` only.
``tests/test_fast_step.py`` checks observations, rewards, terminations, infos and the MuJoCo
state against ``gymnasium.make("Hopper-v5")`` / ``("Walker2d-v5")`` step for step, across
resets, for the default and non-default keywords. Ant-v5 keeps Gymnasium's step: its Python
work is a small part of its (heavier) physics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv


class _OneHealthCheckStep:
    """The shared ``step`` of Hopper-v5 and Walker2d-v5 with ``is_healthy`` evaluated once."""

    data: Any
    init_qpos: np.ndarray
    frame_skip: int
    render_mode: str | None
    _forward_reward_weight: float
    _ctrl_cost_weight: float
    _healthy_reward: float
    _terminate_when_unhealthy: bool
    _exclude_current_positions_from_observation: bool
    do_simulation: Any
    render: Any
    dt: float
    is_healthy: bool

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Gymnasium's step (see the module docstring), with one health check."""
        qpos = self.data.qpos
        x_position_before = qpos[0]
        self.do_simulation(action, self.frame_skip)
        x_position_after = qpos[0]
        x_velocity = (x_position_after - x_position_before) / self.dt

        velocity = np.minimum(np.maximum(self.data.qvel, -10), 10)  # np.clip's values
        position = qpos[1:] if self._exclude_current_positions_from_observation else qpos
        observation = np.concatenate((position, velocity))

        healthy = self.is_healthy
        forward_reward = self._forward_reward_weight * x_velocity
        healthy_reward = healthy * self._healthy_reward
        ctrl_cost = self._ctrl_cost_weight * np.add.reduce(np.square(action))  # np.sum's
        reward = forward_reward + healthy_reward - ctrl_cost
        terminated = (not healthy) and self._terminate_when_unhealthy
        info = {
            "x_position": x_position_after,
            "z_distance_from_origin": qpos[1] - self.init_qpos[1],
            "x_velocity": x_velocity,
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "reward_survive": healthy_reward,
        }
        if self.render_mode == "human":
            self.render()
        return observation, reward, terminated, False, info


def _within(value: float, bounds: tuple[float, float]) -> bool:
    """``low < value < high`` (False for NaN)."""
    return bool(bounds[0] < value < bounds[1])


class FastHopperEnv(_OneHealthCheckStep, HopperEnv):  # type: ignore[misc]
    """Gymnasium's Hopper-v5, same keywords and numbers, faster ``step``."""

    @property
    def is_healthy(self) -> bool:
        """Gymnasium's Hopper health: ``z``, ``angle`` and every state entry after the first two
        (qpos[2:], qvel) strictly within their ranges."""
        qpos = self.data.qpos
        low, high = self._healthy_state_range
        state = np.concatenate((qpos[2:], self.data.qvel))
        # NaN propagates through the reductions and fails both comparisons, as in Gymnasium
        state_ok = bool(low < np.minimum.reduce(state) and np.maximum.reduce(state) < high)
        return (
            state_ok
            and _within(qpos[1], self._healthy_z_range)
            and _within(qpos[2], self._healthy_angle_range)
        )


class FastWalker2dEnv(_OneHealthCheckStep, Walker2dEnv):  # type: ignore[misc]
    """Gymnasium's Walker2d-v5, same keywords and numbers, faster ``step``."""

    @property
    def is_healthy(self) -> bool:
        """Gymnasium's Walker2d health: ``z`` and ``angle`` strictly within their ranges."""
        qpos = self.data.qpos
        return _within(qpos[1], self._healthy_z_range) and _within(
            qpos[2], self._healthy_angle_range
        )


FAST_STEP_ENVS: dict[str, type] = {"Hopper-v5": FastHopperEnv, "Walker2d-v5": FastWalker2dEnv}
"""The base env ids whose env the ``plasticity_rl/*-v5`` ids build with the faster step."""
