"""Hugging Face `datasets` as a source of utterances: a folder written by `save_to_disk`, the
Parquet shards of `asr pack` (a local folder or an fsspec URL: `s3://...`, `hf://datasets/...`),
or a hub name; map-style here, streamed for training in `asr.data.stream`. Recent `datasets`
decode audio with torchcodec, which needs FFmpeg: the audio column is cast to
`Audio(decode=False)` and decoded here with soundfile (`asr.audio.read_audio`), only the
[offset, offset + duration) segment when the rows have those columns."""

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

from asr.audio import AudioError, load_audio_array, read_audio
from asr.data.dataset import check_duration, make_item
from asr.data.pack import read_index, split_files
from asr.text import normalize_text
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class HFUtterances:
    """A Hugging Face dataset whose items come out as `{"id", "array", "sampling_rate", "text"}`.

    `dataset` is the underlying `datasets.Dataset` (map-style) or `datasets.IterableDataset`
    (streaming), its audio column holding undecoded `{"bytes", "path"}`. `array` is float32
    (N, C) as soundfile reads it, only [offset, offset + duration) when the row has an "offset"
    or "duration" column; an item whose audio cannot be decoded raises AudioError.
    `load_columns(columns)`, when given, loads the same rows with only those columns (a fraction
    of the bytes of a Parquet dataset), as `column_stream` returns them.
    """

    def __init__(
        self,
        dataset: Any,
        audio_column: str = "audio",
        text_column: str = "text",
        load_columns: Callable[[list[str]], Any] | None = None,
    ):
        import datasets

        columns = dataset.column_names or list(dataset.features or {})
        for column in (audio_column, text_column):
            if column not in columns:
                raise ValueError(f"Hugging Face dataset has no column {column!r}; has {columns}")
        self.dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
        self.audio_column, self.text_column = audio_column, text_column
        self.streaming = isinstance(dataset, datasets.IterableDataset)
        self.load_columns = load_columns

    @property
    def column_names(self) -> list[str]:
        return list(self.dataset.column_names or self.dataset.features or {})

    def column_stream(self, columns: list[str]) -> Any:
        """The rows with only `columns`, in the same order and data sources."""
        if self.load_columns is not None:
            return self.load_columns(columns)
        return self.dataset.select_columns(columns)

    def __len__(self) -> int:
        if self.streaming:
            raise TypeError("a streaming Hugging Face dataset has no length")
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.decode(self.dataset[index], index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index, row in enumerate(self.dataset):
            yield self.decode(row, index)

    def decode(self, row: dict[str, Any], index: int | str) -> dict[str, Any]:
        """One raw row -> the decoded item (AudioError if its audio cannot be read)."""
        utt_id = _hf_id(row, self.audio_column, index)
        offset, duration = _segment(row)
        value = row[self.audio_column]
        if isinstance(value, dict) and value.get("bytes"):
            name = f"dataset row {index} ({utt_id})"
            array, rate = read_audio(value["bytes"], offset, duration, name=name)
        elif isinstance(value, dict) and value.get("path"):
            array, rate = read_audio(value["path"], offset, duration)
        else:
            raise AudioError(f"dataset row {index} has no audio bytes or path: {str(value)[:80]}")
        return {"id": utt_id, "array": array, "sampling_rate": rate, "text": row[self.text_column]}

    def durations(self) -> list[float]:
        """Seconds of every row (a "duration" column, else the audio headers); map-style only."""
        if "duration" in self.dataset.column_names:
            return [float(d) for d in self.dataset["duration"]]
        rows = self.dataset.select_columns([self.audio_column])  # one row in memory at a time
        return [self.header_duration(row, i) for i, row in enumerate(rows)]

    def header_duration(self, row: dict[str, Any], index: int | str) -> float:
        """Seconds of a row's whole audio file, from its header (AudioError if unreadable)."""
        source = _hf_audio_source(row[self.audio_column], index)
        try:
            return soundfile.info(source).duration
        except (soundfile.LibsndfileError, RuntimeError) as err:
            raise AudioError(
                f"cannot read the audio header of dataset row {index}: {err}"
            ) from None


def _segment(row: dict[str, Any]) -> tuple[float, float | None]:
    """(offset, duration) of the audio a row stands for: its columns, else the whole file."""
    offset, duration = row.get("offset"), row.get("duration")
    return float(offset or 0.0), (None if duration is None else float(duration))


def _hf_audio_source(value: Any, index: int | str) -> Any:
    if isinstance(value, dict) and value.get("bytes"):
        return io.BytesIO(value["bytes"])
    if isinstance(value, dict) and value.get("path"):
        return value["path"]
    raise AudioError(f"dataset row {index} has no audio bytes or path: {str(value)[:80]}")


def _hf_id(row: dict[str, Any], audio_column: str, index: int | str) -> str:
    if row.get("id") is not None:
        return str(row["id"])
    path = (row.get(audio_column) or {}).get("path")
    return Path(path).stem if path else str(index)


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `datasets`' `save_to_disk` (a split or a dict)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def load_hf_utterances(
    name_or_path: str,
    split: str,
    streaming: bool = False,
    audio_column: str = "audio",
    text_column: str = "text",
) -> HFUtterances:
    """A split of a dataset saved with `save_to_disk`, of a folder (or fsspec URL) written by
    `asr pack`, of a local data folder, or of a hub dataset."""
    import datasets

    path = Path(name_or_path)
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"dataset {path} has no split {split!r}; has {list(loaded)}")
            loaded = loaded[split]
        if streaming:
            loaded = loaded.to_iterable_dataset(num_shards=max(1, loaded.num_rows // 1000))
        return HFUtterances(loaded, audio_column, text_column)
    index = read_index(name_or_path) if "://" in name_or_path or path.is_dir() else None
    if index is None:
        loaded = datasets.load_dataset(name_or_path, split=split, streaming=streaming)
        return HFUtterances(loaded, audio_column, text_column)
    files = split_files(name_or_path, index, split)

    def load(columns: list[str] | None = None, streaming: bool = streaming) -> Any:
        return datasets.load_dataset("parquet", data_files={split: files}, split=split,
                                     streaming=streaming, columns=columns)  # fmt: skip

    return HFUtterances(load(), audio_column, text_column, lambda cols: load(cols, True))


class HFRows:
    """What the Hugging Face datasets (here and in `asr.data.stream`) keep: the rows, how to make items of them (the tokenizer,
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


class HFAudioDataset(HFRows, torch.utils.data.Dataset):
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
            raise ValueError(
                "HFAudioDataset needs a map-style dataset; stream with asr.data.stream"
            )
        super().__init__(source, tokenizer, sample_rate, wave_augment, seed)

    def __len__(self) -> int:
        return len(self.source)

    def durations(self) -> list[float]:
        return self.source.durations()

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return hf_item(self, self.source.dataset[index], index)


def hf_item(dataset: HFRows, row: dict[str, Any], index: int | str) -> dict[str, Any] | None:
    """A row -> the training item, or None (counted, one warning) when it cannot be used.

    `index` names the row in messages and seeds its waveform augmentation (a row number, or
    the row's id in a stream)."""
    try:
        # No filter_utterances runs before a Hugging Face dataset: the text is checked here.
        text = _checked_text(row[dataset.source.text_column], dataset.tokenizer)
        item = dataset.source.decode(row, index)
        wave = load_audio_array(
            item["array"], item["sampling_rate"], dataset.sample_rate, item["id"]
        )
        offset, duration = _segment(row)
        if duration is not None:  # as for a manifest line: audio ending early is not used
            check_duration(wave, dataset.sample_rate, duration, offset, item["id"])
    except ValueError as err:  # AudioError included
        dataset.num_failed += 1
        log.warning("skipping dataset row %s: %s", index, err)
        return None
    return make_item(dataset, item["id"], wave, text, index)


def _checked_text(text: Any, tokenizer: Tokenizer) -> str:
    if not isinstance(text, str) or not normalize_text(text):
        raise ValueError(f"transcript {text!r} is empty or not a string")
    unknown = tokenizer.unknown_chars(text)
    if unknown:
        raise ValueError(f"transcript {text!r} has characters {unknown} unknown to the tokenizer")
    return text
