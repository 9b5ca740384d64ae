"""Training from a stream of rows (a streamed Hugging Face dataset, such as the shards of
`asr pack`): duration-bucketed batches, disjoint readers, the same number of batches on every
process, and an exact resume mid-epoch.

Readers. Rank r of R, with W DataLoader workers, runs readers g = r * W + w of G = R * W. Each
takes the data sources `datasets.distributed.split_dataset_by_node(stream, g, G)` gives it, after
`datasets` has shuffled the sources for the epoch (the same order in every reader, from the seed
and the epoch). For Parquet, `reshard()` first makes each row group a source, so a few shards
still feed many readers, and a reader's rows come from all over the corpus. With fewer sources
than readers, each reader keeps every G-th row instead (every reader then reads all the bytes).

Batches. A reader takes `shuffle_buffer` rows at a time (a window), drops those training cannot
use (by duration and text: `asr.data.manifest.skip_reason`, the rule `filter_utterances` applies
to manifests), shuffles the rest, sorts them by duration and cuts batches of at most
`max_batch_seconds` of padded audio, then yields those batches in shuffled order. The window's
rows and (seed, epoch, reader, window) fix its batches.

Equal counts. DDP needs every rank to take the same number of steps. With R > 1 every reader
first works out every reader's batch count from the `duration` and `text` columns alone; a rank
with fewer batches than the most splits its first batches of two or more utterances in two
until it has as many, so every utterance is still seen once per epoch. Only if that cannot
reach the most does every rank stop at the count the poorest can reach (the surplus is logged).

Resume. Each batch carries its position (`Batch.position`): the reader, the stream's
`state_dict()` at the start of the batch's window, and how many batches of that window came
before it. The DataModule keeps the position of the last batch trained from each reader and
stores those of every rank in the checkpoint; on resume a reader loads the stream state,
re-reads that one window and goes on after the batch. The DataLoader polls its workers in
turn starting from worker 0, so on resume worker p plays reader (p + shift) % W, shift being the
worker whose turn was next: the batches come in the order an uninterrupted run gives.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from asr.data.dataset import Batch, collate
from asr.data.hf import HFRows, HFUtterances, hf_item
from asr.data.manifest import Utterance, skip_reason
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

Position = dict[str, Any]


class StreamingAudioDataset(HFRows, torch.utils.data.IterableDataset):
    """Batches `(items, position)` from a streamed `HFUtterances` (see the module docstring).

    Give the DataLoader `batch_size=None, collate_fn=collate_stream` and the same
    `num_workers` as here. `frames_for_duration(seconds)` (the model's output frames), when
    given, drops rows too short for their transcript under CTC, as for manifests.
    """

    def __init__(
        self,
        source: HFUtterances,
        tokenizer: Tokenizer,
        max_batch_seconds: float,
        *,
        shuffle_buffer: int = 1000,
        shuffle: bool = True,
        min_duration: float = 0.0,
        max_duration: float = float("inf"),
        frames_for_duration: Callable[[float], int] | None = None,
        sample_rate: int = 16000,
        wave_augment: Callable[[Tensor, random.Random], Tensor] | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        num_workers: int = 0,
    ) -> None:
        if not source.streaming:
            raise ValueError("StreamingAudioDataset needs a streamed dataset (streaming=True)")
        if max_batch_seconds <= 0 or shuffle_buffer < 1:
            raise ValueError(
                f"need max_batch_seconds > 0 and shuffle_buffer >= 1, got {max_batch_seconds} "
                f"and {shuffle_buffer}"
            )
        super().__init__(source, tokenizer, sample_rate, wave_augment, seed)
        dist = torch.distributed
        initialized = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas or (dist.get_world_size() if initialized else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        self.num_workers = max(1, num_workers)
        self.max_batch_seconds, self.shuffle_buffer, self.shuffle = (
            max_batch_seconds, shuffle_buffer, shuffle,
        )  # fmt: skip
        self.limits = (min_duration, max_duration, frames_for_duration)
        self.has_duration = "duration" in source.column_names
        if self.num_replicas > 1 and not self.has_duration:
            raise ValueError(
                "streaming on several processes needs a 'duration' column to give each the same "
                "number of batches; pack the corpus with `asr pack`"
            )
        self.resume: dict[str, Any] | None = None  # positions to resume this epoch from
        self._rows = _resharded(source.dataset)  # the same sources in every reader and epoch
        self._columns = None
        self._plan: tuple[int, list[tuple[int, int]]] | None = None  # (epoch, balance)
        self._prepare()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.resume = epoch, None
        self._prepare()

    def resume_from(self, epoch: int, positions: dict[int, Position], next_worker: int) -> None:
        """Continue `epoch` after the given positions (reader -> the last batch trained)."""
        self.epoch = epoch
        self.resume = {"positions": positions, "shift": next_worker % self.num_workers}
        self._prepare()

    def _prepare(self) -> None:
        """Work out the epoch's batch counts here, before the DataLoader copies this object into
        its workers, rather than once in every worker."""
        if self.num_replicas > 1 and (self._plan is None or self._plan[0] != self.epoch):
            self._plan = (self.epoch, self._balance(self.num_replicas * self.num_workers))

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[list[dict[str, Any]], Position]]:
        info = torch.utils.data.get_worker_info()
        workers = 1 if info is None else info.num_workers
        if workers != self.num_workers:
            raise ValueError(
                f"StreamingAudioDataset was made for {self.num_workers} DataLoader worker(s) "
                f"but runs in {workers}"
            )
        resume = self.resume or {"positions": {}, "shift": 0}
        worker = ((0 if info is None else info.id) + resume["shift"]) % workers
        reader, total = self.rank * workers + worker, self.num_replicas * workers
        splits, limit = 0, None
        if self.num_replicas > 1:
            self._prepare()
            splits, limit = self._plan[1][reader]
        position = resume["positions"].get(worker)
        # A copy iterates: a later set_epoch (the main process's object, num_workers=0) must not
        # change the epoch of the batches this pass still yields.
        fixed = copy.copy(self)
        yield from fixed._reader_batches(worker, reader, total, splits, limit, position)

    def _reader_batches(
        self,
        worker: int,
        reader: int,
        total: int,
        splits: int,
        limit: int | None,
        position: Position | None,
    ) -> Iterator[tuple[list[dict[str, Any]], Position]]:
        """This reader's batches from `position` on (the epoch's start when None)."""
        stream = self._reader_stream(reader, total)
        start = position or {"window": 0, "state": None, "splits": 0, "emitted": 0, "in_window": 0}
        skip, done_splits, emitted = start["in_window"], start["splits"], start["emitted"]
        windows = _windows(stream, self.shuffle_buffer, start["state"])
        for k, (state, rows) in enumerate(windows, start=start["window"]):
            kept = [row for row in rows if self._usable(row)]
            rng = random.Random(f"stream:{self.seed}:{self.epoch}:{reader}:{k}")
            durations = [self._duration(row) for row in kept]
            batches = window_batches(
                durations, self.max_batch_seconds, rng if self.shuffle else None
            )
            batches, used = split_first(batches, splits - done_splits)
            for j in range(skip, len(batches)):
                if limit is not None and emitted + j >= limit:
                    return
                where = {"epoch": self.epoch, "worker": worker, "window": k, "state": state,
                         "splits": done_splits, "emitted": emitted, "in_window": j + 1}  # fmt: skip
                rows_j = [kept[i] for i in batches[j]]
                yield [self._item(row) for row in rows_j], where
            skip, done_splits, emitted = 0, done_splits + used, emitted + len(batches)

    def _item(self, row: dict[str, Any]) -> dict[str, Any] | None:
        key = str(row.get("id") or (row.get(self.source.audio_column) or {}).get("path"))
        return hf_item(self, row, key)  # the id seeds augmentation: the same in any layout

    def _reader_stream(self, reader: int, total: int, columns: bool = False) -> Any:
        """Reader `reader`'s part of the rows for this epoch (only duration and text: `columns`)."""
        from datasets.distributed import split_dataset_by_node

        if columns and self._columns is None:
            self._columns = _resharded(
                self.source.column_stream(["duration", self.source.text_column])
            )
        stream = self._columns if columns else self._rows
        strategy = "shards" if stream.num_shards >= total else "examples"
        stream = split_dataset_by_node(stream, rank=reader, world_size=total, strategy=strategy)
        stream.set_epoch(self._stream_epoch())
        return stream

    def _stream_epoch(self) -> int:
        """The epoch `datasets` shuffles the sources with: 0 (their order) when not shuffling."""
        if not self.shuffle:
            return 0
        digest = hashlib.sha256(f"sources:{self.seed}:{self.epoch}".encode()).digest()
        return 1 + int.from_bytes(digest[:4], "little") % (2**31 - 1)

    def _duration(self, row: dict[str, Any]) -> float:
        if self.has_duration:
            return float(row["duration"])
        try:
            return self.source.header_duration(row, str(row.get("id")))
        except ValueError:
            return 0.0  # unreadable: counted and skipped when its batch is loaded

    def _usable(self, row: dict[str, Any]) -> bool:
        text = row.get(self.source.text_column)
        if not isinstance(text, str):
            return False
        if not self.has_duration:
            return True
        min_duration, max_duration, frames = self.limits
        utt = Utterance(str(row.get("id")), "", text, float(row["duration"]))
        return skip_reason(utt, self.tokenizer, frames, min_duration, max_duration) is None

    # ------------------------------------------------------------------ equal counts
    def _balance(self, total: int) -> list[tuple[int, int]]:
        """(splits, batch limit) of every reader: equal batch counts on every rank."""
        counts, splittable = [], []
        for reader in range(total):
            stream = self._reader_stream(reader, total, columns=True)
            n = m = 0
            for _, rows in _windows(stream, self.shuffle_buffer, None):
                durations = [float(row["duration"]) for row in rows if self._usable(row)]
                batches = window_batches(durations, self.max_batch_seconds, None)
                n, m = n + len(batches), m + sum(len(b) > 1 for b in batches)
            counts.append(n)
            splittable.append(m)
        return balance(counts, splittable, self.num_replicas)


def _resharded(stream: Any) -> Any:
    """Parquet: one data source per row group (each file's footer is read once, here)."""
    with contextlib.suppress(AttributeError, NotImplementedError):
        return stream.reshard()
    return stream


def _windows(
    stream: Any, size: int, state: dict[str, Any] | None
) -> Iterator[tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    """(the stream's state before the window, its rows) for each `size` rows of `stream`,
    starting from `state` (None: the beginning)."""
    if state is not None:
        stream.load_state_dict(state)
    for columns in stream.iter(batch_size=size):
        yield state, [dict(zip(columns, values)) for values in zip(*columns.values())]
        state = stream.state_dict()  # a copy


def window_batches(
    durations: Sequence[float], max_batch_seconds: float, rng: random.Random | None
) -> list[list[int]]:
    """Indices of a window's rows cut into batches of similar duration, each at most
    `max_batch_seconds` of padded audio (a longer row goes alone); with `rng`, ties are broken
    and the batches ordered at random, else both follow the rows' order."""
    order = list(range(len(durations)))
    if rng is not None:
        rng.shuffle(order)
    order.sort(key=lambda i: durations[i])  # stable: equal durations keep the shuffled order
    batches: list[list[int]] = []
    for i in order:  # ascending: the newest row is the batch's longest
        if batches and durations[i] * (len(batches[-1]) + 1) <= max_batch_seconds:
            batches[-1].append(i)
        else:
            batches.append([i])
    if rng is not None:
        rng.shuffle(batches)
    return batches


def split_first(batches: list[list[int]], count: int) -> tuple[list[list[int]], int]:
    """The first `count` batches of two or more rows each split in two halves, in place of the
    batch; returns the batches and how many were split."""
    out, done = [], 0
    for batch in batches:
        if done < count and len(batch) > 1:
            half = len(batch) // 2
            out += [batch[:half], batch[half:]]
            done += 1
        else:
            out.append(batch)
    return out, done


def balance(counts: Sequence[int], splittable: Sequence[int], num_replicas: int) -> list:
    """(splits, limit) per reader so that each rank's readers yield the same number of batches.

    `counts[g]` and `splittable[g]`: batches of reader g, and those of two or more rows. Readers
    r * W ... r * W + W - 1 belong to rank r. A rank below the most splits batches (its first
    readers first) to reach it; if some rank cannot, every rank stops at what that one reaches,
    the richer ones cutting their last readers' last batches.
    """
    W = len(counts) // num_replicas
    ranks = [range(r * W, (r + 1) * W) for r in range(num_replicas)]
    totals = [sum(counts[g] for g in readers) for readers in ranks]
    reach = [totals[r] + sum(splittable[g] for g in ranks[r]) for r in range(num_replicas)]
    target = min(max(totals), min(reach))
    if target == 0 and max(totals) > 0:
        raise ValueError(
            f"rank {reach.index(0)} of {num_replicas} has no rows to train on: the stream has "
            f"too few rows or data sources for {num_replicas} processes"
        )
    plan = [(0, counts[g]) for g in range(len(counts))]
    for r, readers in enumerate(ranks):
        need = target - totals[r]
        for g in readers:
            splits = min(max(need, 0), splittable[g])
            plan[g] = (splits, counts[g] + splits)
            need -= splits
        surplus = totals[r] - target
        if surplus > 0:
            log.warning("rank %d drops its last %d batch(es) this epoch to keep %d processes in "
                        "step (another has fewer, too few to split)", r, surplus, num_replicas)  # fmt: skip
        for g in reversed(readers):
            cut = min(max(surplus, 0), plan[g][1])
            plan[g] = (plan[g][0], plan[g][1] - cut)
            surplus -= cut
    return plan


def collate_stream(sample: tuple[list[dict[str, Any] | None], Position]) -> Batch:
    """`(items, position)` -> a `Batch` carrying the position; all items unreadable -> an empty
    `Batch` (still counted, so that the resume point stays exact)."""
    items, position = sample
    batch = collate(items)
    if batch is None:
        empty = torch.zeros(0, 0)
        batch = Batch(empty, torch.zeros(0, dtype=torch.long), empty.long(),
                      torch.zeros(0, dtype=torch.long), [], [])  # fmt: skip
    batch.position = position
    return batch
