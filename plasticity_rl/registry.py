"""Registries that turn names from config data into classes, and the project's config error.

One registry per kind (activations, optimisers, methods, ...), in the spirit of timm's
``create_act_layer``: classes pass through, names are looked up, and every error names the
bad key, its value and what is allowed.

Example:
    >>> from plasticity_rl.registry import Registry
    >>> ACTS = Registry("activation")
    >>> @ACTS.register("double")
    ... class Double:
    ...     def __init__(self, factor: float = 2.0):
    ...         self.factor = factor
    >>> ACTS.create("double", factor=3.0).factor
    3.0
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unknown or out of range.

    The message always names the key, the value that was given and what is allowed.
    """

    def __init__(self, key: str, value: Any, allowed: str | Iterable[Any]):
        if not isinstance(allowed, str):
            allowed = ", ".join(str(a) for a in allowed)
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}: got {value!r}; allowed: {allowed}")


def require(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` ``(key, value, allowed)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, value, allowed)


def split_spec(spec: str | Mapping[str, Any], key: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name"`` or ``{"name": ..., **kwargs}`` into ``(name, kwargs)``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and "name" in spec:
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return str(spec["name"]), kwargs
    raise ConfigError(key, spec, "a name or a mapping with a 'name' key")


class Registry(Generic[T]):
    """Maps lowercase names to classes (or factories) of one kind.

    Args:
        kind: what the registry holds; used as the key in error messages (``"activation"``).
        setting_key: how errors name an entry's setting, from ``name`` and ``key``
            (``"{name}.{key}"``: ``topk.k``; optimisers: ``"optimizer.{key}"``).
    """

    def __init__(self, kind: str, setting_key: str = "{name}.{key}"):
        self.kind, self.setting_key = kind, setting_key
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class or factory under ``name``."""

        def decorator(obj: Callable[..., T]) -> Callable[..., T]:
            key = name.lower()
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._entries

    def get(self, name_or_class: str | Callable[..., T]) -> Callable[..., T]:
        """Return the class registered under a name; a class or callable passes through."""
        if not isinstance(name_or_class, str):
            return name_or_class
        key = name_or_class.lower()
        if key not in self._entries:
            raise ConfigError(self.kind, name_or_class, self.names())
        return self._entries[key]

    def create(self, name_or_class: str | Callable[..., T], **kwargs: Any) -> T:
        """Instantiate an entry; unknown keyword names, and values other than None that are not
        finite numbers where the default is a number (``lr=abc``, ``lr=nan``), raise
        :class:`ConfigError`."""
        factory = self.get(name_or_class)
        label = name_or_class if isinstance(name_or_class, str) else factory.__name__
        allowed = accepted_kwargs(factory)
        if allowed is not None:
            for key in kwargs:
                if key not in allowed:
                    raise ConfigError(f"{self.kind}.{label} key", key, sorted(allowed) or "no keys")
        for key in numeric_parameters(factory):
            if kwargs.get(key) is not None:  # None: "off", where an entry allows it
                require_number(self.setting_key.format(name=label, key=key), kwargs[key])
        return factory(**kwargs)


def require_number(key: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite real number (not a bool), or a
    list of them (one per batched run)."""
    values = value if isinstance(value, list | tuple) and value else [value]
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    require(ok and all(math.isfinite(v) for v in values), key, value, "a finite number")


def numeric_parameters(factory: Callable[..., Any]) -> list[str]:
    """The keyword arguments of ``factory`` whose default is a number (bools aside)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params
            if isinstance(p.default, int | float) and not isinstance(p.default, bool)]  # fmt: skip


def accepted_kwargs(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names a callable accepts, or ``None`` if it takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    names: set[str] = set()
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    names.discard("self")
    return names
