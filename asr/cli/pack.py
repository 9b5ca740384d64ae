"""`asr pack`: a manifest -> Parquet shards with the audio embedded (`asr.data.pack`)."""

from __future__ import annotations

import argparse
import sys


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr pack`."""
    parser.description = (
        "Write the utterances of a manifest as Parquet shards of Hugging Face `datasets`, each "
        "audio file's bytes embedded unchanged, plus OUTPUT/index.json (shards, rows, hours, "
        "and every utterance dropped with why). Train from them with data.hf_dataset=OUTPUT "
        "(data.hf_streaming=true to stream); transcribe them with asr transcribe --manifest "
        "OUTPUT. Running the same command again keeps the shards already finished."
    )
    parser.add_argument("--manifest", required=True, help="JSONL manifest to pack")
    parser.add_argument("--output", required=True, help="folder for data/*.parquet and index.json")
    parser.add_argument("--split", default="train",
                        help="split name (default %(default)s); pack a validation manifest "
                        "into the same folder with --split validation")  # fmt: skip
    parser.add_argument("--shard-size", default="1GB",
                        help="audio bytes per shard (default %(default)s)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1,
                        help="shards packed in parallel processes (default %(default)s)")  # fmt: skip


def pack_command(args: argparse.Namespace) -> int:
    from asr.data.pack import pack_manifest

    entry = pack_manifest(args.manifest, args.output, args.split, args.shard_size, args.workers)
    dropped = len(entry["dropped"]) + len(entry["manifest_problems"])
    print(
        f"asr pack: {entry['rows']} utterances ({entry['hours']:.2f} h) of {args.manifest} in "
        f"{len(entry['shards'])} shard(s) of {args.output} ({entry['reused_shards']} kept from "
        f"an earlier run), {entry['bytes'] / 1e6:.1f} MB for {entry['source_bytes'] / 1e6:.1f} "
        f"MB of audio files, in {entry['pack_seconds']:.1f} s"
        + (f"; {dropped} dropped, listed in {args.output}/index.json" if dropped else ""),
        file=sys.stderr,
    )
    return 0
