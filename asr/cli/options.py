"""The flags several commands share, defined once so each means the same thing everywhere.

Options dataclasses (`DecodingOptions`, `ChunkingOptions`): each field becomes one flag
(`chunk_seconds` -> `--chunk-seconds`) with the field's type, default and `help` metadata, so
every command that takes the options offers the same flags and a new field appears in all of
them at once. A `bool` field is `--flag/--no-flag`; an optional field (`int | None`) takes the
type it holds.

Names, the same in every command:
    --model        a model to load (`asr.inference.transcribe.load_model`)
    --device       the torch device: auto, cpu, cuda or cuda:N (`add_device_argument`)
    --output       a file to write; --output-dir a folder to write into
    --workers      `asr serve`'s model workers (threads, each with its own copy of the models);
                   --processes: the processes of `asr pack` and `asr make-corpus`
    --chunk-ms, --lookahead-ms, --left-seconds
                   streaming (`asr transcribe --streaming`, `asr listen`, `asr serve`)
A renamed flag keeps its old name as a hidden alias that warns (`add_renamed_argument`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from typing import Any, TypeVar

from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.streaming import (
    DEFAULT_CHUNK_MS,
    DEFAULT_LEFT_SECONDS,
    DEFAULT_LOOKAHEAD_MS,
    StreamingOptions,
)

T = TypeVar("T")
# What `--model` takes wherever a model is loaded (`asr.inference.transcribe.load_model`).
MODEL_HELP = ("a model bundle (model.pt), a shipped model's name, a NeMo .nemo file (imported on "
              "load), hf://OWNER/REPO on the Hugging Face Hub, or an exported .onnx file (run by "
              "ONNX Runtime: pip install 'asr[onnx]')")  # fmt: skip
DECODING_TITLE = "decoding (greedy unless --lm, --lexicon or --beam-size)"
CHUNKING_TITLE = "chunking (each file in windows, batched)"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


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


def options_to_flags(options: Any) -> list[str]:
    """The flags that `add_options_arguments` + `options_from_args` turn back into `options` (a
    `DecodingOptions` or `ChunkingOptions`): one per field that differs from its default, e.g.
    a tuned decoding for an `asr` command a recipe prints and runs."""
    flags: list[str] = []
    default = type(options)()
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The `DecodingOptions` flags (`--beam-size`, `--lm`, ...), in their "decoding" group."""
    add_options_arguments(parser, DecodingOptions, DECODING_TITLE)


def decoding_options(args: argparse.Namespace) -> DecodingOptions:
    return options_from_args(args, DecodingOptions)


def add_chunking_arguments(parser: argparse.ArgumentParser) -> None:
    """The `ChunkingOptions` flags (`--batch-seconds`, `--chunk-seconds`, `--chunk-overlap`)."""
    add_options_arguments(parser, ChunkingOptions, CHUNKING_TITLE)


def chunking_options(args: argparse.Namespace) -> ChunkingOptions:
    return options_from_args(args, ChunkingOptions)


def torch_device(value: str) -> str:
    """A `--device` value checked (argparse's `type`): auto, cpu, cuda or cuda:N."""
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def add_device_argument(
    parser: argparse.ArgumentParser, default: str = "auto", hint: str = ""
) -> None:
    """`--device`: the torch device the command runs its model on, checked when parsed (a bad
    value is one line, followed by `hint` when given)."""

    def checked(value: str) -> str:
        try:
            return torch_device(value)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{err} {hint}".strip()) from None

    parser.add_argument("--device", type=checked, default=default, metavar="DEVICE",
                        help="torch device: auto (CUDA when available), cpu, cuda or cuda:N "
                        "(default %(default)s)")  # fmt: skip


def add_streaming_arguments(
    parser: argparse.ArgumentParser, title: str, pieces: bool = False
) -> Any:
    """`--chunk-ms`, `--lookahead-ms` and `--left-seconds` of a live stream
    (`Transcriber.stream`), and with `pieces` `--piece-ms` (files fed as a microphone would),
    in a group called `title` (returned, for a command's own streaming flags)."""
    group = parser.add_argument_group(title)
    group.add_argument("--chunk-ms", type=float, default=DEFAULT_CHUNK_MS,
                       help="audio per encoder chunk (default %(default)s)")  # fmt: skip
    group.add_argument("--lookahead-ms", type=float, default=DEFAULT_LOOKAHEAD_MS,
                       help="audio after each chunk that it also sees, decoded with the next "
                       "chunk: a word waits up to chunk + look-ahead (default %(default)s; "
                       "at a 640 ms worst case it is more accurate than 640 + 0)")  # fmt: skip
    group.add_argument("--left-seconds", type=float, default=DEFAULT_LEFT_SECONDS,
                       help="left context each chunk attends to (default %(default)s)")  # fmt: skip
    if pieces:
        group.add_argument("--piece-ms", type=float, default=StreamingOptions.piece_ms,
                           help="files are fed in pieces this long, as a microphone delivers "
                           "them (default %(default)s)")  # fmt: skip
    return group


def streaming_options(args: argparse.Namespace) -> StreamingOptions:
    """The `StreamingOptions` of `add_streaming_arguments(..., pieces=True)`'s flags."""
    return StreamingOptions(args.chunk_ms, args.lookahead_ms, args.left_seconds, args.piece_ms)


class _Renamed(argparse.Action):
    """Stores its value (as argparse's "store" does) and warns when given by an old name."""

    old_names: dict[str, str]

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string in self.old_names:
            new = self.old_names[option_string]
            print(f"asr: warning: {option_string} is deprecated and will be removed; use {new}",
                  file=sys.stderr, flush=True)  # fmt: skip
        setattr(namespace, self.dest, values)


def add_renamed_argument(
    parser: argparse.ArgumentParser, name: str, old_name: str, **kwargs: Any
) -> argparse.Action:
    """Add the flag `name` (kwargs as `add_argument`'s, a flag that takes a value) that also
    answers to `old_name`, its name before a rename: the old name is parsed (same value, same
    `required`) but not shown in --help, and warns on stderr, so old scripts keep working."""
    action = parser.add_argument(name, action=_Renamed, **kwargs)
    action.old_names = {old_name: name}
    # Registered for parsing only: --help lists `action.option_strings`, which lack it.
    parser._option_string_actions[old_name] = action
    return action


def _flag_type(hint: Any, name: str) -> Any:
    """The type a flag's value is parsed with: the hint, or the one non-None type of `X | None`."""
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    if len(kinds) != 1:
        raise TypeError(f"option {name!r}: cannot make a flag of type {hint}")
    return kinds[0]
