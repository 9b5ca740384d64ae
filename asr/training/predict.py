"""Transcribing a large corpus on many processes with Lightning's `Trainer.predict`.

The utterances of a manifest (or of a folder written by `asr pack`) are shared out among the
processes (DDP, the gloo backend on CPU; Lightning's distributed sampler gives rank r items
r, r + R, ...); each rank transcribes its share with `asr.inference.transcribe.Transcriber`
(the decoding and chunking of `asr transcribe`) and appends every result to its own part file;
once all ranks are done, rank 0 merges the parts into one file in manifest order.

    OUT/transcripts.jsonl     one JSON object per utterance (`Result.to_dict()`), manifest order
    OUT/parts/rank<r>.jsonl   what rank r transcribed, a line per utterance, with its position
    OUT/run.json              the model (its sha256) and the options they come from

A rerun skips every utterance already in a part (one that failed is tried again), so a killed
run loses only the batch each rank was working on. A rerun never mixes results: one with another
model or other decoding or chunking options is refused, naming what differs (`check_run`),
unless `overwrite` starts over. `--devices N` starts N processes on this machine (Lightning's
launcher); on a cluster, srun or torchrun start them and Lightning reads the ranks from the
environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from asr.checkpoint import BundleError, atomic_write
from asr.data.manifest import read_manifest
from asr.inference.decoding import DecodingOptions
from asr.inference.transcribe import (
    DEFAULT_BATCH_SECONDS,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SECONDS,
    AudioSegment,
    load_model,
)
from asr.interop.sources import model_file

log = logging.getLogger(__name__)

ITEMS_PER_STEP = 32  # utterances per predict_step; the Transcriber batches their chunks itself
TRANSCRIPTS = "transcripts.jsonl"
PARTS = "parts"
RUN = "run.json"


@dataclass(frozen=True)
class Settings:
    """How each rank transcribes: the `Transcriber.transcribe` arguments."""

    options: DecodingOptions = field(default_factory=DecodingOptions)
    batch_seconds: float = DEFAULT_BATCH_SECONDS
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS
    chunk_overlap: float = DEFAULT_CHUNK_OVERLAP


class Corpus(torch.utils.data.Dataset):
    """The utterances to transcribe: item k -> (position in the corpus, a `Transcriber` input,
    id, path). `todo` lists the positions still to do, longest first (less padding)."""

    def __init__(self, source: str | Path, split: str | None = None) -> None:
        path = Path(source)
        self.rows = None
        if path.is_file():
            self.utterances = read_manifest(path)
            self.durations = [utt.duration for utt in self.utterances]
            self.ids = [utt.id for utt in self.utterances]
        else:
            self.rows = _packed_rows(str(source), split)
            self.durations = self.rows.durations()
            self.ids = [str(i) for i in self.rows.dataset["id"]]
        self.todo: list[int] = list(range(len(self.durations)))

    def __len__(self) -> int:
        return len(self.todo)

    def total(self) -> int:
        return len(self.durations)

    def skip(self, done: set[int]) -> None:
        left = [i for i in range(self.total()) if i not in done]
        self.todo = sorted(left, key=lambda i: -self.durations[i])

    def __getitem__(self, k: int) -> tuple[int, Any, str, str | None]:
        i = self.todo[k]
        if self.rows is None:
            utt = self.utterances[i]
            return (
                i,
                AudioSegment(utt.audio, utt.offset, utt.duration, id=utt.id),
                utt.id,
                utt.audio,
            )
        row = self.rows.dataset[i]
        path = (row.get(self.rows.audio_column) or {}).get("path")
        try:
            item = self.rows.decode(row, i)
        except ValueError as err:  # AudioError: reported in the result, like a missing file
            return i, str(err), str(row.get("id") or i), path
        return i, (item["array"], item["sampling_rate"]), item["id"], path


def _packed_rows(source: str, split: str | None) -> Any:
    from asr.data.hf import load_hf_utterances
    from asr.data.pack import read_index

    index = read_index(source)
    if index is None:
        raise ValueError(f"{source}: not a manifest file, nor a folder written by `asr pack`")
    splits = sorted(index["splits"])
    if split is None:
        if len(splits) != 1:
            raise ValueError(f"{source} holds the splits {splits}: choose one with --split")
        split = splits[0]
    return load_hf_utterances(source, split, streaming=False)


class TranscribeModule(L.LightningModule):
    """`Trainer.predict` with this module: each rank transcribes its batches into its part file,
    then rank 0 merges the parts (see the module docstring)."""

    def __init__(
        self, model: str, out_dir: Path, ids: list[str], settings: Settings, run: dict[str, Any],
        start_over: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model_path, self.out_dir, self.ids, self.settings = model, out_dir, ids, settings
        self.run, self.start_over = run, start_over
        self.transcriber = None
        self._part = None

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
        self._part = _open_part(self.out_dir / PARTS / f"rank{self.global_rank}.jsonl")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, index: int) -> Any:
        return batch  # file segments and arrays: the Transcriber moves what it reads

    def predict_step(self, batch: list[tuple[int, Any, str, str | None]], batch_idx: int) -> int:
        s = self.settings
        ready = [item for item in batch if not isinstance(item[1], str)]
        results = self.transcriber.transcribe([item[1] for item in ready], s.batch_seconds,
                                              s.chunk_seconds, s.chunk_overlap, options=s.options)  # fmt: skip
        records = {i: {**r.to_dict(), "id": utt_id, "path": path}
                   for (i, _, utt_id, path), r in zip(ready, results)}  # fmt: skip
        for i, error, utt_id, path in batch:
            if isinstance(error, str):
                records[i] = {"id": utt_id, "path": path, "text": "", "words": [],
                              "duration": 0.0, "error": error}  # fmt: skip
        for i in sorted(records):
            self._part.write(json.dumps({"index": i, **records[i]}, ensure_ascii=False) + "\n")
        self._part.flush()
        os.fsync(self._part.fileno())
        return len(batch)  # not kept (return_predictions=False)

    def on_predict_end(self) -> None:
        self._part.close()
        self.trainer.strategy.barrier("transcribed")  # every part is complete
        if self.trainer.is_global_zero:
            merge_parts(self.out_dir, self.ids)


def _open_part(path: Path) -> Any:
    """Open a part for appending, first cutting a last line a killed run left unfinished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return path.open("a", encoding="utf-8")


def read_parts(out_dir: Path, ids: list[str]) -> dict[int, dict[str, Any]]:
    """Position -> its record from every part (records of another corpus, whose id at that
    position differs, are ignored); a success wins over a failure of the same utterance."""
    found: dict[int, dict[str, Any]] = {}
    for part in sorted((out_dir / PARTS).glob("*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                i = int(record.pop("index"))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a killed run
            if not (0 <= i < len(ids) and record.get("id") == ids[i]):
                continue
            if i not in found or found[i]["error"] is not None:
                found[i] = record
    return found


def merge_parts(out_dir: Path, ids: list[str]) -> Path:
    """OUT/transcripts.jsonl from the parts, in corpus order (written atomically)."""
    records = read_parts(out_dir, ids)
    missing = [i for i in range(len(ids)) if i not in records]
    if missing:  # each rank wrote its part where rank 0 cannot see it
        raise ValueError(
            f"the parts in {out_dir / PARTS} lack {len(missing)} of {len(ids)} utterance(s), "
            f"e.g. {ids[missing[0]]!r}: is --output-dir on a file system every process (every "
            f"node) shares? Rerun to transcribe what is missing"
        )
    lines = "".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in range(len(ids)))
    path = out_dir / TRANSCRIPTS
    atomic_write(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    return path


def run_settings(model: str | Path, settings: Settings) -> dict[str, Any]:
    """What the transcripts depend on, as kept in OUT/run.json: the model file's sha256 (its
    weights, front end and tokenizer), the decoding options (an LM's or a lexicon's sha256 with
    its path) and the chunking. Not the batch size nor the device: they change no result (the
    engine is padding invariant), so a killed run may be resumed with a smaller batch."""
    path = model_file(model)
    if not path.is_file():
        raise BundleError(f"model file not found: {path}")
    run: dict[str, Any] = {"model": str(model), "model_sha256": _sha256(path)}
    for name, value in dataclasses.asdict(settings.options).items():
        run[name] = value
        if name in ("lm", "lexicon"):
            run[f"{name}_sha256"] = None if value is None else _sha256(Path(value))
    run.update(chunk_seconds=settings.chunk_seconds, chunk_overlap=settings.chunk_overlap)
    return run


def check_run(out_dir: Path, run: dict[str, Any]) -> None:
    """Refuse (ValueError, one line) to add to `out_dir` transcripts made otherwise than `run`
    says, or by an asr that did not record how."""
    path = out_dir / RUN
    advice = "rerun with --overwrite to start over, or choose another --output-dir"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        differences = _differences(before, run)
        if differences:
            raise ValueError(f"{out_dir} holds transcripts made with other settings ({path}): "
                             f"{'; '.join(differences)}; {advice}")  # fmt: skip
    elif any((out_dir / PARTS).glob("*.jsonl")) or (out_dir / TRANSCRIPTS).exists():
        raise ValueError(f"{out_dir} holds transcripts without a record of their model and "
                         f"options ({path}); {advice}")  # fmt: skip


def begin_run(out_dir: Path, run: dict[str, Any], start_over: bool) -> None:
    """Record `run` in OUT/run.json, first removing an earlier run's files if `start_over`
    (run.json first: a start-over killed halfway leaves files no rerun mixes with its own)."""
    if start_over:
        (out_dir / RUN).unlink(missing_ok=True)
        (out_dir / TRANSCRIPTS).unlink(missing_ok=True)
        shutil.rmtree(out_dir / PARTS, ignore_errors=True)
    text = json.dumps(run, indent=1) + "\n"
    atomic_write(out_dir / RUN, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """ "key: then-value then, now-value now" for each setting that differs; a file (model, LM,
    lexicon) differs by content, shown with its path."""
    found = []
    for key in dict.fromkeys([*before, *now]):
        name = key.removesuffix("_sha256")
        if key != name:
            if before.get(key) != now.get(key):
                then, new = (_file(d.get(name), d.get(key)) for d in (before, now))
                found.append(f"{name}: {then} then, {new} now")
        elif f"{key}_sha256" not in now and before.get(key) != now.get(key):
            found.append(f"{key}: {before.get(key)} then, {now.get(key)} now")
    return found


def _file(path: str | None, digest: str | None) -> str:
    return "none" if digest is None else f"{path} (sha256 {digest[:12]})"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    settings: Settings = Settings(),
    overwrite: bool = False,
) -> Summary:
    """Transcribe every utterance of `source` (a manifest or a packed folder) not yet done into
    `out_dir` on `devices` x `num_nodes` processes; every process returns its `Summary`.
    What `out_dir` holds from a run with another model or options is refused (`check_run`), or
    with `overwrite` replaced."""
    if devices < 1 or num_nodes < 1:
        raise ValueError(f"--devices and --num-nodes must be >= 1, got {devices} and {num_nodes}")
    out_dir = Path(out_dir)
    began = time.perf_counter()
    corpus = Corpus(source, split)
    run = run_settings(model, settings)
    if not overwrite:
        check_run(out_dir, run)
    parts = {} if overwrite else read_parts(out_dir, corpus.ids)
    done = {i for i, r in parts.items() if r["error"] is None}
    corpus.skip(done)  # before any rank writes: every rank shares out the same list
    distributed = devices * num_nodes > 1
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy=DDPStrategy(process_group_backend="gloo" if accelerator == "cpu" else None)
        if distributed else "auto",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out_dir,
    )  # fmt: skip
    module = TranscribeModule(model, out_dir, corpus.ids, settings, run, start_over=overwrite)
    loader = torch.utils.data.DataLoader(corpus, batch_size=ITEMS_PER_STEP, collate_fn=_as_list)
    if len(corpus):
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    elif trainer.is_global_zero:
        begin_run(out_dir, run, start_over=overwrite)  # nothing to do: empty, or all done
        merge_parts(out_dir, corpus.ids)
    records = read_parts(out_dir, corpus.ids) if trainer.is_global_zero else {}
    return Summary(
        total=corpus.total(),
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


def _as_list(items: Sequence[Any]) -> list[Any]:
    return list(items)
