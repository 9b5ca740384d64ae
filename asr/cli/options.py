"""Command-line flags generated from an options dataclass (`DecodingOptions`, `ChunkingOptions`).

Each field becomes one flag (`chunk_seconds` -> `--chunk-seconds`) with the field's type,
default and `help` metadata, so every command that takes the options offers the same flags and
a new field appears in all of them at once. A `bool` field is `--flag/--no-flag`; an optional
field (`int | None`) takes the type it holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def add_options_arguments(parser: argparse.ArgumentParser, kind: type, title: str) -> None:
    """Add one flag per field of the dataclass `kind` to `parser`, in a group called `title`."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if hints[f.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                               help=f"{help_text} (default %(default)s)")  # fmt: skip
            continue
        shown = "" if f.default is None else " (default %(default)s)"
        kind_of_value = _flag_type(hints[f.name], f.name)
        group.add_argument(flag, type=kind_of_value, default=f.default, help=help_text + shown)


def options_from_args(args: argparse.Namespace, kind: type[T]) -> T:
    """The `kind` of flags parsed after `add_options_arguments(parser, kind, ...)`; a bad value
    raises the dataclass's own ValueError."""
    return kind(**{f.name: getattr(args, f.name) for f in dataclasses.fields(kind)})


def _flag_type(hint: Any, name: str) -> Any:
    """The type a flag's value is parsed with: the hint, or the one non-None type of `X | None`."""
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    if len(kinds) != 1:
        raise TypeError(f"option {name!r}: cannot make a flag of type {hint}")
    return kinds[0]
