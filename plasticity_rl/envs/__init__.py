"""Non-stationary MuJoCo envs, their Gymnasium ids and the YAML presets in the repo's ``envs/``.

Importing this package registers, for ``Base`` in ``Ant``, ``Hopper``, ``Walker2d``, the ids
``plasticity_rl/<Base><Kind>-v5``: the wrapper of ``Kind`` around ``<Base>-v5``, all on the same
seeded schedule (:class:`ScheduledShift`):

- ``Friction``: :class:`FrictionShift` (Dohare et al. 2024 defaults: friction set to a
  log-uniform draw in [0.02, 2.0] every 2M env steps);
- ``Shift``: :class:`PhysicsShift` (``field``, ``low`` and ``high`` required; e.g. body mass or
  gravity);
- ``ObsPermutation``: :class:`ObservationPermutation`;
- ``ActionPermutation``: :class:`ActionPermutation` (``mode`` permute / flip / permute_flip);
- ``RewardSwitch``: :class:`RewardSwitch` (``target`` direction / speed).

All keep the base env's ``max_episode_steps`` (1000); ``gymnasium.make`` puts ``TimeLimit``
outside the wrapper, whose reset sees every episode boundary, truncations included. Keywords the
wrapper does not take go to the base env. Sub-processes (``SubprocVecEnv``) that only receive an
id string must import this package first, e.g. use ``"plasticity_rl.envs:plasticity_rl/..."``
or an env factory that calls :func:`make_env_from_preset`.

Example:
    >>> import gymnasium as gym
    >>> import plasticity_rl.envs
    >>> env = gym.make("plasticity_rl/HopperFriction-v5", every_env_steps=1000)
    >>> _, info = env.reset(seed=0)
    >>> sorted(info["nonstationary"])
    ['changes', 'env_steps_since_change', 'friction']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym

from plasticity_rl.config import REPO_ROOT, load_preset
from plasticity_rl.envs.nonstationary import (
    INFO_KEY,
    FrictionShift,
    PhysicsShift,
    ScheduledShift,
    find_schedule_wrapper,
    make_shift_env,
)
from plasticity_rl.envs.task_shifts import ActionPermutation, ObservationPermutation, RewardSwitch
from plasticity_rl.registry import ConfigError

__all__ = [
    "INFO_KEY",
    "KINDS",
    "PRESET_DIR",
    "ActionPermutation",
    "FrictionShift",
    "ObservationPermutation",
    "PhysicsShift",
    "RewardSwitch",
    "ScheduledShift",
    "find_schedule_wrapper",
    "load_env_preset",
    "make_env_from_preset",
    "make_shift_env",
]

PRESET_DIR = REPO_ROOT / "envs"
"""The repo's ``envs/`` folder of YAML presets."""

KINDS: dict[str, type[ScheduledShift]] = {
    "Friction": FrictionShift,
    "Shift": PhysicsShift,
    "ObsPermutation": ObservationPermutation,
    "ActionPermutation": ActionPermutation,
    "RewardSwitch": RewardSwitch,
}
"""The ``<Kind>`` part of the registered ids and the wrapper it names."""

for _base in ("Ant", "Hopper", "Walker2d"):
    _base_id = f"{_base}-v5"
    _max_steps = gym.spec(_base_id).max_episode_steps
    for _kind, _wrapper in KINDS.items():
        _id = f"plasticity_rl/{_base}{_kind}-v5"
        if _id not in gym.registry:
            gym.register(
                _id,
                entry_point="plasticity_rl.envs.nonstationary:make_shift_env",
                max_episode_steps=_max_steps,
                kwargs={"base_id": _base_id, "wrapper": _wrapper.__name__},
            )


def load_env_preset(name_or_path: str | Path) -> dict[str, Any]:
    """Reads a preset ``{"id": env id, "kwargs": {...}}`` by name (``envs/<name>.yaml``) or path.

    Raises:
        ConfigError: unknown preset name, or a file without ``id`` / with other keys.
    """
    preset = load_preset("envs", name_or_path)
    if "id" not in preset or set(preset) - {"id", "kwargs"}:
        raise ConfigError(f"env preset {name_or_path}", preset, "a mapping with 'id' and 'kwargs'")
    return {"id": str(preset["id"]), "kwargs": dict(preset.get("kwargs") or {})}


def make_env_from_preset(preset: str | Path | Mapping[str, Any], **overrides: Any) -> gym.Env:
    """``gymnasium.make(preset id, **preset kwargs, **overrides)``.

    Args:
        preset: a preset name, a path to a preset file, or a loaded preset mapping.
        **overrides: keywords replacing the preset's (also ``max_episode_steps``).
    """
    if not isinstance(preset, Mapping):
        preset = load_env_preset(preset)
    return gym.make(preset["id"], **{**preset.get("kwargs", {}), **overrides})
