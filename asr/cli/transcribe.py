"""`asr transcribe`: audio files or folders -> text, JSON, SRT or VTT files (or stdout)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from asr.audio import AudioError, find_audio_files
from asr.checkpoint import atomic_write
from asr.cli.errors import USER_ERROR, report
from asr.cli.options import (
    MODEL_HELP,
    add_chunking_arguments,
    add_decoding_arguments,
    add_device_argument,
    add_streaming_arguments,
    chunking_options,
    decoding_options,
)
from asr.cli.transcribe_manifest import (
    add_manifest_arguments,
    manifest_command,
    wants_manifest_mode,
)
from asr.inference.formats import FORMATS, format_result
from asr.inference.streaming import Partial, feed_file
from asr.inference.transcribe import Result, Transcriber, load_model


def add_transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr transcribe`."""
    parser.description = (
        "Transcribe audio files of any length. Without --output-dir the text goes to stdout: "
        "just the text for a single file argument, otherwise one `path<TAB>text` line per file "
        "(--format json: one JSON object per line). Each input that fails is one `asr: error:` "
        "line on stderr and the others are still transcribed: the exit status is 0 when all "
        "were transcribed, 1 when some failed, 2 when none could be (or an option, the model "
        "or the command line is wrong)."
    )
    parser.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR",
                        help="audio files, or folders searched for audio files")  # fmt: skip
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--output-dir", type=Path,
                        help="write <stem>.<format> per input here (sub-folders kept)")  # fmt: skip
    parser.add_argument("--format", nargs="+", default=["txt"], metavar="FORMAT",
                        help="one or more of txt json srt vtt (srt/vtt need --output-dir); "
                        "files may follow: --format txt json a.wav")  # fmt: skip
    add_device_argument(parser)
    parser.add_argument("--streaming", action="store_true",
                        help="decode as a live stream (a model trained with chunk_conv or "
                        "causal_conv): partial text on stderr after every chunk, the final "
                        "result as usual")  # fmt: skip
    add_decoding_arguments(parser)
    add_chunking_arguments(parser)
    add_streaming_arguments(parser, "streaming (with --streaming, instead of chunking)", True)
    add_manifest_arguments(parser)


def stream_file(transcriber: Transcriber, path: Path, args: argparse.Namespace, options) -> Result:
    """Feed the file at `path` to a `Stream` in `--piece-ms` pieces (`feed_file`: read at its own
    rate, resampled by the stream as one signal), printing each new partial text to stderr; the
    final `Result`, or one whose `error` says why the file could not be read."""
    stream = transcriber.stream(args.chunk_ms, args.left_seconds, options=options, id=str(path),
                                lookahead_ms=args.lookahead_ms)  # fmt: skip
    shown = ""

    def show(partial: Partial, compute_seconds: float) -> None:
        nonlocal shown
        if partial.text != shown:
            shown = partial.text
            print(f"[{partial.received:7.2f} s] {shown}", file=sys.stderr, flush=True)

    try:
        feed_file(stream, path, args.piece_ms, show)
    except AudioError as err:
        return Result(id=str(path), path=str(path), error=str(err))
    result = stream.finish()
    result.path = str(path)
    return result


def transcribe_command(args: argparse.Namespace) -> int:
    """Run `asr transcribe`: 0 when every input was transcribed, 1 when some failed and the
    others were transcribed, 2 (a user error) when none could be. A bad option or model raises
    (`asr.cli.main` reports it); each input that fails is one `asr: error:` line."""
    if wants_manifest_mode(args):  # a corpus, through Lightning (asr.jobs.transcribe)
        return manifest_command(args)
    if args.overwrite:
        raise ValueError("--overwrite starts a --manifest run over; files are always rewritten")
    options, chunking = decoding_options(args), chunking_options(args)
    formats, inputs = _split_formats(args.format)
    args.inputs = [*args.inputs, *inputs]  # `--format txt json a.wav`: a.wav is an input
    if not formats:
        raise ValueError(f"--format {args.format[0]!r} is not one of {', '.join(FORMATS)}")
    if not args.inputs:
        raise ValueError("no audio files or folders given")
    if args.output_dir is None and (len(formats) > 1 or formats[0] in ("srt", "vtt")):
        raise ValueError("without --output-dir, choose one --format of txt or json for stdout")
    slots: list[tuple[Path, Path] | str] = []  # (input, output name) or an error, in order
    for arg in args.inputs:
        try:
            found = find_audio_files(arg)
        except AudioError as err:
            slots.append(str(err))
            continue
        for path in found:
            slots.append((path, path.relative_to(arg) if Path(arg).is_dir() else Path(path.name)))
    inputs = [slot[0] for slot in slots if not isinstance(slot, str)]
    transcriber = load_model(args.model, device=args.device)
    began = time.perf_counter()  # the real-time factor leaves model loading out
    if args.streaming:
        results = [stream_file(transcriber, path, args, options) for path in inputs]
    else:
        results = transcriber.transcribe(inputs, chunking, options=options)
    bare = len(args.inputs) == 1 and len(slots) == 1 and not Path(args.inputs[0]).is_dir()
    done = iter(results)
    for slot in slots:
        result = None if isinstance(slot, str) else next(done)
        if result is None or result.error is not None:
            report(slot if result is None else result.error)
        elif args.output_dir is not None:
            for fmt in formats:
                out = args.output_dir / slot[1].with_suffix(f".{fmt}")
                text = format_result(result, fmt)
                atomic_write(out, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        elif formats[0] == "json":
            print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(result.text if bare else f"{result.path}\t{result.text}", flush=True)
    succeeded = sum(r.error is None for r in results)
    if succeeded == 0:
        return USER_ERROR  # each input's error is its line above; nothing else to say
    seconds, audio = time.perf_counter() - began, sum(r.duration for r in results)
    rtf = f" (real-time factor {seconds / audio:.3f})" if audio > 0 else ""
    print(
        f"asr transcribe: {succeeded} of {len(slots)} inputs, {audio:.1f} s of "
        f"audio in {seconds:.1f} s{rtf}",
        file=sys.stderr,
    )
    return 0 if succeeded == len(slots) else 1


def _split_formats(values: list[str]) -> tuple[list[str], list[str]]:
    """--format values -> (format names, the inputs argparse put after them)."""
    names = [name for value in values for name in value.split(",") if name]
    count = next((i for i, name in enumerate(names) if name not in FORMATS), len(names))
    return list(dict.fromkeys(names[:count])), names[count:]
