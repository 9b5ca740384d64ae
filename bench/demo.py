"""Benchmark of the built-in demo: the full run, timed per stage, and same seed -> same result.

    python bench/demo.py --work-dir /tmp/demo-bench --runs 2 --output bench/demo.json

Each run starts from an empty folder (`<work-dir>/run<k>`): synthesis, training, evaluation and
transcription are all timed. With `--runs 2` or more the runs use the same seed and the script
checks that they agree: the corpus manifests, the weights of model.pt, the test transcripts and
the WER. `--threads` sets torch's thread count (the target machine has 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from asr.demo import run_demo


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def weights_hash(model_path: Path) -> str:
    """Hash of the model's tensors (not of the file: `info` holds the training time)."""
    bundle = torch.load(model_path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for key in ("model_state", "frontend_state"):
        for name, tensor in sorted(bundle[key].items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint(work_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    corpus = work_dir / "corpus"
    return {
        "manifests": {s: file_hash(corpus / f"{s}.jsonl") for s in ("train", "val", "test")},
        "weights": weights_hash(Path(summary["model"])),
        "transcripts": {
            name: file_hash(work_dir / "eval" / name / "transcripts.jsonl")
            for name in summary["scores"]
        },
        "scores": summary["scores"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/asr-demo-bench"))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the shortened test run")
    parser.add_argument("--output", type=Path, default=Path("bench/demo.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    for k in range(args.runs):
        work_dir = args.work_dir / f"run{k}"
        if work_dir.exists():
            shutil.rmtree(work_dir)
        began = time.perf_counter()
        summary = run_demo(work_dir, quick=args.quick, seed=args.seed)
        wall = time.perf_counter() - began
        runs.append({"wall_seconds": round(wall, 1), "summary": summary,
                     "fingerprint": fingerprint(work_dir, summary)})  # fmt: skip
    prints = [r["fingerprint"] for r in runs]
    result = {
        "command": f"python bench/demo.py --runs {args.runs} --seed {args.seed}"
        + (" --quick" if args.quick else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "runs": [
            {
                "wall_seconds": r["wall_seconds"],
                "stage_seconds": r["summary"]["stage_seconds"],
                "train_seconds": r["summary"]["train_seconds"],
                "scores": r["summary"]["scores"],
                "fingerprint": r["fingerprint"],
            }
            for r in runs
        ],
        "same_result": all(p == prints[0] for p in prints) if len(prints) > 1 else None,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    for r in result["runs"]:
        print(f"wall {r['wall_seconds']:.0f} s, stages {r['stage_seconds']}, scores {r['scores']}")
    print(f"same seed -> same result: {result['same_result']}; written to {args.output}")


if __name__ == "__main__":
    main()
