"""Non-stationary tasks beyond physics: permuted observations, permuted or flipped actions, and a
switching reward target.

Each wrapper is a :class:`~plasticity_rl.envs.nonstationary.ScheduledShift`, so it changes on the
same seeded schedule as :class:`~plasticity_rl.envs.nonstationary.PhysicsShift` (at the first
reset after ``every_env_steps`` env steps of its env copy, from its own salted generator, exactly
resumable with ``get_schedule_state`` / ``set_schedule_state``) and reports its scalars in
``info["nonstationary"]``, which the training callback logs as ``env/<quantity>``.

- :class:`ObservationPermutation`: the agent sees ``obs[perm]`` for a fixed random ``perm`` that is
  redrawn at each change; the input-permutation task of Juliani & Ash 2024 ("A Study of Plasticity
  Loss in On-Policy Deep Reinforcement Learning", NeurIPS), as permuted MNIST (Goodfellow et al.
  2013) for supervised learning.
- :class:`ActionPermutation`: actuator ``j`` receives ``signs[j] * action[perm[j]]``; ``mode``
  redraws the permutation, the signs, or both at each change.
- :class:`RewardSwitch`: the forward-progress term of a Gymnasium v5 locomotion reward is replaced
  by a target that changes: running direction (forward/backward, Finn et al. 2017 "Model-Agnostic
  Meta-Learning", the AntDir/HalfCheetahDir tasks) or target speed (their HalfCheetahVel task).

The observation and action wrappers need a space whose entries share one bound (all of Gymnasium's
MuJoCo locomotion envs: observations in (-inf, inf), actions in [-1, 1]), so that a permutation
or sign flip maps the space onto itself and ``observation_space`` / ``action_space`` stay valid.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from plasticity_rl.envs.nonstationary import ScheduledShift
from plasticity_rl.registry import require

ACTION_MODES = ("permute", "flip", "permute_flip")
TARGETS = ("direction", "speed")


def _require_uniform_box(space: gym.Space, key: str, symmetric: bool = False) -> int:
    """The size of a 1-D ``Box`` whose entries share one bound (symmetric: ``low == -high``)."""
    ok = isinstance(space, gym.spaces.Box) and len(space.shape) == 1
    if ok:
        low, high = np.unique(space.low), np.unique(space.high)
        ok = low.size == 1 and high.size == 1 and (not symmetric or low[0] == -high[0])
    bounds = "the same symmetric bounds [-b, b]" if symmetric else "the same bounds"
    require(ok, key, space, f"a 1-D Box whose entries all have {bounds}")
    return int(space.shape[0])


def _fixed_fraction(permutation: list[int] | None) -> float:
    """Fraction of positions a permutation leaves in place (1.0 for ``None``, the identity)."""
    if permutation is None:
        return 1.0
    return float(np.mean(np.asarray(permutation) == np.arange(len(permutation))))


class ObservationPermutation(ScheduledShift):
    """The observation vector permuted by a fixed random permutation, redrawn at each change.

    ``obs'[i] = obs[perm[i]]`` with ``perm`` uniform over all permutations of the ``n`` entries
    (``Generator.permutation``), the same ``perm`` for every step until the next change. As in
    Juliani & Ash 2024 (NeurIPS), each new task is the same env behind a new input permutation.

    First segment: ``initial="default"`` (the default here) shows the unpermuted observations until
    the first change, so the first segment is the standard task (returns comparable with the
    usual benchmark); ``initial="sample"`` permutes from the start.

    ``info["nonstationary"]["obs_fixed_fraction"]`` is the fraction of entries the current
    permutation leaves in place (1.0 = identity, about ``1/n`` on average for a random one); the
    permutation itself is ``get_schedule_state()["value"]``. With ``normalize_observations``
    the running mean and variance of each input entry mix the entries that were permuted into
    it (the normaliser sits outside the wrapper, as the agent's own input statistics would).

    Example:
        >>> import gymnasium as gym
        >>> env = ObservationPermutation(gym.make("Hopper-v5"), every_env_steps=10,
        ...                              initial="sample", schedule_seed=0)
        >>> obs, info = env.reset(seed=0)
        >>> perm = env.get_schedule_state()["value"]
        >>> sorted(perm) == list(range(11))
        True

    Args:
        env: an env with a 1-D ``Box`` observation space whose entries share one bound.
        every_env_steps: env steps of this copy after which the next reset draws a new
            permutation.
        initial: ``"default"`` (identity first) or ``"sample"`` (a permutation from the start).
        schedule_seed: seed of the permutation sequence; ``None`` uses the first reset's seed.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        every_env_steps: int = 2_000_000,
        initial: str = "default",
        schedule_seed: int | None = None,
    ):
        ScheduledShift.__init__(
            self,
            env,
            every_env_steps=every_env_steps,
            initial=initial,
            schedule_seed=schedule_seed,
        )
        self._size = _require_uniform_box(env.observation_space, "observation_space")
        self._permutation: np.ndarray | None = None

    def _draw(self) -> list[int]:
        assert self._rng is not None
        return self._rng.permutation(self._size).tolist()

    def _apply(self, value: list[int] | None) -> None:
        self._permutation = None if value is None else np.asarray(value, dtype=np.intp)

    def _reported(self) -> dict[str, float]:
        return {"obs_fixed_fraction": _fixed_fraction(self._value)}

    def _observation(self, observation: Any) -> Any:
        return observation if self._permutation is None else observation[self._permutation]


class ActionPermutation(ScheduledShift):
    """Actions routed to permuted actuators and/or sign-flipped, redrawn at each change.

    The env receives ``a_env[j] = signs[j] * a[perm[j]]``: actuator ``j`` is driven by the
    agent's dimension ``perm[j]``, negated where ``signs[j] = -1``. At each change
    ``mode="permute"`` draws a uniform random ``perm`` (signs all +1), ``mode="flip"`` draws each
    sign as an independent fair coin (``perm`` the identity), ``"permute_flip"`` draws both. A
    draw can leave the task unchanged (probability ``1/n!`` for a permutation, ``2^-n`` for the
    signs: 1/6 and 1/8 on Hopper's 3 actuators); the logged fractions below show it.

    ``info["nonstationary"]`` holds ``action_fixed_fraction`` (fraction of actuators driven by
    their own dimension; modes with a permutation) and ``action_flipped_fraction`` (fraction of
    negated actuators; modes with flips). ``initial="default"`` keeps the unchanged mapping until
    the first change; ``initial="sample"`` draws one at the first reset.

    Example:
        >>> import gymnasium as gym
        >>> env = ActionPermutation(gym.make("Hopper-v5"), mode="flip", initial="sample",
        ...                         schedule_seed=0)
        >>> _, info = env.reset(seed=0)
        >>> sorted(info["nonstationary"])
        ['action_flipped_fraction', 'changes', 'env_steps_since_change']

    Args:
        env: an env with a 1-D ``Box`` action space whose entries share one bound, symmetric
            (``[-b, b]``) for the modes that flip signs.
        mode: ``"permute"``, ``"flip"`` or ``"permute_flip"``.
        every_env_steps: env steps of this copy after which the next reset draws a new mapping.
        initial: ``"default"`` (unchanged mapping first) or ``"sample"``.
        schedule_seed: seed of the mapping sequence; ``None`` uses the first reset's seed.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        mode: str = "permute",
        every_env_steps: int = 2_000_000,
        initial: str = "default",
        schedule_seed: int | None = None,
    ):
        ScheduledShift.__init__(
            self,
            env,
            every_env_steps=every_env_steps,
            initial=initial,
            schedule_seed=schedule_seed,
            mode=mode,
        )
        require(mode in ACTION_MODES, "mode", mode, ACTION_MODES)
        self._mode = mode
        self._size = _require_uniform_box(env.action_space, "action_space", mode != "permute")
        self._permutation = np.arange(self._size)
        self._signs = np.ones(self._size)

    def _draw(self) -> dict[str, list[int]]:
        assert self._rng is not None
        permutation = np.arange(self._size)
        signs = np.ones(self._size, dtype=int)
        if self._mode != "flip":
            permutation = self._rng.permutation(self._size)
        if self._mode != "permute":
            signs = 1 - 2 * self._rng.integers(0, 2, self._size)
        return {"permutation": permutation.tolist(), "signs": signs.tolist()}

    def _apply(self, value: dict[str, list[int]] | None) -> None:
        if value is None:
            value = {"permutation": list(range(self._size)), "signs": [1] * self._size}
        self._permutation = np.asarray(value["permutation"], dtype=np.intp)
        self._signs = np.asarray(value["signs"], dtype=np.float64)

    def _reported(self) -> dict[str, float]:
        reported = {}
        if self._mode != "flip":
            reported["action_fixed_fraction"] = _fixed_fraction(self._permutation.tolist())
        if self._mode != "permute":
            reported["action_flipped_fraction"] = float(np.mean(self._signs < 0))
        return reported

    def _action(self, action: Any) -> Any:
        action = np.asarray(action)
        return (action[self._permutation] * self._signs).astype(action.dtype, copy=False)


class RewardSwitch(ScheduledShift):
    """The forward-progress reward term replaced by a target that changes at each change.

    For Gymnasium's v5 locomotion envs (Hopper, Walker2d, Ant, HalfCheetah, Swimmer), whose
    reward is ``w * x_velocity + other terms`` with ``w = forward_reward_weight`` and
    ``info["reward_forward"] = w * x_velocity``:

        ``r' = r - info["reward_forward"] + w * g(v)``,  ``v = info["x_velocity"]``,

    so the healthy, control and contact terms stay as they are, and

    - ``target="direction"``: ``g(v) = d * v`` with ``d`` in {+1, -1}: run forward or backward
      (Finn et al. 2017, the AntDir / HalfCheetahDir tasks). The direction alternates at each
      change; ``initial="default"`` starts forward, ``"sample"`` draws the first direction as a
      fair coin. Reported as ``info["nonstationary"]["target_direction"]``.
    - ``target="speed"``: ``g(v) = -|v - v*|`` with ``v* ~ U(low, high)`` drawn at each change
      (Finn et al. 2017, HalfCheetahVel: ``v*`` in [0, 2]). Reported as ``target_speed``
      (NaN while ``initial="default"`` keeps the env's own reward).

    Example:
        >>> import gymnasium as gym
        >>> env = RewardSwitch(gym.make("Hopper-v5"), initial="default", every_env_steps=10)
        >>> _, info = env.reset(seed=0)
        >>> info["nonstationary"]["target_direction"]
        1.0

    Args:
        env: a Gymnasium v5 MuJoCo locomotion env (``env.unwrapped._forward_reward_weight``;
            ``info`` with ``x_velocity`` and ``reward_forward``).
        target: ``"direction"`` or ``"speed"``.
        low: smallest target speed (``target="speed"``).
        high: largest target speed (``target="speed"``, >= ``low``).
        every_env_steps: env steps of this copy after which the next reset changes the target.
        initial: ``"default"`` (forward / the env's own reward first) or ``"sample"``.
        schedule_seed: seed of the target sequence; ``None`` uses the first reset's seed.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        target: str = "direction",
        low: float = 0.0,
        high: float = 2.0,
        every_env_steps: int = 2_000_000,
        initial: str = "default",
        schedule_seed: int | None = None,
    ):
        ScheduledShift.__init__(
            self,
            env,
            every_env_steps=every_env_steps,
            initial=initial,
            schedule_seed=schedule_seed,
            target=target,
            low=low,
            high=high,
        )
        weight = getattr(env.unwrapped, "_forward_reward_weight", None)
        require(
            isinstance(weight, int | float),
            "env",
            type(env.unwrapped).__name__,
            "a Gymnasium v5 MuJoCo locomotion env (Hopper, Walker2d, Ant, HalfCheetah, Swimmer)",
        )
        require(target in TARGETS, "target", target, TARGETS)
        require(math.isfinite(low) and math.isfinite(high), "low/high", (low, high), "finite")
        require(low <= high, "low", low, f"<= high ({high})")
        self._weight = float(weight)
        self._target = target
        self._low, self._high = float(low), float(high)

    def _draw(self) -> float:
        assert self._rng is not None
        if self._target == "speed":
            return float(self._rng.uniform(self._low, self._high))
        if self._changes == 0:  # the first value (initial="sample"): a fair coin
            return float(1 - 2 * int(self._rng.integers(0, 2)))
        return -self._direction()

    def _apply(self, value: float | None) -> None:
        pass  # the target is read from self._value at each step

    def _direction(self) -> float:
        return 1.0 if self._value is None else float(self._value)

    def _reported(self) -> dict[str, float]:
        if self._target == "direction":
            return {"target_direction": self._direction()}
        return {"target_speed": math.nan if self._value is None else float(self._value)}

    def _reward(self, reward: SupportsFloat, info: dict[str, Any]) -> SupportsFloat:
        if self._value is None:  # initial="default": the env's own reward, bit for bit
            return reward
        velocity = float(info["x_velocity"])
        if self._target == "direction":
            goal = self._value * velocity
        else:
            goal = -abs(velocity - float(self._value))
        return float(reward) - float(info["reward_forward"]) + self._weight * goal
