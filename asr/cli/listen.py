"""`asr listen`: live transcription of the microphone (a model trained to stream).

Audio comes from the input device (`--input-device`, else the system's default) through
`sounddevice` (PortAudio), an optional extra:
`pip install 'asr[live]'` (and PortAudio itself: `apt install libportaudio2` on Debian/Ubuntu).
The partial text is rewritten in place after every chunk; Ctrl-C ends the stream and prints the
final text with word timings.
"""

from __future__ import annotations

import argparse
import queue
import sys

from asr.cli.options import add_device_argument, add_streaming_arguments
from asr.extras import MissingExtraError


def add_listen_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr listen`."""
    parser.add_argument("--model", required=True,
                        help="a model trained to stream (chunk_conv or causal_conv): a bundle "
                        "(model.pt), a shipped model's name or hf://OWNER/REPO on the Hugging "
                        "Face Hub")  # fmt: skip
    add_device_argument(parser, hint="(the microphone is --input-device)")
    parser.add_argument("--input-device", metavar="NAME_OR_INDEX",
                        help="the microphone: a sound input device's name or index, as "
                        "`python -m sounddevice` lists them (default: the system's default)")  # fmt: skip
    add_streaming_arguments(parser, "streaming")


def open_microphone():
    """The `sounddevice` module, or one clear error: not installed, no PortAudio, no input."""
    try:
        import sounddevice
    except ImportError:
        raise MissingExtraError(
            "asr listen needs the package 'sounddevice', which is not installed: "
            "pip install 'asr[live]'"
        ) from None
    except OSError as err:  # the wheel loads the system's PortAudio at import
        raise MissingExtraError(
            f"asr listen needs the PortAudio library ({err}); on Debian/Ubuntu: "
            f"apt install libportaudio2"
        ) from None
    return sounddevice


def listen_command(args: argparse.Namespace) -> int:
    from asr.inference.transcribe import load_model

    # The model and the options first: their errors need no microphone to be found.
    transcriber = load_model(args.model, device=args.device)
    stream = transcriber.stream(
        args.chunk_ms, args.left_seconds, id="microphone", lookahead_ms=args.lookahead_ms
    )
    sd = open_microphone()
    microphone = args.input_device
    if microphone is not None and microphone.isdigit():  # an index, as sounddevice lists them
        microphone = int(microphone)
    try:
        sd.query_devices(microphone, kind="input")
    except (ValueError, sd.PortAudioError) as err:
        named = "" if microphone is None else f" (--input-device {args.input_device})"
        raise ValueError(f"no microphone to listen to{named}: {err}") from None
    pieces: queue.Queue = queue.Queue()

    def collect(block, frames, time_info, status) -> None:  # PortAudio's thread: just queue
        pieces.put(block[:, 0].copy())

    print("listening (Ctrl-C to stop)...", file=sys.stderr)
    shown = ""
    try:
        with sd.InputStream(
            samplerate=transcriber.sample_rate,
            channels=1,
            dtype="float32",
            blocksize=transcriber.sample_rate // 10,
            device=microphone,
            callback=collect,
        ):
            while True:
                partial = stream.accept(pieces.get())
                if partial.text != shown:
                    shown = partial.text
                    print(f"\r{shown[-150:]}", end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    result = stream.finish()
    print("", file=sys.stderr)
    print(result.text)
    for w in result.words:
        print(f"{w.start:8.2f} {w.end:8.2f}  {w.word}", file=sys.stderr)
    return 0
