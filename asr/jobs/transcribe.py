"""Transcribing a large corpus on many processes with Lightning's `Trainer.predict`.

The utterances of a corpus (`asr.data.corpus.open_corpus`: a manifest, a folder of audio, a
folder written by `asr pack`, a `datasets` dataset) are shared out among the processes (DDP, the
gloo backend on CPU; Lightning's distributed sampler gives rank r items r, r + R, ...); each rank
transcribes its share with the engine (`asr.inference.corpus.transcribe_positions`: the
decoding and chunking of `asr transcribe`) and appends every record to its own part file; once
all ranks are done, rank 0 merges the parts into one file in corpus order. The output folder,
resuming and the refusal to mix runs: `asr.jobs.outputs`. `--devices N` starts N processes on
this machine (Lightning's launcher); on a cluster, srun or torchrun start them and Lightning
reads the ranks from the environment.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from asr.bars import progress
from asr.data.corpus import Corpus, open_corpus
from asr.inference.corpus import TRANSCRIPTS, transcribe_positions
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.transcribe import load_model
from asr.jobs.outputs import (
    PARTS,
    begin_run,
    check_run,
    merge_parts,
    open_part,
    read_parts,
    run_settings,
)

ITEMS_PER_STEP = 32  # utterances per predict_step; the engine batches their windows itself


class _Todo(torch.utils.data.Dataset):
    """The positions of `corpus` still to do, longest first (less padding)."""

    def __init__(self, corpus: Corpus, done: set[int]) -> None:
        left = [i for i in range(len(corpus)) if i not in done]
        self.positions = sorted(left, key=lambda i: -corpus.durations[i])

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> int:
        return self.positions[k]


class TranscribeModule(L.LightningModule):
    """`Trainer.predict` with this module: each rank transcribes its batches into its part file,
    then rank 0 merges the parts (see the module docstring)."""

    def __init__(
        self, model: str, out_dir: Path, corpus: Corpus, options: DecodingOptions,
        chunking: ChunkingOptions, run: dict[str, Any], start_over: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model_path, self.out_dir, self.corpus = model, out_dir, corpus
        self.options, self.chunking = options, chunking
        self.run, self.start_over = run, start_over
        self.transcriber = None
        self._part = None
        self.advance: Callable[[int], None] = lambda n: None  # rank 0's progress bar

    def on_predict_start(self) -> None:
        if self.device.type == "cpu":  # the cores shared out among this machine's processes
            local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", self.trainer.num_devices)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        self.transcriber = load_model(self.model_path, device=str(self.device))
        # Every rank has read the parts (what is done) before any rank gets here: the earlier
        # run's files go, and the new settings are recorded, before any part is written.
        if self.trainer.is_global_zero:
            begin_run(self.out_dir, self.run, self.start_over)
        self.trainer.strategy.barrier("run recorded")
        self._part = open_part(self.out_dir / PARTS / f"rank{self.global_rank}.jsonl")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, index: int) -> Any:
        return batch  # positions: the engine moves what it reads

    def predict_step(self, batch: list[int], batch_idx: int) -> int:
        records = transcribe_positions(
            self.transcriber, self.corpus, batch, self.chunking, self.options
        )
        for i in sorted(records):
            self._part.write(json.dumps({"index": i, **records[i]}, ensure_ascii=False) + "\n")
        self._part.flush()
        os.fsync(self._part.fileno())
        self.advance(len(batch))
        return len(batch)  # not kept (return_predictions=False)

    def on_predict_end(self) -> None:
        self._part.close()
        self.trainer.strategy.barrier("transcribed")  # every part is complete
        if self.trainer.is_global_zero:
            merge_parts(self.out_dir, self.corpus.ids)


@dataclass
class Summary:
    """What one call did, as the process that made it sees it."""

    total: int
    done_before: int
    succeeded: int
    audio_seconds: float
    seconds: float
    is_global_zero: bool
    output: Path
    first_error: str | None = None  # of the utterances that failed, the first in corpus order


def transcribe_corpus(
    source: str | Path,
    model: str,
    out_dir: str | Path,
    *,
    split: str | None = None,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "cpu",
    options: DecodingOptions | None = None,
    chunking: ChunkingOptions | None = None,
    overwrite: bool = False,
) -> Summary:
    """Transcribe every utterance of `source` (any corpus `open_corpus` reads) not yet done into
    `out_dir` on `devices` x `num_nodes` processes; every process returns its `Summary`.
    What `out_dir` holds from a run with another model or options is refused (`check_run`), or
    with `overwrite` replaced."""
    if devices < 1 or num_nodes < 1:
        raise ValueError(f"--devices and --num-nodes must be >= 1, got {devices} and {num_nodes}")
    options, chunking = options or DecodingOptions(), chunking or ChunkingOptions()
    out_dir = Path(out_dir)
    began = time.perf_counter()
    corpus = open_corpus(source, split)
    run = run_settings(model, options, chunking)
    if not overwrite:
        check_run(out_dir, run)
    parts = {} if overwrite else read_parts(out_dir, corpus.ids)
    done = {i for i, r in parts.items() if r["error"] is None}
    todo = _Todo(corpus, done)  # before any rank writes: every rank shares out the same list
    distributed = devices * num_nodes > 1
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy=DDPStrategy(process_group_backend="gloo" if accelerator == "cpu" else None)
        if distributed else "auto",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out_dir,
    )  # fmt: skip
    module = TranscribeModule(model, out_dir, corpus, options, chunking, run, overwrite)
    loader = torch.utils.data.DataLoader(todo, batch_size=ITEMS_PER_STEP, collate_fn=list)
    if len(todo):
        # rank 0's share of the work, on its terminal (or as periodic lines in a log)
        share = -(-len(todo) // (devices * num_nodes))
        first = all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))
        with progress(share, "transcribing", "utterances", show=first) as advance:
            module.advance = advance
            trainer.predict(module, dataloaders=loader, return_predictions=False)
    elif trainer.is_global_zero:
        begin_run(out_dir, run, start_over=overwrite)  # nothing to do: empty, or all done
        merge_parts(out_dir, corpus.ids)
    records = read_parts(out_dir, corpus.ids) if trainer.is_global_zero else {}
    return Summary(
        total=len(corpus),
        done_before=len(done),
        succeeded=sum(r["error"] is None for r in records.values()),
        audio_seconds=sum(r["duration"] for i, r in records.items() if i not in done),
        seconds=time.perf_counter() - began,
        is_global_zero=trainer.is_global_zero,
        output=out_dir / TRANSCRIPTS,
        first_error=next(
            (records[i]["error"] for i in sorted(records) if records[i]["error"]), None
        ),
    )
