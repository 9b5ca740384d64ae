"""`asr pack`: a manifest -> Parquet shards with the audio embedded (`asr.data.pack`)."""

from __future__ import annotations

import argparse
import sys

from asr.cli.options import add_renamed_argument


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr pack`."""
    parser.description = (
        "Write the utterances of a manifest as Parquet shards of Hugging Face `datasets`, each "
        "audio file's bytes embedded unchanged, plus OUTPUT_DIR/index.json (shards, rows, hours, "
        "and every utterance dropped with why). Train from them with data.hf_dataset=OUTPUT_DIR "
        "(data.hf_streaming=true to stream); transcribe them with asr transcribe --manifest "
        "OUTPUT_DIR. Running the same command again keeps the shards already finished. A "
        "progress bar on a terminal, a line every 10 s or 10% in a log."
    )
    parser.add_argument("--manifest", required=True, help="JSONL manifest to pack")
    add_renamed_argument(parser, "--output-dir", "--output", required=True,
                         help="folder for data/*.parquet and index.json")  # fmt: skip
    parser.add_argument("--split", default="train",
                        help="split name (default %(default)s); pack a validation manifest "
                        "into the same folder with --split validation")  # fmt: skip
    parser.add_argument("--shard-size", default="1GB",
                        help="audio bytes per shard (default %(default)s)")  # fmt: skip
    add_renamed_argument(parser, "--processes", "--workers", type=int, default=1,
                         help="shards packed at once, each in a process of its own (default "
                         "%(default)s)")  # fmt: skip


def pack_command(args: argparse.Namespace) -> int:
    from asr.data.pack import pack_manifest

    if args.processes < 1:  # checked here to name the flag; the library says num_workers
        raise ValueError(f"--processes must be >= 1, got {args.processes}")
    entry = pack_manifest(args.manifest, args.output_dir, args.split, args.shard_size,
                          args.processes)  # fmt: skip
    dropped = len(entry["dropped"]) + len(entry["manifest_problems"])
    print(
        f"asr pack: {entry['rows']} utterances ({entry['hours']:.2f} h) of {args.manifest} in "
        f"{len(entry['shards'])} shard(s) of {args.output_dir} ({entry['reused_shards']} kept "
        f"from an earlier run), {entry['bytes'] / 1e6:.1f} MB for "
        f"{entry['source_bytes'] / 1e6:.1f} MB of audio files, in {entry['pack_seconds']:.1f} s"
        + (f"; {dropped} dropped, listed in {args.output_dir}/index.json" if dropped else ""),
        file=sys.stderr,
    )
    return 0
