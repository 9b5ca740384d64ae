"""Decoding flags for every command that decodes, generated from `DecodingOptions`.

Each field of `asr.inference.decoding.DecodingOptions` becomes one flag (`lm_weight` ->
`--lm-weight`) with the field's type, default and help, so `asr transcribe` and `asr evaluate`
cannot drift apart and a new option appears in both at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from asr.inference.decoding import DecodingOptions


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per `DecodingOptions` field to `parser`, in a "decoding" group."""
    group = parser.add_argument_group("decoding (greedy unless --lm, --lexicon or --beam-size)")
    hints = typing.get_type_hints(DecodingOptions)
    for f in dataclasses.fields(DecodingOptions):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if hints[f.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                               help=f"{help_text} (default %(default)s)")  # fmt: skip
            continue
        kind = next(
            t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)
        )
        default = "" if f.default is None else " (default %(default)s)"
        group.add_argument(flag, type=kind, default=f.default, help=help_text + default)


def decoding_options(args: argparse.Namespace) -> DecodingOptions:
    """The `DecodingOptions` of parsed flags added by `add_decoding_arguments`."""
    return DecodingOptions(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(DecodingOptions)}
    )
