"""`open_corpus`: the utterances of a corpus, whatever holds them, for evaluation and corpus
transcription.

A corpus is one of:
- a JSONL manifest (`asr.data.manifest`): audio files or segments of them, with their texts;
- a folder of audio files (no texts): every file below it, id = its path relative to the folder,
  without the suffix;
- a folder (or fsspec URL) written by `asr pack`: Parquet shards with the audio inside;
- a Hugging Face `datasets` dataset (`save_to_disk` folder or hub name) with "audio" and "text"
  columns.

Each gives the same `Corpus`: per position an id, a duration and a reference text (None for plain
audio files), and `item(i)`: what `Transcriber.transcribe` takes (an `AudioSegment`, or
`(samples, rate)` for audio held in the rows; the `AudioError` instead for a row whose audio
cannot be decoded) with the path it came from. Rows are decoded one at a time, when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from asr.audio import AudioError, AudioSegment, audio_duration, find_audio_files
from asr.data.manifest import read_manifest


class Corpus:
    """The utterances of one corpus, in its order (see the module docstring)."""

    def __init__(
        self,
        ids: list[str],
        durations: list[float],
        texts: list[str | None],
        items: Callable[[int], tuple[Any, str | None]],
    ) -> None:
        self.ids, self.durations, self.texts = ids, durations, texts
        self._items = items

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, i: int) -> tuple[Any, str | None]:
        """(a `Transcriber.transcribe` input for position i, or the `AudioError` that prevents
        one; the path of its audio, if it has one)."""
        try:
            return self._items(i)
        except AudioError as err:
            return err, None


def open_corpus(source: str | Path, split: str | None = None) -> Corpus:
    """The corpus at `source` (a manifest, a folder of audio, a packed folder or URL, a
    `datasets` dataset); `split` chooses one of a packed folder's or a dataset's splits."""
    text = str(source)
    path = Path(source)
    if path.is_file():
        return _manifest(path)
    if "://" not in text and not path.exists() and (path.suffix or text.startswith((".", "/"))):
        raise ValueError(f"corpus not found: {text} (no such file or folder)")
    if "://" not in text and path.is_dir():
        from asr.data.hf import is_saved_dataset
        from asr.data.pack import read_index

        if not is_saved_dataset(path) and read_index(text) is None:
            return _audio_folder(path)
    return _rows(text, split)


def _manifest(path: Path) -> Corpus:
    utts = read_manifest(path)

    def item(i: int) -> tuple[AudioSegment, str]:
        u = utts[i]
        return AudioSegment(u.audio, u.offset, u.duration, id=u.id), u.audio

    return Corpus([u.id for u in utts], [u.duration for u in utts], [u.text for u in utts], item)


def _audio_folder(folder: Path) -> Corpus:
    try:
        files = find_audio_files(folder)
    except AudioError:
        raise ValueError(
            f"{folder}: no corpus there: not a manifest file, a folder written by `asr pack`, a "
            f"Hugging Face dataset, nor a folder of audio files"
        ) from None
    ids = [str(f.relative_to(folder).with_suffix("")) for f in files]
    durations = []
    for f in files:
        try:
            durations.append(audio_duration(f))
        except AudioError:
            durations.append(0.0)  # reported when it is transcribed

    def item(i: int) -> tuple[AudioSegment, str]:
        return AudioSegment(files[i], id=ids[i]), str(files[i])

    return Corpus(ids, durations, [None] * len(files), item)


def _rows(source: str, split: str | None) -> Corpus:
    """A packed folder or URL, or a `datasets` dataset: its rows, decoded one at a time."""
    from asr.data.hf import _hf_id, load_hf_utterances

    rows = load_hf_utterances(source, _choose_split(source, split), streaming=False)
    dataset = rows.dataset
    if "id" in dataset.column_names:
        ids = [str(i) for i in dataset["id"]]
    else:  # as `HFUtterances.decode` names them; one row's audio in memory at a time
        audio = dataset.select_columns([rows.audio_column])
        ids = [_hf_id(row, rows.audio_column, k) for k, row in enumerate(audio)]

    def item(i: int) -> tuple[tuple[Any, int], str | None]:
        row = dataset[i]
        path = (row.get(rows.audio_column) or {}).get("path")
        decoded = rows.decode(row, i)
        return (decoded["array"], decoded["sampling_rate"]), path

    return Corpus(ids, rows.durations(), list(dataset[rows.text_column]), item)


def _choose_split(source: str, split: str | None) -> str:
    """`split`, or the only split of a packed folder; a dataset without one needs it named."""
    from asr.data.pack import read_index

    index = read_index(source)
    if index is None:
        if split is None:
            raise ValueError(f"{source}: no such file or folder here; as a Hugging Face dataset "
                             f"it needs its split named (--split)")  # fmt: skip
        return split
    splits = sorted(index["splits"])
    if split is None:
        if len(splits) != 1:
            raise ValueError(f"{source} holds the splits {splits}: choose one with --split")
        return splits[0]
    return split
