"""`asr transcribe --manifest`: a whole corpus, on one or many processes, into one ordered file.

The work runs through Lightning (`asr.jobs.transcribe`), imported only when this mode is used,
so `asr transcribe FILE` never loads Lightning.
"""

from __future__ import annotations

import argparse
import sys


def add_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the corpus mode of `asr transcribe`."""
    group = parser.add_argument_group(
        "a corpus (--manifest): OUTPUT_DIR/transcripts.jsonl in corpus order; a rerun skips "
        "what is done, and refuses another model or other decoding or chunking options"
    )
    group.add_argument("--manifest", metavar="CORPUS",
                       help="a JSONL manifest, a folder of audio files, a folder (or fsspec URL) "
                       "written by `asr pack`, or a Hugging Face dataset (folder or hub name)")  # fmt: skip
    group.add_argument("--split", help="the split of a packed folder or dataset (default: a "
                       "packed folder's only one)")  # fmt: skip
    group.add_argument("--devices", type=int, default=1,
                       help="processes per machine (DDP: one per GPU; gloo on CPU)")  # fmt: skip
    group.add_argument("--num-nodes", type=int, default=1,
                       help="machines, each running --devices processes (srun or torchrun)")  # fmt: skip
    group.add_argument("--overwrite", action="store_true",
                       help="start over: drop what OUTPUT_DIR holds from an earlier run")  # fmt: skip


def wants_manifest_mode(args: argparse.Namespace) -> bool:
    return args.manifest is not None or args.devices != 1 or args.num_nodes != 1


def manifest_command(args: argparse.Namespace) -> int:
    """Run the corpus mode: 0 when every utterance was transcribed, 1 when some failed (their
    errors are in the output), 2 (a user error) when none could be."""
    import torch

    from asr.cli.options import options_from_args
    from asr.inference.options import ChunkingOptions, DecodingOptions
    from asr.jobs.transcribe import transcribe_corpus

    if args.manifest is None:
        raise ValueError(
            "--devices and --num-nodes need --manifest (a corpus: a manifest, a folder of audio, "
            "a packed folder or a dataset)"
        )
    if args.inputs:
        raise ValueError(f"give audio files or --manifest, not both (got {args.inputs[0]!r})")
    if args.output_dir is None:
        raise ValueError("--manifest needs --output-dir (transcripts.jsonl is written there)")
    if getattr(args, "streaming", False):
        raise ValueError(
            "--streaming decodes files as live streams; it does not apply to --manifest"
        )
    if args.format != ["txt"]:
        raise ValueError("--manifest writes OUTPUT_DIR/transcripts.jsonl; --format is for files")
    if args.device.startswith("cuda:"):
        raise ValueError(f"--device {args.device}: with --manifest, --devices says how many "
                         f"GPUs each machine uses; give --device cuda")  # fmt: skip
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is available")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    summary = transcribe_corpus(
        args.manifest, args.model, args.output_dir, split=args.split, devices=args.devices,
        num_nodes=args.num_nodes, accelerator="gpu" if cuda else "cpu",
        options=options_from_args(args, DecodingOptions),
        chunking=options_from_args(args, ChunkingOptions), overwrite=args.overwrite,
    )  # fmt: skip
    if not summary.is_global_zero:
        return 0
    failed = summary.total - summary.succeeded
    if summary.total and not summary.succeeded:
        raise ValueError(
            f"none of the {summary.total} utterances of {args.manifest} could be transcribed "
            f"(the first: {summary.first_error}); each one's error is in {summary.output}"
        )
    print(
        f"asr transcribe: {summary.succeeded} of {summary.total} utterances transcribed "
        f"({summary.done_before} by an earlier run), {summary.audio_seconds:.1f} s of audio in "
        f"{summary.seconds:.1f} s on {args.devices * args.num_nodes} process(es) -> "
        f"{summary.output}" + (f"; {failed} failed (their errors are in it)" if failed else ""),
        file=sys.stderr,
    )
    return 0 if failed == 0 else 1
