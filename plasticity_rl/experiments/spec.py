"""Experiment presets (``experiments/*.yaml``): a published experiment as a grid of trials.

An experiment preset names the training script (``rl`` or ``supervised``), the env or stream
preset, the agents and a grid of settings, the seeds, the budget of each scale (``small``: what
fits one small machine; ``paper``: the published budget) and the published result to compare
with. :func:`load_experiment` expands it into :class:`Trial` s: every agent crossed with every
combination of grid levels and every seed. Keys (see ``experiments/README.md``):

- ``title``, ``script`` (``rl`` | ``supervised``), ``env`` (preset name or path);
- ``agents``: preset names, or mappings ``{name, agent, set, config, grid}`` (a named variant
  of a preset: ``set`` is a list of ``--set`` overrides, ``config`` a mapping merged over the
  preset like a child preset, so a new ``optimizer: {name: ...}`` replaces the preset's
  optimiser; ``grid: false`` runs the variant once instead of crossing it with the grid);
- ``grid``: ``{axis: {level: [overrides] | {set, config}}}``; axes are crossed with each
  other and with the agents;
- ``set``: overrides for every trial; ``seeds``: a list, or a count n for ``0..n-1``;
- ``scales``: ``{small: {...}, paper: {...}}``, each with ``budget`` (a sentence saying what
  the scale runs) and any of ``seeds``, ``set`` (appended to the top-level ``set``),
  ``agents``, ``grid``, ``evaluate`` (replacing the top-level value);
- ``evaluate``: post-training evaluations (``magnitude_pruning: {fractions: [...], scope,
  output_keep_factor}``, :mod:`plasticity_rl.experiments.pruning`);
- ``plot``: figures and table columns for ``scripts/plot.py``;
- ``published``: ``{source, notes, values: {setting: value or {column: value}}}``;
- ``base``: another experiment preset this one starts from (merged like agent presets).

A trial's setting name is ``+``-joined: the agent's name (left out when only one agent is
crossed with a grid) and each grid level's name. Its run directory name is
``<experiment>/<setting>__s<seed>``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plasticity_rl.config import REPO_ROOT, load_preset, merge_presets, resolve
from plasticity_rl.registry import ConfigError, require

EXPERIMENTS_DIR = REPO_ROOT / "experiments"
SCALES = ("small", "paper")
EXPERIMENT_KEYS = (
    "agents",
    "base",
    "env",
    "evaluate",
    "grid",
    "plot",
    "published",
    "scales",
    "script",
    "seeds",
    "set",
    "title",
)
SCALE_KEYS = ("agents", "budget", "evaluate", "grid", "seeds", "set")
VARIANT_KEYS = ("agent", "config", "grid", "name", "set")
LEVEL_KEYS = ("config", "set")


@dataclass(frozen=True)
class Script:
    """A training script and the config schema its ``main(argv)`` resolves."""

    name: str
    path: Path
    schema: type
    env_field: str
    """The config field the env preset fills (``env`` or ``stream``)."""
    validate: Callable[[Any], None]


def script(name: str) -> Script:
    """The training script ``rl`` (``scripts/train_rl.py``) or ``supervised``."""
    require(name in ("rl", "supervised"), "script", name, "rl, supervised")
    if name == "rl":
        from plasticity_rl.agents.config import RLRunConfig, validate

        return Script(name, REPO_ROOT / "scripts" / "train_rl.py", RLRunConfig, "env", validate)
    from plasticity_rl.supervised.config import SupervisedRunConfig
    from plasticity_rl.supervised.config import validate as validate_supervised

    path = REPO_ROOT / "scripts" / "train_supervised.py"
    return Script(name, path, SupervisedRunConfig, "stream", validate_supervised)


@dataclass
class Trial:
    """One run of an experiment: an agent preset, its variant's settings and a seed."""

    experiment: str
    setting: str
    """``+``-joined agent and grid-level names; the run is ``<setting>__s<seed>``."""
    script: str
    env: str
    agent: str
    """The agent preset the setting starts from."""
    config: dict[str, Any]
    """Merged over the agent preset as a child preset (empty: the preset as it is)."""
    overrides: list[str]
    """``--set`` overrides: the experiment's, the scale's, then the variant's and levels'."""
    seed: int

    @property
    def setting_name(self) -> str:
        """``<experiment>/<setting>``: the ``--name`` of a batched trial of the setting's seeds,
        whose runs are ``<setting_name>__s<seed>``."""
        return f"{self.experiment}/{self.setting}"

    @property
    def run_name(self) -> str:
        """``<experiment>/<setting>__s<seed>``: the run directory under the sweep's logdir."""
        return f"{self.setting_name}__s{self.seed}"

    @property
    def agent_preset(self) -> dict[str, Any] | None:
        """The preset :func:`write_agent_preset` writes (``base:`` the agent preset, then
        ``config``), or None when the agent preset is used as it is."""
        return {"base": self.agent, **self.config} if self.config else None

    def agent_ref(self, preset_dir: Path) -> str:
        """What to pass as ``--agent``: the preset name, or the path of the written preset."""
        return self.agent if not self.config else str(preset_dir / f"{self.setting}.yaml")

    def argv(
        self,
        preset_dir: Path,
        logdir: Path,
        extra: Sequence[str] = (),
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """The training script's arguments for a fresh run of this trial, or with ``seeds`` for
        one batched trial of this setting's runs with those seeds (``train_supervised.py
        --seeds 0,1,2 --name <setting_name>``, which writes the runs ``<setting_name>__s<seed>``).
        """
        if seeds is None:
            runs = {"--seed": str(self.seed), "--name": self.run_name}
        else:
            runs = {"--seeds": ",".join(str(s) for s in seeds), "--name": self.setting_name}
        options = {
            "--env": self.env,
            "--agent": self.agent_ref(preset_dir),
            **runs,
            "--logdir": str(logdir),
        }
        sets = [arg for item in [*self.overrides, *extra] for arg in ("--set", item)]
        return [*(arg for pair in options.items() for arg in pair), "--no-progress", *sets]


def write_agent_preset(trial: Trial, preset_dir: Path) -> None:
    """Write the trial's agent preset (if it has one) where :meth:`Trial.agent_ref` points."""
    preset = trial.agent_preset
    if preset is None:
        return
    preset_dir.mkdir(parents=True, exist_ok=True)
    header = f"# Written by scripts/sweep.py: experiment {trial.experiment}, {trial.setting}.\n"
    path = Path(trial.agent_ref(preset_dir))
    path.write_text(header + yaml.safe_dump(preset, sort_keys=False))


def resolve_trial(trial: Trial, preset_dir: Path, extra: Sequence[str] = ()) -> Any:
    """The trial's run config, resolved and validated as its script will do it.

    The layers are those of :func:`plasticity_rl.cli.resolve_run_config` with ``--agent`` the
    preset :func:`write_agent_preset` writes into ``preset_dir`` (``base:`` the agent preset,
    merged with ``config`` by :func:`~plasticity_rl.config.merge_presets`, as
    :func:`~plasticity_rl.config.load_preset` reads it), so nothing needs to be written.
    """
    info = script(trial.script)
    agent = merge_presets(load_preset("agents", trial.agent), trial.config)
    layers = [
        {info.env_field: load_preset("envs", trial.env)},
        agent,
        {"seed": trial.seed, "env_preset": trial.env, "agent_preset": trial.agent_ref(preset_dir)},
    ]
    cfg = resolve(info.schema, *layers, overrides=[*trial.overrides, *extra])
    info.validate(cfg)
    return cfg


@dataclass
class Experiment:
    """An experiment preset at one scale, expanded into trials."""

    name: str
    title: str
    script: str
    env: str
    scale: str
    budget: str
    seeds: list[int]
    trials: list[Trial]
    settings: list[str]
    """Setting names in grid order (agents outer, grid levels inner)."""
    evaluate: dict[str, Any] = field(default_factory=dict)
    plot: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)


def experiment_names() -> list[str]:
    """Names of the presets in ``<repo>/experiments/``."""
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | Path) -> dict[str, Any]:
    """An experiment preset as a mapping, following ``base:`` links (no scale applied)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError("experiment", str(name_or_path), experiment_names() or "none")
    data = yaml.safe_load(path.read_text()) or {}
    require(isinstance(data, dict), str(path), type(data).__name__, "a YAML mapping")
    _check_keys(path.stem, data, EXPERIMENT_KEYS)
    base = data.pop("base", None)
    return data if base is None else merge_presets(load_spec(base), data)


def load_experiment(name_or_path: str | Path, scale: str = "small") -> Experiment:
    """Load an experiment preset at ``scale`` and expand its grid into trials."""
    require(scale in SCALES, "--scale", scale, SCALES)
    spec = load_spec(name_or_path)
    name = Path(name_or_path).stem
    scales = spec.get("scales") or {}
    require(scale in scales, f"{name}.scales", sorted(scales), f"a section for each of {SCALES}")
    scale_spec = scales[scale]
    _check_keys(f"{name}.scales.{scale}", scale_spec, SCALE_KEYS)
    require("budget" in scale_spec, f"{name}.scales.{scale}.budget", None, "a sentence")
    merged = {**spec, **{k: v for k, v in scale_spec.items() if k != "set"}}
    merged["set"] = [*(spec.get("set") or []), *(scale_spec.get("set") or [])]
    for key in ("script", "env", "agents", "seeds"):
        require(merged.get(key) is not None, f"{name}.{key}", None, "a value")
    script(merged["script"])  # checks the name
    seeds = merged["seeds"]
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    trials = expand(name, merged, seeds)
    settings = list(dict.fromkeys(t.setting for t in trials))
    return Experiment(
        name=name,
        title=str(merged.get("title", name)),
        script=merged["script"],
        env=str(merged["env"]),
        scale=scale,
        budget=str(scale_spec["budget"]),
        seeds=seeds,
        trials=trials,
        settings=settings,
        evaluate=dict(merged.get("evaluate") or {}),
        plot=dict(merged.get("plot") or {}),
        published=dict(merged.get("published") or {}),
    )


@dataclass(frozen=True)
class _Part:
    """An agent variant or a grid level: its name, overrides and config mapping."""

    name: str
    overrides: tuple[str, ...]
    config: Mapping[str, Any]
    agent: str | None = None
    crossed: bool = True
    """Whether an agent variant is crossed with the grid."""


def expand(name: str, spec: Mapping[str, Any], seeds: Sequence[int]) -> list[Trial]:
    """Every agent x every combination of grid levels x every seed, in that nesting order.

    An agent variant with ``grid: false`` is run once, without the grid.
    """
    agents = [_variant(f"{name}.agents", item) for item in spec["agents"]]
    axes = [
        [_level(f"{name}.grid.{axis}.{level}", str(level), value) for level, value in lv.items()]
        for axis, lv in (spec.get("grid") or {}).items()
    ]
    show_agent = sum(a.crossed for a in agents) > 1 or not axes
    common = [str(s) for s in spec.get("set") or []]
    trials: list[Trial] = []
    seen: set[str] = set()
    for variant in agents:
        for levels in itertools.product(*axes) if variant.crossed else [()]:
            parts = [variant, *levels]
            names = [p.name for p in (parts if show_agent or not levels else levels)]
            setting = "+".join(names)
            require(setting not in seen, f"{name} setting", setting, "unique setting names")
            seen.add(setting)
            config: dict[str, Any] = {}
            for part in parts:
                config = merge_presets(config, dict(part.config))
            overrides = common + [o for part in parts for o in part.overrides]
            trials += [
                Trial(
                    name,
                    setting,
                    spec["script"],
                    str(spec["env"]),
                    str(variant.agent),
                    config,
                    overrides,
                    seed,
                )
                for seed in seeds
            ]
    return trials


def _variant(key: str, item: Any) -> _Part:
    """An ``agents`` entry: a preset name, or ``{agent, name, set, config}``."""
    if isinstance(item, str):
        return _Part(item, (), {}, item)
    require(isinstance(item, dict) and "agent" in item, key, item, "a preset name or {agent, ...}")
    _check_keys(key, item, VARIANT_KEYS)
    require(
        item.get("grid", True) is not True or "grid" not in item,
        f"{key}.grid",
        item.get("grid"),
        "false (run without the grid), or leave it out",
    )
    part = _part(key, str(item.get("name", item["agent"])), item, str(item["agent"]))
    return dataclasses.replace(part, crossed="grid" not in item)


def _level(key: str, name: str, value: Any) -> _Part:
    """A grid level: a list of overrides, or ``{set, config}``."""
    if isinstance(value, list):
        value = {"set": value}
    require(isinstance(value, dict), key, value, "a list of overrides or {set, config}")
    _check_keys(key, value, LEVEL_KEYS)
    return _part(key, name, value)


def _part(key: str, name: str, value: Mapping[str, Any], agent: str | None = None) -> _Part:
    overrides = value.get("set") or []
    require(isinstance(overrides, list), f"{key}.set", overrides, "a list of key=value strings")
    config = value.get("config") or {}
    require(isinstance(config, dict), f"{key}.config", config, "a mapping of config fields")
    require("/" not in name, key, name, "a name without '/'")
    return _Part(name, tuple(str(o) for o in overrides), config, agent)


def _check_keys(key: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for k in data:
        require(k in allowed, f"{key}.{k}", data[k], allowed)
