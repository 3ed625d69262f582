"""Non-stationary MuJoCo envs, their Gymnasium ids and the YAML presets in the repo's ``envs/``.

Importing this package registers, for ``Base`` in ``Ant``, ``Hopper``, ``Walker2d``:

- ``plasticity_rl/<Base>Friction-v5``: :class:`FrictionShift` around ``<Base>-v5`` (Dohare et al.
  2024 defaults: friction set to a log-uniform draw in [0.02, 2.0] every 2M env steps);
- ``plasticity_rl/<Base>Shift-v5``: :class:`PhysicsShift` around ``<Base>-v5`` (``field``,
  ``low`` and ``high`` required).

Both keep the base env's ``max_episode_steps`` (1000); ``gymnasium.make`` puts ``TimeLimit``
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
    find_schedule_wrapper,
    make_friction_env,
    make_physics_shift_env,
)
from plasticity_rl.registry import ConfigError

__all__ = [
    "INFO_KEY",
    "PRESET_DIR",
    "FrictionShift",
    "PhysicsShift",
    "find_schedule_wrapper",
    "load_env_preset",
    "make_env_from_preset",
    "make_friction_env",
    "make_physics_shift_env",
]

PRESET_DIR = REPO_ROOT / "envs"
"""The repo's ``envs/`` folder of YAML presets."""

_MODULE = "plasticity_rl.envs.nonstationary"

for _base in ("Ant", "Hopper", "Walker2d"):
    _base_id = f"{_base}-v5"
    _max_steps = gym.spec(_base_id).max_episode_steps
    for _suffix, _factory in (
        ("Friction", "make_friction_env"),
        ("Shift", "make_physics_shift_env"),
    ):
        _id = f"plasticity_rl/{_base}{_suffix}-v5"
        if _id not in gym.registry:
            gym.register(
                _id,
                entry_point=f"{_MODULE}:{_factory}",
                max_episode_steps=_max_steps,
                kwargs={"base_id": _base_id},
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
