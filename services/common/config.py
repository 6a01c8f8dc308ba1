"""Config loading: one TOML file, one section per service, environment overrides.

Each service declares a frozen dataclass of scalars (plus nested specs it builds itself).
`load_section` reads `[section]` from the file, applies `PREFIX_FIELD` environment overrides
for scalar fields, then command-line overrides, and validates types with clear messages.
Only `__main__` modules call this; cores get the dataclass.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The config file or an override is invalid. The message names the key."""


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _scalar_type(hint: Any) -> type | None:
    """The scalar type of a field (str, int, float, bool), unwrapping `X | None`."""
    if hint in (str, int, float, bool):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in (str, int, float, bool):
            return args[0]
    return None


def _coerce(name: str, kind: type, value: Any) -> Any:
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}: expected a boolean, got {value!r}")
        try:
            return kind(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from exc
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def load_section(
    cls: type[T],
    data: Mapping[str, Any],
    env: Mapping[str, str],
    env_prefix: str,
    overrides: Mapping[str, Any] | None = None,
    section: str = "",
    **extra: Any,
) -> T:
    """Builds `cls` from a TOML section, `ENV_PREFIX_<FIELD>` variables and overrides.

    Precedence, lowest first: dataclass default, file, environment, overrides (flags).
    A field whose type is itself a dataclass is a nested section (`[section.field]`, with
    `ENV_PREFIX_FIELD_<KEY>` variables); a field with `metadata={"config": False}` is not
    read from the file. `extra` passes fields the caller built itself (e.g. nested specs).
    """
    name = section or env_prefix.lower()
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(typing.cast(Any, cls))  # cls is a dataclass
    readable = {f.name: f for f in fields if f.metadata.get("config", True)}
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{name}] must be a table, got {data!r}")
    unknown = set(data) - set(readable)
    if unknown:
        raise ConfigError(f"[{name}] unknown keys: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for field in readable.values():
        if field.name in extra:
            continue
        key = f"{env_prefix}_{field.name.upper()}"
        hint = hints[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            inner = data.get(field.name, {})
            values[field.name] = load_section(hint, inner, env, key, None, f"{name}.{field.name}")
            continue
        raw = data.get(field.name, dataclasses.MISSING)
        raw = env.get(key, raw)
        if overrides and overrides.get(field.name) is not None:
            raw = overrides[field.name]
        if raw is not dataclasses.MISSING:
            values[field.name] = _typed(f"{name}.{field.name}", hint, raw)
    try:
        return cls(**values, **extra)
    except TypeError as exc:
        raise ConfigError(f"[{name}] {exc}") from exc
    except ConfigError as exc:
        if str(exc).startswith(("[", name)):
            raise
        raise ConfigError(f"[{name}] {exc}") from exc


def _typed(name: str, hint: Any, raw: Any) -> Any:
    kind = _scalar_type(hint)
    return raw if kind is None else _coerce(name, kind, raw)


def require(condition: bool, message: str) -> None:
    """Raises ConfigError(message) unless condition holds. For __post_init__ validation."""
    if not condition:
        raise ConfigError(message)


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
