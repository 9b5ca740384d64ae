"""The `asr` command line: thin wrappers over the library. `asr COMMAND --help` for each.

User errors (a missing file, a bad config key, unreadable audio, a bad option) end with one line
`asr: error: ...` and exit status 2, never a traceback (`asr.cli.errors`); any other exception
is a bug and shows its traceback, as does every error with -v.

A thing has one flag name in every command (`--device` the torch device, `--output` a file,
`--output-dir` a folder, ...): the shared flags are defined once, in `asr.cli.options`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from asr.cli import demo, evaluate, hub, import_nemo, listen, pack, serve, train, transcribe
from asr.cli.errors import Parser, UsageError, describe, report, user_errors


def build_parser() -> Parser:
    parser = Parser(prog="asr", description="Conformer-CTC speech recognition")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_commands(sub)
    p = sub.add_parser("transcribe", help="transcribe audio files or folders")
    transcribe.add_transcribe_arguments(p)
    p.set_defaults(func=transcribe.transcribe_command)
    p = sub.add_parser("evaluate", help="WER/CER of a model on a manifest, or of hyp vs ref")
    evaluate.add_evaluate_arguments(p)
    p.set_defaults(func=evaluate.evaluate_command)
    p = sub.add_parser("pack", help="a manifest -> Parquet shards with the audio embedded")
    pack.add_pack_arguments(p)
    p.set_defaults(func=pack.pack_command)
    p = sub.add_parser("listen", help="transcribe the microphone live (a streaming model)")
    listen.add_listen_arguments(p)
    p.set_defaults(func=listen.listen_command)
    p = sub.add_parser("import-nemo", help="a NeMo Conformer-CTC .nemo file -> model.pt")
    import_nemo.add_import_nemo_arguments(p)
    p.set_defaults(func=import_nemo.import_nemo_command)
    p = sub.add_parser("push-to-hub", help="upload a model.pt and its model card to the HF Hub")
    hub.add_push_arguments(p)
    p.set_defaults(func=hub.push_command)
    p = sub.add_parser("demo", help="the built-in demo: synthesize a corpus, train, evaluate")
    demo.add_demo_arguments(p)
    p.set_defaults(func=demo.demo_command)
    p = sub.add_parser("serve", help="an OpenAI-compatible transcription server and web page")
    serve.add_serve_arguments(p)
    p.set_defaults(func=serve.serve_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:  # already reported
        return int(err.code)
    # Warnings from every library; INFO (DEBUG with -v) only from our own `asr.*` loggers.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asr").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("asr: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.verbose or not isinstance(err, user_errors()):
            raise  # a bug, or -v: the traceback
        return report(describe(err))


if __name__ == "__main__":
    sys.exit(main())
