"""Training from streamed shards (`asr.data.stream`): duration-bucketed batches within the
budget, disjoint readers with equal batch counts per rank, each utterance once per epoch on
two DDP processes as on one, and a resumed run that reaches the same weights."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import tone_corpus

from asr.config import load_config
from asr.data.hf import load_hf_utterances
from asr.data.manifest import read_manifest
from asr.data.pack import pack_manifest
from asr.data.stream import StreamingAudioDataset, balance, collate_stream, window_batches
from asr.tokenizer import CharTokenizer
from asr.training.train import train

pytest.importorskip("datasets")
REPO = Path(__file__).resolve().parents[1]
LETTERS = CharTokenizer("abcdefghijklmnopqrstuvwxyz")


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """24 tone utterances in 8 shards, and a validation split of 4."""
    folder = tmp_path_factory.mktemp("stream")
    manifest = tone_corpus(folder, 24)
    pack_manifest(manifest, folder / "packed", shard_size="100KB")
    utts = read_manifest(manifest)[:4]
    (folder / "val.jsonl").write_text(
        "".join(line + "\n" for line in manifest.read_text().splitlines()[:4])
    )
    pack_manifest(folder / "val.jsonl", folder / "packed", split="validation")
    assert len(utts) == 4
    return folder


def test_window_batches_keep_every_row_within_the_budget() -> None:
    rng = random.Random(0)
    durations = [rng.uniform(0.5, 12.0) for _ in range(200)]
    batches = window_batches(durations, 40.0, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) == 1 or max(durations[i] for i in b) * len(b) <= 40.0
    assert batches == window_batches(durations, 40.0, random.Random(1))  # seeded
    assert batches != window_batches(durations, 40.0, random.Random(2))
    assert window_batches([50.0, 1.0], 40.0, None) == [[1], [0]]  # too long: alone


def test_balance_gives_every_rank_the_same_number_of_batches() -> None:
    # rank 0: readers 0, 1; rank 1: readers 2, 3. Splitting reaches rank 0's 8.
    plan = balance([4, 4, 3, 2], [0, 0, 2, 2], num_replicas=2)
    assert plan == [(0, 4), (0, 4), (2, 5), (1, 3)]
    # Rank 1 can reach only 6 by splitting: rank 0 drops its last 2 batches.
    plan = balance([5, 3, 2, 2], [1, 2, 2, 0], num_replicas=2)
    assert plan == [(0, 5), (0, 1), (2, 4), (0, 2)]
    with pytest.raises(ValueError, match="rank 1 of 2 has no rows"):
        balance([3, 0], [1, 0], num_replicas=2)


def stream_dataset(folder: Path, **kwargs) -> StreamingAudioDataset:
    source = load_hf_utterances(str(folder / "packed"), "train", streaming=True)
    return StreamingAudioDataset(source, LETTERS, 8.0, shuffle_buffer=5, **kwargs)


def epoch_batches(dataset: StreamingAudioDataset) -> list[list[str]]:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=dataset.num_workers if dataset.num_workers > 1 else 0,
        collate_fn=collate_stream,
    )  # fmt: skip
    return [batch.ids for batch in loader]


def test_ranks_and_workers_read_disjoint_rows_in_equal_numbers(packed: Path) -> None:
    ids = [u.id for u in read_manifest(packed / "manifest.jsonl")]
    single = epoch_batches(stream_dataset(packed))
    assert sorted(i for b in single for i in b) == ids
    ranks = [
        epoch_batches(stream_dataset(packed, num_replicas=2, rank=r, num_workers=2))
        for r in range(2)
    ]
    seen = Counter(i for batches in ranks for b in batches for i in b)
    assert sorted(seen) == ids and set(seen.values()) == {1}  # each once, on one rank
    assert len(ranks[0]) == len(ranks[1])  # DDP steps in step
    again = epoch_batches(stream_dataset(packed, num_replicas=2, rank=0, num_workers=2))
    assert again == ranks[0]  # deterministic
    other = stream_dataset(packed, num_replicas=2, rank=0, num_workers=2)
    other.set_epoch(1)
    assert epoch_batches(other) != ranks[0]  # another epoch, another order


def overrides(folder: Path, exp_dir: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"data.train_manifest={folder / 'manifest.jsonl'}",  # for the tokenizer only
        f"data.hf_dataset={folder / 'packed'}",
        "data.hf_streaming=true",
        "data.shuffle_buffer=6",
        "data.max_batch_seconds=8",
        f"exp_dir={exp_dir}",
        f"trainer.max_steps={steps}",
        "trainer.val_every_n_steps=3",
        "trainer.progress_bar=false",
        "augment.speed_factors=[0.9, 1.0, 1.1]",
        *extra,
    ]


def test_streamed_training_resumed_mid_epoch_reaches_the_same_weights(
    packed: Path, tmp_path: Path
) -> None:
    # An epoch is 8 batches from 2 workers taking turns (0 1 0 1 0 1 0 0). Stopped after 3
    # (worker 1's turn next: the resumed loader must start with it) and after 6 (worker 0's),
    # then resumed to 9, in epoch 1.
    config = REPO / "configs/tiny.yaml"
    every = ["data.num_workers=2", "trainer.val_every_n_steps=3"]  # checkpoints every 3 steps
    train(load_config(config, overrides(packed, tmp_path / "a", 9, *every)))
    for steps in (3, 6, 9):
        train(load_config(config, overrides(packed, tmp_path / "b", steps, *every)))
        b = torch.load(tmp_path / f"b/checkpoints/step-step={steps}.ckpt", weights_only=True)
        stream = b["AsrDataModule"]["stream"]["ranks"][0]
        assert stream["epoch"] == (1 if steps == 9 else 0) and not stream["epoch_done"]
        assert stream["last_worker"] == {3: 0, 6: 1, 9: 0}[steps]
    a = torch.load(tmp_path / "a/checkpoints/step-step=9.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 9
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import lightning as L
from asr.config import load_config
from asr.training.datamodule import AsrDataModule
from asr.training.system import AsrSystem
from asr.training.train import build_trainer, prepare_tokenizer

class RecordIds(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        with open(f"{sys.argv[2]}/rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps([trainer.current_epoch, batch.ids]) + "\\n")

if __name__ == "__main__":
    config = load_config(None, json.loads(sys.argv[1]))
    tokenizer = prepare_tokenizer(config, Path(sys.argv[2]))
    system = AsrSystem(config, tokenizer)
    trainer, _, _ = build_trainer(config, Path(sys.argv[2]))
    trainer.callbacks.append(RecordIds())
    frames = lambda s: int(system.model.output_lengths(  # noqa: E731
        __import__("torch").tensor(system.frontend.num_frames(int(s * 16000)))))
    trainer.fit(system, datamodule=AsrDataModule(config, tokenizer, frames))
"""


def test_ddp_from_shards_sees_each_utterance_once_per_epoch_like_one_process(
    packed: Path, tmp_path: Path
) -> None:
    script = tmp_path / "ddp_stream.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    args = overrides(packed, tmp_path / "exp", -1, "trainer.max_epochs=2", "model=xs")
    args += ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    args += ["data.num_workers=1", "trainer.val_every_n_steps=0", "tokenizer.kind=char"]
    run = subprocess.run(
        [sys.executable, str(script), json.dumps(args), str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ids = sorted(u.id for u in read_manifest(packed / "manifest.jsonl"))
    steps = []
    for epoch in (0, 1):
        per_rank = [
            [
                ids_
                for e, ids_ in map(json.loads, (tmp_path / f"rank{r}.jsonl").open())
                if e == epoch
            ]
            for r in (0, 1)
        ]
        seen = Counter(i for batches in per_rank for b in batches for i in b)
        assert sorted(seen) == ids and set(seen.values()) == {1}, epoch
        assert len(per_rank[0]) == len(per_rank[1])
        steps.append(per_rank)
    assert steps[0] != steps[1]  # reshuffled between epochs
