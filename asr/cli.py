"""The `asr` command line: thin wrappers over the library. `asr COMMAND --help` for each.

User errors (a missing file, a bad config key, unreadable audio) end with one line
`asr: error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence


def cmd_train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.train import train

    config = load_config(args.config, args.overrides)
    path = train(config, resume=not args.no_resume)
    print(f"model written to {path}")
    return 0


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from asr.config import TokenizerConfig
    from asr.data import read_manifest
    from asr.tokenizer import train_tokenizer

    texts = [utt.text for path in args.manifest for utt in read_manifest(path)]
    tokenizer = train_tokenizer(texts, TokenizerConfig(kind=args.kind, vocab_size=args.vocab_size))
    tokenizer.save(args.output)
    print(f"{args.kind} tokenizer with {tokenizer.vocab_size} tokens written to {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from asr.train import export_checkpoint

    print(f"model written to {export_checkpoint(args.checkpoint, args.output)}")
    return 0


def cmd_make_corpus(args: argparse.Namespace) -> int:
    from asr.corpus import CorpusConfig, make_demo_corpus

    config = CorpusConfig(
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        noise_prob=args.noise_prob,
        seed=args.seed,
        num_workers=args.workers,
    )
    print(f"corpus ready in {make_demo_corpus(args.output_dir, config)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asr.evaluate_cli import evaluate_command

    return evaluate_command(args)


def cmd_presets(args: argparse.Namespace) -> int:
    from asr.config import ENCODER_PRESETS, EncoderConfig
    from asr.model import CtcModel

    print(
        f"{'preset':<7}{'d_model':>8}{'layers':>7}{'heads':>6}{'kernel':>7}{'encoder':>11}{'with head':>11}"
    )
    for name in ENCODER_PRESETS:
        c = EncoderConfig.preset(name)
        model = CtcModel(c, args.vocab_size)
        encoder = sum(p.numel() for p in model.encoder.parameters())
        total = sum(p.numel() for p in model.parameters())
        print(
            f"{name:<7}{c.d_model:>8}{c.num_layers:>7}{c.num_heads:>6}{c.conv_kernel_size:>7}"
            f"{encoder / 1e6:>10.2f}M{total / 1e6:>10.2f}M"
        )
    print(f"(CTC head for a vocabulary of {args.vocab_size} tokens)")
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="YAML file (see configs/)")
    p.add_argument(
        "overrides", nargs="*", help="dotted.key=value overrides, e.g. trainer.max_steps=100"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore exp_dir/checkpoints/last.ckpt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-tokenizer", help="train a tokenizer on manifest transcripts")
    p.add_argument("--manifest", nargs="+", required=True)
    p.add_argument("--kind", choices=["char", "unigram", "bpe"], default="unigram")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--output", required=True, help="tokenizer JSON file to write")
    p.set_defaults(func=cmd_train_tokenizer)

    p = sub.add_parser("export", help="turn training checkpoints into a model.pt bundle")
    p.add_argument("--checkpoint", nargs="+", required=True, help="several: their average")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("presets", help="list the encoder presets and their parameter counts")
    p.add_argument("--vocab-size", type=int, default=256)
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("make-corpus", help="synthesize the built-in demo corpus with eSpeak NG")
    p.add_argument("output_dir")
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--num-test", type=int, default=200)
    p.add_argument("--noise-prob", type=float, default=0.0, help="share of utterances with noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_make_corpus)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Conformer-CTC speech recognition")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(sub)
    for register in optional_commands():
        register(sub)
    return parser


def optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands defined next to the code they drive."""
    from asr.demo import add_demo_arguments, demo_command
    from asr.evaluate_cli import add_evaluate_arguments
    from asr.transcribe import add_transcribe_arguments, transcribe_command

    def add_transcribe(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("transcribe", help="transcribe audio files or folders")
        add_transcribe_arguments(p)
        p.set_defaults(func=transcribe_command)

    def add_evaluate(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("evaluate", help="WER/CER of a model on a manifest, or of hyp vs ref")
        add_evaluate_arguments(p)
        p.set_defaults(func=cmd_evaluate)

    def add_demo(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("demo", help="the built-in demo: synthesize a corpus, train, evaluate")
        add_demo_arguments(p)
        p.set_defaults(func=demo_command)

    return [add_transcribe, add_evaluate, add_demo]


def user_errors() -> tuple[type[BaseException], ...]:
    from asr.audio import AudioError
    from asr.checkpoint import BundleError
    from asr.system import NonFiniteLossError

    return (
        AudioError,
        BundleError,
        NonFiniteLossError,
        ValueError,
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Warnings from every library; INFO (DEBUG with -v) only from our own `asr.*` loggers.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asr").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except user_errors() as err:
        if args.verbose:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"asr: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
