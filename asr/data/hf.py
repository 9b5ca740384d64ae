"""Hugging Face `datasets` as a source of utterances: a local dataset folder or a hub name,
map-style or streaming. Recent `datasets` decode audio with torchcodec, which needs FFmpeg: the
audio column is cast to `Audio(decode=False)` and decoded here with soundfile."""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import soundfile
import torch
from torch import Tensor

from asr.audio import AudioError, load_audio_array
from asr.data.dataset import make_item
from asr.text import normalize_text
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)


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


class _HFRows:
    """What both Hugging Face datasets keep: the rows, how to make items of them (the tokenizer,
    the sample rate, the waveform augmentation and its seed), the epoch and the failure count."""

    def __init__(
        self,
        source: HFUtterances,
        tokenizer: Tokenizer,
        sample_rate: int = 16000,
        wave_augment: Callable[[Tensor, random.Random], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        self.source, self.tokenizer, self.sample_rate = source, tokenizer, sample_rate
        self.wave_augment, self.seed = wave_augment, seed
        self.epoch = self.num_failed = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class HFAudioDataset(_HFRows, torch.utils.data.Dataset):
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
        super().__init__(source, tokenizer, sample_rate, wave_augment, seed)

    def __len__(self) -> int:
        return len(self.source)

    def durations(self) -> list[float]:
        return self.source.durations()

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return _hf_item(self, self.source.dataset[index], index)


def _hf_item(dataset: _HFRows, row: dict[str, Any], index: int) -> dict[str, Any] | None:
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
    return make_item(dataset, item["id"], wave, text, index)


def _checked_text(text: Any, tokenizer: Tokenizer) -> str:
    if not isinstance(text, str) or not normalize_text(text):
        raise ValueError(f"transcript {text!r} is empty or not a string")
    unknown = tokenizer.unknown_chars(text)
    if unknown:
        raise ValueError(f"transcript {text!r} has characters {unknown} unknown to the tokenizer")
    return text


class HFIterableAudioDataset(_HFRows, torch.utils.data.IterableDataset):
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
        super().__init__(source, tokenizer, sample_rate, wave_augment, seed)

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
