"""Frozen config dataclasses to and from YAML, every key, type and range checked on the way in.

`load_dataclass` reads a YAML file and applies `dotted.key=value` overrides; `from_dict` builds a
(nested) dataclass from plain values, coercing what YAML reads loosely (1 -> 1.0, "1e-3" ->
0.001, lists -> tuples) and raising a `ValueError` that names the whole dotted key (and the
closest valid key) for anything unknown or of the wrong type; `to_dict` and `save_config` go the
other way. `check_positive`, `check_at_least` and `check_choice` are the range checks each
dataclass runs on its own values. The toolkit's fields themselves are in `asr.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml


def load_dataclass(
    cls: type, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Any:
    """Dataclass `cls` from a YAML file (or from its defaults) with `dotted.key=value`
    overrides applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
    for item in overrides:
        apply_override(raw, item)
    return from_dict(cls, raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 3, 1e-3, [1, 2])."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like dotted.key=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def to_dict(config: Any) -> Any:
    """A dataclass (nested) as plain YAML-friendly values."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking every key and type."""
    if not isinstance(raw, dict):
        raise ValueError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = (
                f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            )
            raise ValueError(f"unknown config key {name!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, prefix=name)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, name)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"config key {name!r} expects a list, got {value!r}")
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ValueError(f"config key {name!r} expects {len(item_types)} values, got {value!r}")
        return tuple(
            _coerce(t, v, f"{name}[{i}]") for i, (t, v) in enumerate(zip(item_types, value))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {name!r} expects a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if (
        hint in (int, str, bool)
        and isinstance(value, hint)
        and not (hint is int and isinstance(value, bool))
    ):
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ValueError(f"config key {name!r} expects {expected}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Range checks, run by each dataclass's __post_init__ on its own values


def check_positive(config: Any, section: str, *names: str) -> None:
    """`section`: the dataclass's key in its parent (`encoder`, `optim`, ...), so that messages
    name the whole key."""
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{section}.{name} must be positive, got {getattr(config, name)}")


def check_at_least(
    config: Any, section: str, low: float, *names: str, high: float | None = None
) -> None:
    """low <= value (<= high, when given)."""
    for name in names:
        value = getattr(config, name)
        if value < low or (high is not None and value > high):
            limits = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{section}.{name} must be {limits}, got {value}")


def check_choice(config: Any, section: str, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        raise ValueError(
            f"{section}.{name} must be one of {list(choices)}, got {getattr(config, name)!r}"
        )
