"""`DurationBucketSampler`: batches of similar duration under a seconds budget, shuffled per
epoch, deterministic for a seed, sharded across distributed ranks, and resumable mid-epoch."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch


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
        if self.num_yielded >= len(self._rank_batches()):
            # saved after the epoch's last batch: resume at the start of the next epoch (an
            # empty rest of an epoch would end training at once)
            self.epoch, self.num_yielded = self.epoch + 1, 0
        self._start = self.num_yielded

    def __len__(self) -> int:
        """Batches the current (or next) iteration yields: the epoch's, less those resumed past."""
        return len(self._rank_batches()) - self._start

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        if self.num_yielded >= len(batches):
            # The last pass was stopped at len() without running the generator to its end (a
            # DataLoader does that): it was complete, so this pass starts from the beginning.
            self.num_yielded = 0
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
