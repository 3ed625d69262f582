"""Typed run configs filled from YAML presets plus ``key=value`` overrides (OmegaConf).

A preset is a YAML file in the repository's ``envs/`` or ``agents/`` folder, named by its file
stem (``ppo-cbp-l2``) or given as a path. A preset may start from another one with
``base: <name>``; its own keys are merged over the base's. Overrides use dotted keys
(``method.continual_backprop.replacement_rate=1e-5``) and are merged last. Every error names
the key, the value and what is allowed (:class:`~plasticity_rl.registry.ConfigError`).

YAML files are read with YAML 1.2's number rules (:func:`load_yaml`): ``1e-3`` is a number,
as in OmegaConf's ``key=value`` overrides (PyYAML alone reads it as a string).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from plasticity_rl.registry import ConfigError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout the package was installed from (presets live in its envs/ and agents/)."""


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax (``1e-3``, ``1E5``, ``.5``)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: Path) -> Any:
    """A YAML file's content with YAML 1.2 number rules.

    Raises:
        ConfigError: the file cannot be read, is not text, or is not valid YAML.
    """
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader)
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not UTF-8 text"
        raise ConfigError(str(path), "unreadable file", f"a YAML text file ({reason})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "the file"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), f"invalid YAML at {where} ({problem})",
                          "a YAML mapping") from None  # fmt: skip


def preset_names(kind: str) -> list[str]:
    """Names of the presets in ``<repo>/<kind>/`` (``kind`` is ``envs`` or ``agents``)."""
    return sorted(p.stem for p in (REPO_ROOT / kind).glob("*.yaml"))


def load_preset(
    kind: str, name_or_path: str | Path, _chain: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Load a preset by name (from ``<repo>/<kind>/``) or by path, following ``base:`` links.

    ``base`` is one preset or a list of presets, merged left to right (:func:`merge_presets`)
    under the file's own keys; e.g. ``base: [ppo-cbp-l2, fast]`` is the agent ``ppo-cbp-l2``
    with the rollout layout of ``fast``.

    Raises:
        ConfigError: unknown name, unreadable or invalid YAML, not a mapping, a ``base`` that
            is neither a name nor a list of names, or ``base:`` links that loop.
    """
    path = Path(str(name_or_path))
    if path.suffix not in (".yaml", ".yml"):
        path = REPO_ROOT / kind / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"{kind[:-1]} preset", str(name_or_path), preset_names(kind) or "none")
    key = str(path.resolve())
    if key in _chain:
        raise ConfigError(f"{path}: base", str(name_or_path), "a chain of base: presets "
                          "without a loop")  # fmt: skip
    data = load_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}", type(data).__name__, "a YAML mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    if not bases or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base", base, "a preset name or a list of preset names")
    merged: dict[str, Any] = {}
    for name in bases:
        merged = merge_presets(merged, load_preset(kind, name, (*_chain, key)))
    return merge_presets(merged, data)


def merge_presets(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``, recursively; a mapping whose ``name`` differs replaces the base's.

    So a preset that switches ``optimizer: {name: sgd}`` does not inherit Adam's ``betas``,
    while one that gives no ``name`` (``optimizer: {lr: 2.0e-4}``) changes only what it sets.
    """
    merged = dict(base)
    for key, value in child.items():
        old = merged.get(key)
        both_dicts = isinstance(old, dict) and isinstance(value, dict)
        if both_dicts and ("name" not in value or old.get("name") == value.get("name")):
            merged[key] = merge_presets(old, value)
        else:
            merged[key] = value
    return merged


def fill_defaults(config: Mapping[str, Any], schema: type) -> dict[str, Any]:
    """``config`` (a saved run config) with the default of every field of the dataclass
    ``schema`` it lacks, in nested sub-configs too (not inside free-form mappings such as an
    optimiser spec): a config saved before a field existed reads as the one its resume builds.
    """
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    hints = typing.get_type_hints(schema)
    filled = dict(config)
    for f in fields(schema):
        kind = hints.get(f.name)
        if f.name not in filled:
            filled[f.name] = defaults[f.name]  # type: ignore[index]
        elif is_dataclass(kind) and isinstance(filled[f.name], Mapping):
            filled[f.name] = fill_defaults(filled[f.name], kind)  # type: ignore[arg-type]
    return filled


def _allowed(default: Any, dotted: str) -> str | list[str]:
    """What is allowed at ``dotted``: the field's type if it exists, else the sibling keys."""
    node = default
    *parents, last = dotted.split(".")
    for part in parents:
        node = getattr(node, part, None)
    if not is_dataclass(node):
        return []
    known = {f.name: f.type for f in fields(node)}
    if last in known:
        return f"a value of type {known[last]}"
    return sorted(known)


def resolve(schema: type[T], *layers: dict[str, Any], overrides: Sequence[str] = ()) -> T:
    """Merge ``layers`` (lowest priority first) and ``key=value`` overrides into ``schema``.

    Returns an instance of the dataclass ``schema``. Unknown keys and values of the wrong type
    raise :class:`ConfigError`.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "key=value, e.g. ppo.n_steps=1024")
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError:
            raise ConfigError("--set", item, "key=value with a YAML value (a space after each "
                              "colon of a mapping: 'key={a: 1}')") from None  # fmt: skip
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(schema), *layers, OmegaConf.from_dotlist(list(overrides))
        )
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        allowed = _allowed(schema(), key)
        value = _offending_value(key, layers, overrides)
        raise ConfigError(key, value, allowed or str(err).splitlines()[0]) from None


def _offending_value(key: str, layers: Sequence[dict[str, Any]], overrides: Sequence[str]) -> Any:
    for item in reversed(list(overrides)):
        k, _, v = item.partition("=")
        if k == key:
            return v
    for layer in reversed(list(layers)):
        node: Any = layer
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (saved next to every run's logs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
