"""Training throughput from streamed shards against manifests: the same model and optimizer,
the same number of steps, rounds interleaved in one run.

- `manifest`: `AsrDataModule` on librispeech-3h's manifest (FLAC files read by DataLoader
  workers, `DurationBucketSampler` batches);
- `shards`: `AsrDataModule` on the same corpus packed by `asr pack` and streamed
  (`data.hf_streaming=true`: Parquet row groups, `asr.data.stream`'s windowed bucketing).

Each step is the training step of `AsrSystem` (log-mel features, SpecAugment, CTC, backward,
AdamW). Batches differ between the two (different bucketing), so both steps per second and
audio-seconds per second are reported, with the share of each round spent waiting for data.
The issue's bar: shards within 5 % of manifests.

    .venv/bin/python bench/shard_throughput.py            # -> bench/results/shard_throughput.json
    .venv/bin/python bench/shard_throughput.py --preset xs --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, set_threads, write_json

from asr.config import load_config
from asr.corpora.librispeech import prepare_manifests
from asr.data.dataset import Batch
from asr.data.manifest import read_manifest
from asr.data.pack import pack_manifest
from asr.model import ctc_objective
from asr.tokenizer import CharTokenizer
from asr.training.datamodule import AsrDataModule
from asr.training.system import AsrSystem

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def batches(datamodule: AsrDataModule) -> Iterator[Batch]:
    """The training batches, epoch after epoch (each epoch a fresh loader iterator)."""
    loader, epoch = datamodule.train_dataloader(), 0
    while True:
        for sampler in (datamodule.train_sampler, datamodule.train_stream):
            if sampler is not None:
                sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "librispeech-3h")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-shards"))
    parser.add_argument("--preset", default="s")
    parser.add_argument("--batch-seconds", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both cases")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round and case")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("bench/results/shard_throughput.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    manifest = prepare_manifests(args.data, args.work_dir / "manifests", ["train-clean-5"])
    manifest = manifest["train-clean-5"]
    pack_manifest(manifest, args.work_dir / "packed", num_workers=args.workers)  # kept if done
    tokenizer = CharTokenizer.from_texts(u.text for u in read_manifest(manifest))
    common = [f"model={args.preset}", f"data.max_batch_seconds={args.batch_seconds}",
              f"data.num_workers={args.workers}", "trainer.seed=0"]  # fmt: skip
    sources = {
        "manifest": [f"data.train_manifest={manifest}"],
        "shards": [
            f"data.hf_dataset={args.work_dir / 'packed'}",
            "data.hf_streaming=true",
            "data.hf_val_split=train",
        ],
    }
    torch.manual_seed(0)
    system = AsrSystem(load_config(None, common + sources["manifest"]), tokenizer)
    model = system.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def frames(seconds: float) -> int:
        samples = int(seconds * 16000)
        return int(model.output_lengths(torch.tensor(system.frontend.num_frames(samples))))

    streams = {}
    for name, extra in sources.items():
        datamodule = AsrDataModule(load_config(None, common + extra), tokenizer, frames)
        datamodule.setup("fit")
        streams[name] = batches(datamodule)

    def run(name: str) -> tuple[float, float, float]:
        """`args.steps` training steps: (seconds, seconds waiting for data, audio seconds)."""
        began, waited, audio = time.perf_counter(), 0.0, 0.0
        for _ in range(args.steps):
            start = time.perf_counter()
            batch = next(streams[name])
            waited += time.perf_counter() - start
            feats, feat_lengths = system.features(batch, augment=True)
            loss, _ = ctc_objective(model, feats, feat_lengths, batch.targets,
                                    batch.target_lengths, 0.0)  # fmt: skip
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            audio += float(batch.wave_lengths.sum()) / 16000
        return time.perf_counter() - began, waited, audio

    for name in streams:  # warm-up: worker start-up, allocator, oneDNN caches
        run(name)
    rounds: dict[str, list[tuple[float, float, float]]] = {name: [] for name in streams}
    for r in range(args.rounds):
        for name in streams:
            rounds[name].append(run(name))
            seconds, waited, audio = rounds[name][-1]
            print(f"round {r + 1}/{args.rounds} {name}: {args.steps / seconds:.3f} steps/s, "
                  f"{audio / seconds:.1f} audio-s/s, waited {waited / seconds:.1%}", flush=True)  # fmt: skip
    results = {
        name: {
            "steps_per_s": round(statistics.median(args.steps / s for s, _, _ in r), 4),
            "audio_s_per_s": round(statistics.median(a / s for s, _, a in r), 2),
            "wait_fraction": round(statistics.median(w / s for s, w, _ in r), 4),
            "steps_per_s_range": [
                round(args.steps / max(s for s, _, _ in r), 4),
                round(args.steps / min(s for s, _, _ in r), 4),
            ],
        }
        for name, r in rounds.items()
    }
    ratio = {k: round(results["shards"][k] / results["manifest"][k], 3)
             for k in ("steps_per_s", "audio_s_per_s")}  # fmt: skip
    result = {
        "command": " ".join(["python bench/shard_throughput.py", *sys.argv[1:]]),
        **machine(),
        "config": {
            k: getattr(args, k)
            for k in ("preset", "batch_seconds", "workers", "threads", "steps", "rounds")
        },
        "results": results,
        "shards_over_manifest": ratio,
    }
    write_json(args.output, result)
    print(result["results"], "shards / manifest:", ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
