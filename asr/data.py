"""Utterances in, padded batches out: manifests, filtering, datasets, `Batch`, bucketing sampler.

A manifest is a JSONL file, one utterance a line:
`{"audio": path, "text": str, "duration": seconds}` with optional `"offset"` (seconds into the
file), `"speaker"` and `"id"`. Relative audio paths are relative to the manifest's folder.

Shapes: B batch, N samples (padded to the longest wave), S tokens (padded to the longest target).

Here, in pipeline order: `Utterance`, `read_manifest` / `write_manifest`, `filter_utterances`
(drops what a CTC model cannot learn from), `AudioDataset`, `Batch` and `collate`, and
`DurationBucketSampler` (batches of similar length under a seconds budget, distributed and
resumable). Then Hugging Face datasets: `load_hf_utterances`, `HFAudioDataset`,
`HFIterableAudioDataset`, decoded with soundfile (never torchcodec).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from torch import Tensor

from asr.audio import AudioError, load_audio, load_audio_array
from asr.text import normalize_text
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_DURATION_S = 86400.0  # a "duration" above one day is a unit mistake (ms, samples), not audio
MAX_LISTED = 20  # problems listed one by one in a warning; the rest are counted


@dataclass(frozen=True)
class Utterance:
    """One transcribed stretch of audio: [offset, offset + duration) seconds of `audio`."""

    id: str
    audio: str  # absolute path
    text: str
    duration: float
    offset: float = 0.0
    speaker: str | None = None


# --------------------------------------------------------------------------------------------
# Manifests


def read_manifest(path: str | Path) -> list[Utterance]:
    """The utterances of a JSONL manifest; bad lines and duplicate ids are reported and skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest file not found: {path}")
    folder = path.parent.absolute()
    utterances: dict[str, Utterance] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                utt = _parse_line(line, folder)
            except ValueError as err:
                problems.append(f"{path}:{line_no}: {err}")
                continue
            if utt.id in utterances:
                problems.append(
                    f"{path}:{line_no}: duplicate id {utt.id!r} (first on line "
                    f"{first_line[utt.id]}), dropped"
                )
                continue
            utterances[utt.id] = utt
            first_line[utt.id] = line_no
    if problems:
        log.warning(_problem_report(f"manifest {path}: skipped {len(problems)} line(s)", problems))
    return list(utterances.values())


def _problem_report(headline: str, problems: list[str]) -> str:
    lines = [headline + ":", *problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"... and {len(problems) - MAX_LISTED} more")
    return "\n  ".join(lines)


def _parse_line(line: str, folder: Path) -> Utterance:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg})") from None
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    for key in ("audio", "text", "duration"):
        if key not in item:
            raise ValueError(f"missing field {key!r}")
    audio, text = item["audio"], item["text"]
    if not isinstance(audio, str) or not audio:
        raise ValueError(f"'audio' must be a non-empty string, got {audio!r}")
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {text!r}")
    duration = _number(item, "duration")
    if not 0.0 < duration <= MAX_DURATION_S:
        raise ValueError(f"'duration' must be in (0, {MAX_DURATION_S:g}] seconds, got {duration}")
    offset = _number(item, "offset") if item.get("offset") is not None else None
    if offset is not None and not 0.0 <= offset <= MAX_DURATION_S:
        raise ValueError(f"'offset' must be in [0, {MAX_DURATION_S:g}] seconds, got {offset}")
    speaker = item.get("speaker")
    if speaker is not None and (isinstance(speaker, bool) or not isinstance(speaker, str | int)):
        raise ValueError(f"'speaker' must be a string, got {speaker!r}")
    utt_id = item.get("id")
    if utt_id is None:
        utt_id = Path(audio).stem + ("" if offset is None else f"_{_seconds_str(offset)}")
    elif not isinstance(utt_id, str) or not utt_id:
        raise ValueError(f"'id' must be a non-empty string, got {utt_id!r}")
    return Utterance(
        id=utt_id,
        audio=os.path.normpath(folder / os.path.expanduser(audio)),
        text=text,
        duration=duration,
        offset=offset or 0.0,
        speaker=None if speaker is None else str(speaker),
    )


def _number(item: dict[str, Any], key: str) -> float:
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key!r} must be finite, got {value}")
    return float(value)


def _seconds_str(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def write_manifest(utterances: Iterable[Utterance], path: str | Path) -> None:
    """Write a JSONL manifest; audio under the manifest's folder is written relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.absolute()
    with path.open("w", encoding="utf-8") as f:
        for utt in utterances:
            audio = Path(utt.audio)
            if audio.is_relative_to(folder):
                audio = audio.relative_to(folder)
            item: dict[str, Any] = {"id": utt.id, "audio": audio.as_posix(), "text": utt.text}
            item["duration"] = utt.duration
            if utt.offset:
                item["offset"] = utt.offset
            if utt.speaker is not None:
                item["speaker"] = utt.speaker
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# Filtering


def ctc_min_frames(tokens: Sequence[int]) -> int:
    """Output frames CTC needs for `tokens`: one each, plus a blank between adjacent repeats."""
    repeats = sum(1 for a, b in itertools.pairwise(tokens) if a == b)
    return len(tokens) + repeats


def filter_utterances(
    utterances: Iterable[Utterance],
    tokenizer: Tokenizer,
    frames_for_duration: Callable[[float], int],
    min_duration: float,
    max_duration: float,
    check_files: bool = True,
) -> tuple[list[Utterance], dict[str, list[str]]]:
    """Keep the utterances a CTC model can train on; `skipped` maps each reason to the ids.

    `frames_for_duration(seconds)` is the model's number of output frames for that much audio.
    """
    kept: list[Utterance] = []
    skipped: dict[str, list[str]] = {}
    file_exists: dict[str, bool] = {}
    for utt in utterances:
        if check_files and utt.audio not in file_exists:
            file_exists[utt.audio] = os.path.isfile(utt.audio)
        reason = _skip_reason(utt, tokenizer, frames_for_duration, min_duration, max_duration)
        if reason is None and check_files and not file_exists[utt.audio]:
            reason = "missing audio file"
        if reason is None:
            kept.append(utt)
        else:
            skipped.setdefault(reason, []).append(utt.id)
    if skipped:
        total = len(kept) + sum(len(ids) for ids in skipped.values())
        parts = [
            f"{reason}: {len(ids)} (e.g. {', '.join(ids[:3])})" for reason, ids in skipped.items()
        ]
        log.warning(_problem_report(f"kept {len(kept)} of {total} utterances; skipped", parts))
    return kept, skipped


def _skip_reason(
    utt: Utterance,
    tokenizer: Tokenizer,
    frames_for_duration: Callable[[float], int],
    min_duration: float,
    max_duration: float,
) -> str | None:
    if utt.duration < min_duration:
        return f"shorter than min_duration={min_duration}s"
    if utt.duration > max_duration:
        return f"longer than max_duration={max_duration}s"
    if tokenizer.unknown_chars(utt.text):
        return "text has characters unknown to the tokenizer"
    tokens = tokenizer.encode(utt.text)
    if not tokens:
        return "empty transcript"
    if frames_for_duration(utt.duration) < ctc_min_frames(tokens):
        return "audio too short for its transcript under CTC"
    return None


# --------------------------------------------------------------------------------------------
# Datasets, Batch, collate


def _augment_rng(seed: int, epoch: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512: the same stream in every process and every run.
    return random.Random(f"{seed}:{epoch}:{index}")


class AudioDataset(torch.utils.data.Dataset):
    """Utterances -> `{"id", "wave" (N,), "tokens" (S,), "text"}`, or None if audio is unreadable.

    `text` is the normalized transcript the tokens encode. Pass the utterances through
    `filter_utterances` first: text the tokenizer cannot encode raises `ValueError`. Waveform
    augmentation draws from a `random.Random` seeded by (seed, epoch, index), so a resumed run
    sees the same perturbations; call `set_epoch` each epoch (DataLoader workers that are not
    persistent get the new epoch, persistent ones keep the old). `num_failed` counts the
    unreadable files of this process (each DataLoader worker has its own count).
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: Tokenizer,
        sample_rate: int = 16000,
        wave_augment: Callable[[Tensor, random.Random], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        self.utterances = list(utterances)
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.wave_augment = wave_augment
        self.seed = seed
        self.epoch = 0
        self.num_failed = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def durations(self) -> list[float]:
        return [utt.duration for utt in self.utterances]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        utt = self.utterances[index]
        try:
            wave = load_audio(utt.audio, self.sample_rate, offset=utt.offset, duration=utt.duration)
        except AudioError as err:
            self.num_failed += 1
            log.warning("skipping utterance %r: %s", utt.id, err)
            return None
        return _make_item(self, utt.id, wave, utt.text, index)


def _make_item(
    dataset: AudioDataset | HFAudioDataset | HFIterableAudioDataset,
    utt_id: str,
    wave: Tensor,
    text: str,
    index: int,
) -> dict[str, Any]:
    if dataset.wave_augment is not None:
        wave = dataset.wave_augment(wave, _augment_rng(dataset.seed, dataset.epoch, index))
    tokens = torch.tensor(dataset.tokenizer.encode(text), dtype=torch.long)  # (S,)
    return {"id": utt_id, "wave": wave, "tokens": tokens, "text": normalize_text(text)}


@dataclass
class Batch:
    """Padded waveforms and targets, each with its lengths (padding is 0)."""

    waves: Tensor  # (B, N) float32
    wave_lengths: Tensor  # (B,) long
    targets: Tensor  # (B, S) long
    target_lengths: Tensor  # (B,) long
    texts: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            waves=self.waves.to(device, non_blocking=non_blocking),
            wave_lengths=self.wave_lengths.to(device, non_blocking=non_blocking),
            targets=self.targets.to(device, non_blocking=non_blocking),
            target_lengths=self.target_lengths.to(device, non_blocking=non_blocking),
            texts=self.texts,
            ids=self.ids,
        )


def collate(items: Sequence[dict[str, Any] | None]) -> Batch | None:
    """Dataset items -> a `Batch`; `None` items (unreadable audio) are dropped, all None -> None."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    waves = [item["wave"].float() for item in items]
    tokens = [item["tokens"].long() for item in items]
    return Batch(
        waves=torch.nn.utils.rnn.pad_sequence(waves, batch_first=True),  # (B, N)
        wave_lengths=torch.tensor([w.shape[0] for w in waves], dtype=torch.long),
        targets=torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),  # (B, S)
        target_lengths=torch.tensor([t.shape[0] for t in tokens], dtype=torch.long),
        texts=[item["text"] for item in items],
        ids=[item["id"] for item in items],
    )


# --------------------------------------------------------------------------------------------
# Sampler


class DurationBucketSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices of similar duration, at most `max_batch_seconds` of padded audio each.

    Indices are sorted by duration and cut into `num_buckets` buckets of equal count. Each bucket
    has a fixed batch size, `max_batch_seconds // (its longest duration)` (at least 1, so an
    utterance longer than the cap goes alone): batch size x longest item <= the cap, counting
    padding. Every epoch, each bucket's members are shuffled before being cut into batches and
    the batches are shuffled, both from (seed, epoch); the number of batches never changes.

    Distributed: rank r takes batches r, r + R, r + 2R... of the epoch's list. When the count
    is not a multiple of R, the largest batches are split in two until it is, so every rank
    gets the same number of batches, ranks never share an index and together they cover every
    index once; only when no batch can be split (all single items) are batches from the start
    of the list repeated. With `drop_last=True` the surplus batches are dropped instead.

    `state_dict()` holds the epoch and the batches already yielded; after `load_state_dict` the
    next iteration yields exactly the rest of that epoch. A DataLoader prefetches, so the count
    the sampler sees runs ahead of training: a trainer that resumes mid-epoch should store the
    number of batches it consumed as "num_yielded".
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        num_buckets: int = 20,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            initialized = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas or (dist.get_world_size() if initialized else 1)
            rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.durations = np.asarray(durations, dtype=np.float64)
        if len(self.durations) == 0:
            raise ValueError("DurationBucketSampler: no durations given")
        self.max_batch_seconds = max_batch_seconds
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        order = np.argsort(self.durations, kind="stable")
        self.buckets = [b.tolist() for b in np.array_split(order, min(num_buckets, len(order)))]
        self.batch_sizes = [
            max(1, int(max_batch_seconds // self.durations[b[-1]])) for b in self.buckets
        ]
        self.epoch = 0
        self.num_yielded = 0  # batches of this epoch yielded so far
        self._start = 0  # where the current (or next) iteration starts: resume point
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.num_yielded, self._start = epoch, 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "num_yielded": self.num_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.num_yielded = int(state["epoch"]), int(state["num_yielded"])
        self._start = self.num_yielded

    def __len__(self) -> int:
        """Batches the current (or next) iteration yields: the epoch's, less those resumed past."""
        return len(self._rank_batches()) - self._start

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        self._start = self.num_yielded
        while self.num_yielded < len(batches):
            self.num_yielded += 1
            yield batches[self.num_yielded - 1]
        # A finished epoch: the next one starts from its beginning even without set_epoch.
        self.num_yielded = self._start = 0

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._epoch_batches()[self.rank :: self.num_replicas])
        return self._cache[1]

    def _epoch_batches(self) -> list[list[int]]:
        rng = random.Random(f"bucket-sampler:{self.seed}:{self.epoch}")
        batches = []
        for bucket, size in zip(self.buckets, self.batch_sizes):
            if self.shuffle:
                bucket = rng.sample(bucket, len(bucket))
            batches += [bucket[i : i + size] for i in range(0, len(bucket), size)]
        if self.shuffle:
            rng.shuffle(batches)
        return self._even_out(batches)

    def _even_out(self, batches: list[list[int]]) -> list[list[int]]:
        """Make the number of batches a multiple of num_replicas (see the class docstring)."""
        R = self.num_replicas
        if self.drop_last:
            return batches[: len(batches) - len(batches) % R]
        while len(batches) % R:
            i = max(range(len(batches)), key=lambda j: len(batches[j]))
            if len(batches[i]) < 2:
                return batches + batches[: R - len(batches) % R]
            half = len(batches[i]) // 2
            batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
        return batches


# --------------------------------------------------------------------------------------------
# Hugging Face datasets. Recent `datasets` decode audio with torchcodec, which needs FFmpeg: the
# audio column is cast to `Audio(decode=False)` and decoded here with soundfile.


class HFUtterances:
    """A Hugging Face dataset whose items come out as `{"id", "array", "sampling_rate", "text"}`.

    `dataset` is the underlying `datasets.Dataset` (map-style) or `datasets.IterableDataset`
    (streaming), its audio column holding undecoded `{"bytes", "path"}`. `array` is float32
    (N,) or (N, C) as soundfile reads it; an item whose audio cannot be decoded raises AudioError.
    """

    def __init__(self, dataset: Any, audio_column: str = "audio", text_column: str = "text"):
        import datasets

        columns = dataset.column_names or list(dataset.features or {})
        for column in (audio_column, text_column):
            if column not in columns:
                raise ValueError(f"Hugging Face dataset has no column {column!r}; has {columns}")
        self.dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
        self.audio_column, self.text_column = audio_column, text_column
        self.streaming = isinstance(dataset, datasets.IterableDataset)

    def __len__(self) -> int:
        if self.streaming:
            raise TypeError("a streaming Hugging Face dataset has no length")
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.decode(self.dataset[index], index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index, row in enumerate(self.dataset):
            yield self.decode(row, index)

    def decode(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        """One raw row -> the decoded item (AudioError if its audio cannot be read)."""
        source = _hf_audio_source(row[self.audio_column], index)
        try:
            array, rate = soundfile.read(source, dtype="float32")
        except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
            raise AudioError(f"cannot decode audio of dataset row {index}: {err}") from None
        return {"id": _hf_id(row, self.audio_column, index), "array": array,
                "sampling_rate": rate, "text": row[self.text_column]}  # fmt: skip

    def durations(self) -> list[float]:
        """Seconds of every row (a "duration" column, else the audio headers); map-style only."""
        if "duration" in self.dataset.column_names:
            return [float(d) for d in self.dataset["duration"]]
        rows = self.dataset.select_columns([self.audio_column])  # one row in memory at a time
        return [
            soundfile.info(_hf_audio_source(row[self.audio_column], i)).duration
            for i, row in enumerate(rows)
        ]


def _hf_audio_source(value: Any, index: int) -> Any:
    if isinstance(value, dict) and value.get("bytes"):
        return io.BytesIO(value["bytes"])
    if isinstance(value, dict) and value.get("path"):
        return value["path"]
    raise AudioError(f"dataset row {index} has no audio bytes or path: {str(value)[:80]}")


def _hf_id(row: dict[str, Any], audio_column: str, index: int) -> str:
    if row.get("id") is not None:
        return str(row["id"])
    path = (row.get(audio_column) or {}).get("path")
    return Path(path).stem if path else str(index)


def load_hf_utterances(
    name_or_path: str,
    split: str,
    streaming: bool = False,
    audio_column: str = "audio",
    text_column: str = "text",
) -> HFUtterances:
    """A split of a dataset saved with `save_to_disk`, a local data folder, or a hub dataset."""
    import datasets

    path = Path(name_or_path)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"dataset {path} has no split {split!r}; has {list(loaded)}")
            loaded = loaded[split]
        if streaming:
            loaded = loaded.to_iterable_dataset(num_shards=max(1, loaded.num_rows // 1000))
    else:
        loaded = datasets.load_dataset(name_or_path, split=split, streaming=streaming)
    return HFUtterances(loaded, audio_column, text_column)


class HFAudioDataset(torch.utils.data.Dataset):
    """`AudioDataset` for a map-style Hugging Face dataset (`HFUtterances`, not streaming).

    A row whose audio cannot be decoded, or whose text is empty or has characters the tokenizer
    cannot encode, gives None (counted in `num_failed`, one warning each).
    """

    def __init__(
        self,
        source: HFUtterances,
        tokenizer: Tokenizer,
        sample_rate: int = 16000,
        wave_augment: Callable[[Tensor, random.Random], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if source.streaming:
            raise ValueError("HFAudioDataset needs a map-style dataset; use HFIterableAudioDataset")
        self.source, self.tokenizer, self.sample_rate = source, tokenizer, sample_rate
        self.wave_augment, self.seed = wave_augment, seed
        self.epoch = self.num_failed = 0

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def durations(self) -> list[float]:
        return self.source.durations()

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return _hf_item(self, self.source.dataset[index], index)


def _hf_item(
    dataset: HFAudioDataset | HFIterableAudioDataset, row: dict[str, Any], index: int
) -> dict[str, Any] | None:
    try:
        # No filter_utterances runs before a Hugging Face dataset: the text is checked here.
        text = _checked_text(row[dataset.source.text_column], dataset.tokenizer)
        item = dataset.source.decode(row, index)
        wave = load_audio_array(
            item["array"], item["sampling_rate"], dataset.sample_rate, item["id"]
        )
    except ValueError as err:  # AudioError included
        dataset.num_failed += 1
        log.warning("skipping dataset row %d: %s", index, err)
        return None
    return _make_item(dataset, item["id"], wave, text, index)


def _checked_text(text: Any, tokenizer: Tokenizer) -> str:
    if not isinstance(text, str) or not normalize_text(text):
        raise ValueError(f"transcript {text!r} is empty or not a string")
    unknown = tokenizer.unknown_chars(text)
    if unknown:
        raise ValueError(f"transcript {text!r} has characters {unknown} unknown to the tokenizer")
    return text


class HFIterableAudioDataset(torch.utils.data.IterableDataset):
    """The items of `AudioDataset` from a streaming (or map-style) Hugging Face dataset.

    Each row is produced exactly once across distributed ranks and DataLoader workers. Streaming:
    ranks split the rows with `datasets.distributed.split_dataset_by_node` (by file shard when
    their count is a multiple of R, else by row), and within a rank `datasets` itself gives each
    DataLoader worker its own file shards (workers beyond the shard count stay idle). Map-style:
    worker k of W in rank r of R takes rows i with i % (R * W) == r * W + k. `num_failed` counts
    the unreadable rows of this process (each worker has its own count).
    """

    def __init__(
        self,
        source: HFUtterances,
        tokenizer: Tokenizer,
        sample_rate: int = 16000,
        wave_augment: Callable[[Tensor, random.Random], Tensor] | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        dist = torch.distributed
        initialized = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas or (dist.get_world_size() if initialized else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        self.source, self.tokenizer, self.sample_rate = source, tokenizer, sample_rate
        self.wave_augment, self.seed = wave_augment, seed
        self.epoch = self.num_failed = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        total, reader = self.num_replicas * workers, self.rank * workers + worker
        if self.source.streaming:
            from datasets.distributed import split_dataset_by_node

            rows = split_dataset_by_node(self.source.dataset, self.rank, self.num_replicas)
            # Row numbers seed the augmentation and name id-less rows: unique across readers.
            numbered = ((i * total + reader, row) for i, row in enumerate(rows))
        else:
            numbered = ((i, self.source.dataset[i]) for i in range(reader, len(self.source), total))
        for index, row in numbered:
            item = _hf_item(self, row, index)
            if item is not None:
                yield item
