"""Packing real speech: `asr pack` of librispeech-3h (894 utterances, 3.1 h of FLAC) into
Parquet shards; the time it takes, the size on disk against the source files, the time of a
rerun (every shard kept), and a check that every row decodes to exactly the samples of its
original file (and holds its bytes unchanged).

    .venv/bin/python bench/pack.py                      # -> bench/results/pack.json
    .venv/bin/python bench/pack.py --workers 2 --shard-size 50MB
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.corpora.librispeech import prepare_manifests
from asr.data.hf import load_hf_utterances
from asr.data.manifest import read_manifest
from asr.data.pack import pack_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def verify(output: Path, manifest: Path) -> dict[str, int]:
    """Stream every row back: its bytes are the file's, its samples are soundfile's of the file."""
    utterances = {u.id: u for u in read_manifest(manifest)}
    source = load_hf_utterances(str(output), "train", streaming=True)
    same_bytes = same_samples = rows = 0
    for i, row in enumerate(source.dataset):  # raw rows: bytes and columns
        utt = utterances[row["id"]]
        original, rate = sf.read(utt.audio, dtype="float32", always_2d=True)
        decoded = source.decode(row, i)
        same_bytes += row["audio"]["bytes"] == Path(utt.audio).read_bytes()
        same_samples += decoded["sampling_rate"] == rate and np.array_equal(
            decoded["array"], original
        )
        rows += 1
    return {"rows": rows, "bytes_identical": same_bytes, "samples_identical": same_samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "librispeech-3h")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-pack"))
    parser.add_argument("--shard-size", default="1GB")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("bench/results/pack.json"))
    args = parser.parse_args()
    if not (args.data / "LibriSpeech").is_dir():
        sys.exit(f"no LibriSpeech/ folder in {args.data}")
    manifests = prepare_manifests(args.data, args.work_dir / "manifests", ["train-clean-5"])
    manifest = manifests["train-clean-5"]
    packed = args.work_dir / "packed"
    shutil.rmtree(packed, ignore_errors=True)
    began = time.perf_counter()
    entry = pack_manifest(manifest, packed, shard_size=args.shard_size, num_workers=args.workers)
    seconds = time.perf_counter() - began
    began = time.perf_counter()
    rerun = pack_manifest(manifest, packed, shard_size=args.shard_size, num_workers=args.workers)
    rerun_seconds = time.perf_counter() - began
    on_disk = sum(p.stat().st_size for p in packed.rglob("*") if p.is_file())
    checks = verify(packed, manifest)
    result = {
        "command": " ".join(
            [
                "python bench/pack.py",
                "--shard-size",
                args.shard_size,
                "--workers",
                str(args.workers),
            ]
        ),
        **machine(),
        "utterances": entry["rows"],
        "hours": entry["hours"],
        "shards": len(entry["shards"]),
        "dropped": len(entry["dropped"]),
        "pack_seconds": round(seconds, 1),
        "audio_seconds_per_second": round(entry["seconds"] / seconds, 1),
        "rerun_seconds": round(rerun_seconds, 2),
        "rerun_kept_shards": rerun["reused_shards"],
        "source_bytes": entry["source_bytes"],
        "shard_bytes": entry["bytes"],
        "folder_bytes": on_disk,  # shards + index + the resume records
        "size_ratio": round(entry["bytes"] / entry["source_bytes"], 4),
        **checks,
    }
    write_json(args.output, result)
    for key, value in result.items():
        print(f"{key:>26}: {value}")
    identical = checks["bytes_identical"] == checks["samples_identical"] == checks["rows"]
    return 0 if identical and checks["rows"] == entry["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
