"""`asr train`, `asr train-tokenizer`, `asr export`, `asr presets` and `asr make-corpus`.

Each command imports what it drives when it runs, so `asr transcribe` never loads Lightning.
"""

from __future__ import annotations

import argparse

from asr.cli.options import add_renamed_argument, add_streaming_arguments


def cmd_train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.training.checks import check_training_config
    from asr.training.train import train

    config = load_config(args.config, args.overrides)
    check_training_config(config)  # before any work: one line for a bad manifest or device
    path = train(config, resume=not args.no_resume)
    print(f"model written to {path}")
    return 0


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from asr.config import TokenizerConfig
    from asr.data.manifest import read_manifest
    from asr.tokenizer import train_tokenizer

    texts = [utt.text for path in args.manifest for utt in read_manifest(path)]
    tokenizer = train_tokenizer(texts, TokenizerConfig(kind=args.kind, vocab_size=args.vocab_size))
    tokenizer.save(args.output)
    print(f"{args.kind} tokenizer with {tokenizer.vocab_size} tokens written to {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format in ("onnx", "sherpa-onnx"):
        from asr.export.onnx import export_onnx
        from asr.export.sherpa import export_sherpa
        from asr.inference.onnx import streaming_path

        if not args.model:
            raise ValueError(
                f"--format {args.format} exports a model bundle: give --model model.pt (make one "
                f"from training checkpoints first with `asr export --checkpoint ... --output "
                f"model.pt`)"
            )
        export = export_onnx if args.format == "onnx" else export_sherpa
        streaming = {"streaming": True} if args.streaming else {}
        if args.format == "sherpa-onnx" and args.streaming:  # the online recognizer's model
            from asr.export.sherpa_online import export_sherpa_online

            export = export_sherpa_online
            streaming = {"chunk_ms": args.chunk_ms, "left_seconds": args.left_seconds,
                         "lookahead_ms": args.lookahead_ms}  # fmt: skip
        try:
            path = export(args.model, args.output, quantize=args.quantize, **streaming)
        except RuntimeError as err:  # the check of the export (ONNX Runtime vs PyTorch) failed
            if "export check failed" not in str(err):
                raise
            raise ValueError(f"{err} (nothing was written to {args.output})") from None
        name = "ONNX" if args.format == "onnx" else "sherpa-onnx"
        if args.format == "sherpa-onnx" and args.streaming:
            name = "sherpa-onnx streaming"
        print(f"{name} model ({args.quantize}) written to {path}")
        if args.streaming and args.format == "onnx":
            print(f"its streaming graph written to {streaming_path(path)}")
        return 0
    if args.streaming:
        raise ValueError(
            "--streaming applies to --format onnx only (or sherpa-onnx, for its online recognizer)"
        )
    if args.quantize != "none":
        raise ValueError("--quantize applies to --format onnx and sherpa-onnx only")
    if args.model:
        raise ValueError("--model is already a bundle: add --format onnx to export it to ONNX")
    if not args.checkpoint:
        raise ValueError("give --checkpoint (training checkpoints to a model.pt bundle)")
    from asr.training.train import export_checkpoint

    print(f"model written to {export_checkpoint(args.checkpoint, args.output)}")
    return 0


def cmd_make_corpus(args: argparse.Namespace) -> int:
    from asr.corpora.synthetic import CorpusConfig, make_demo_corpus

    config = CorpusConfig(
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        noise_prob=args.noise_prob,
        seed=args.seed,
        num_workers=args.processes,
    )
    print(f"corpus ready in {make_demo_corpus(args.output_dir, config)}")
    return 0


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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """train, train-tokenizer, export, presets, make-corpus."""
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="YAML file (see configs/)")
    p.add_argument(
        "overrides", nargs="*", help="dotted.key=value overrides, e.g. trainer.max_steps=100"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore exp_dir/checkpoints/last.ckpt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-tokenizer", help="train a tokenizer on manifest transcripts")
    p.add_argument("--manifest", nargs="+", required=True,
                   help="JSONL manifests whose texts the tokenizer learns from")  # fmt: skip
    p.add_argument("--kind", choices=["char", "unigram", "bpe"], default="unigram",
                   help="characters, or SentencePiece unigram or BPE pieces "
                   "(default %(default)s)")  # fmt: skip
    p.add_argument("--vocab-size", type=int, default=256,
                   help="tokens, for unigram and bpe (default %(default)s)")  # fmt: skip
    p.add_argument("--output", required=True, metavar="FILE", help="tokenizer JSON file to write")
    p.set_defaults(func=cmd_train_tokenizer)

    p = sub.add_parser(
        "export",
        help="training checkpoints -> model.pt bundle, or a bundle -> ONNX",
        description="asr export --checkpoint C1.ckpt [C2.ckpt ...] --output model.pt | "
        "asr export --model model.pt --format onnx --output model.onnx [--quantize int8] "
        "[--streaming] | asr export --model model.pt --format sherpa-onnx --output "
        "DIR/model.onnx [--streaming [--chunk-ms MS] [--lookahead-ms MS] [--left-seconds S]] "
        "[--quantize int8]",
    )
    p.add_argument("--checkpoint", nargs="+", help="training checkpoints; several: their average")
    p.add_argument("--model",
                   help="a model bundle (model.pt, a shipped model's name or hf://OWNER/REPO), "
                   "for --format onnx")  # fmt: skip
    p.add_argument("--format", choices=("pt", "onnx", "sherpa-onnx"), default="pt",
                   help="pt: a model.pt bundle (default); onnx: an ONNX model for ONNX Runtime; "
                   "sherpa-onnx: model.onnx with tokens.txt beside it, for sherpa-onnx's NeMo "
                   "CTC recognizer (asr.export.sherpa)")  # fmt: skip
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="onnx only: int8 weights for MatMul/Gemm (dynamic quantization)")  # fmt: skip
    p.add_argument("--streaming", action="store_true",
                   help="onnx: also write the chunk graph for live transcription, "
                   "NAME.streaming.onnx beside the output; sherpa-onnx: write the model for "
                   "its online (streaming) NeMo CTC recognizer instead of the offline one "
                   "(models trained with encoder.chunk_conv or causal_conv)")  # fmt: skip
    add_streaming_arguments(p, "sherpa-onnx --streaming: the chunk and left context, fixed in "
                            "the exported model")  # fmt: skip
    p.add_argument("--output", required=True, metavar="FILE",
                   help="the file to write: a model.pt bundle, or an .onnx model")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("presets", help="list the encoder presets and their parameter counts")
    p.add_argument("--vocab-size", type=int, default=256,
                   help="tokens of the CTC head counted (default %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("make-corpus", help="synthesize the built-in demo corpus with eSpeak NG")
    p.add_argument("output_dir", metavar="OUTPUT_DIR",
                   help="folder for the audio and train/val/test.jsonl (one already made "
                   "with the same settings is reused)")  # fmt: skip
    p.add_argument("--num-train", type=int, default=4000,
                   help="training utterances (default %(default)s)")  # fmt: skip
    p.add_argument("--num-val", type=int, default=200,
                   help="validation utterances (default %(default)s)")  # fmt: skip
    p.add_argument("--num-test", type=int, default=200,
                   help="test utterances (default %(default)s)")  # fmt: skip
    p.add_argument("--noise-prob", type=float, default=0.0,
                   help="share of utterances with noise (default %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default %(default)s)")
    add_renamed_argument(p, "--processes", "--workers", type=int, default=2,
                         help="processes synthesizing at once; the corpus does not depend on it "
                         "(default %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_make_corpus)
