"""A fixed number of model workers behind a bounded queue.

A `Transcriber` is not thread-safe (it caches its decoder, and the beam-search decoder keeps its
state while it decodes), so each worker is one thread with its own loaded copy of every served
model: no locks around decoding, and N workers decode N requests at once.

Places: at most `capacity = workers + queue_size` requests are in the server at once, counting
uploads still arriving and jobs waiting or running. A request takes its place (`reserve`) when
it arrives, before its body is read, and keeps it through its job: `Place.submit` turns it into
a job, `Place.release` gives it back when the request ends before one. When none is free,
`reserve` raises `QueueFull` with a Retry-After estimate, so a burst costs a 503, never
unbounded memory or disk.

Workers run the engine (`Transcriber.transcribe`, `asr.inference.engine`) on the job's file with
the server's `ChunkingOptions` and `DecodingOptions`; the engine asks `Job.should_stop` before
each step, so a job past its deadline or cancelled by its request (client gone, time limit) frees
its worker within one step. A file the engine cannot read becomes an `AudioError`.
`before_step(job)`, when given, is called on the worker thread before each step of each job: a
place to watch the work or hold it (the tests hold jobs there to decide when they finish); a hook
that waits should return once `job.should_stop()`. What a job produces reaches the request
through `Job.on_event`, called on the worker thread: ("words", [Word, ...]) as words settle,
then ("done", Result) or ("error", exception: `Stopped`, `AudioError` or unexpected).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asr.audio import AudioError
from asr.inference.engine import Stopped
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.transcribe import Result, Transcriber, load_model


class QueueFull(Exception):
    """Every worker is busy and the queue is full; `retry_after` seconds is a fair wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"all workers busy and the queue full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    """One transcription request: which model, which file, until when.

    `cleanup` removes the upload; the worker calls it when the job ends, whatever way it ends
    (the request may be gone by then).
    """

    model: str
    path: Path
    deadline: float  # time.monotonic() seconds
    on_event: Callable[[str, object], None]
    cleanup: Callable[[], None] = lambda: None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline


class Place:
    """One of the server's places, taken by a request before its upload is read (`reserve`):
    `submit` its job, or `release` it. A request uses it from one task: no lock here."""

    def __init__(self, workers: ModelWorkers) -> None:
        self._workers = workers
        self._used = False

    def submit(self, job: Job) -> None:
        """Queue `job` in this place. It raises (the job then not taken, the place given back)
        ValueError for an unknown model, QueueFull when the workers are stopping."""
        if self._used:
            raise RuntimeError("this place was already used")
        self._used = True
        self._workers._submit_in_place(job)

    def release(self) -> None:
        """Give the place back unless a job took it; a second call does nothing."""
        if not self._used:
            self._used = True
            self._workers._give_back()


class ModelWorkers:
    """`len(copies)` worker threads; worker i decodes with its own models `copies[i]`."""

    def __init__(
        self,
        copies: list[dict[str, Transcriber]],
        queue_size: int,
        options: DecodingOptions | None = None,
        threads: int | None = None,
        before_step: Callable[[Job], None] | None = None,
        chunking: ChunkingOptions | None = None,
    ) -> None:
        if not copies or not copies[0]:
            raise ValueError("need at least one worker and one model")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self.names = list(copies[0])
        self.workers = len(copies)
        self.queue_size = queue_size
        self.options = options or DecodingOptions()
        self.chunking = chunking or ChunkingOptions()
        self.threads = threads
        self.before_step = before_step
        self._copies = copies
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._uploading = 0  # places taken by requests whose job is not submitted yet
        self._admitted = 0  # jobs running or waiting
        self._busy = 0
        self._seconds_per_job = 0.0  # moving average, for Retry-After
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @classmethod
    def load(
        cls,
        paths: dict[str, str],
        workers: int = 1,
        queue_size: int = 16,
        device: str = "cpu",
        options: DecodingOptions | None = None,
        threads: int | None = None,
        before_step: Callable[[Job], None] | None = None,
        chunking: ChunkingOptions | None = None,
    ) -> ModelWorkers:
        """Load `workers` copies of each model (`name -> bundle path or shipped name`), each
        warmed up with one second of silence (which also loads an LM now, not on a request)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        copies = []
        for _ in range(workers):
            copies.append({name: load_model(path, device) for name, path in paths.items()})
            for name, transcriber in copies[-1].items():
                silence = (np.zeros(transcriber.sample_rate, np.float32), transcriber.sample_rate)
                result = transcriber.transcribe(silence, chunking, options=options)[0]
                if result.error is not None:
                    raise ValueError(f"model {name!r} cannot transcribe: {result.error}")
        return cls(copies, queue_size, options, threads, before_step, chunking)

    @property
    def capacity(self) -> int:
        """Places: requests in the server at once (uploads arriving, jobs waiting or running)."""
        return self.workers + self.queue_size

    def model(self, name: str) -> Transcriber:
        """Worker 0's copy of model `name`, whose weights live streams share (`live`): read its
        bundle, never decode with it off worker 0's thread (its decoders are that worker's)."""
        return self._copies[0][name]

    def start(self) -> None:
        for i, models in enumerate(self._copies):
            thread = threading.Thread(target=self._work, args=(models,), name=f"asr-worker-{i}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop every job at its next step (waiting ones at once), then end the threads."""
        self._stopping.set()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []

    def reserve(self) -> Place:
        """A free place for a request, or `QueueFull` when all `capacity` are taken."""
        with self._lock:
            if self._stopping.is_set() or self._uploading + self._admitted >= self.capacity:
                raise QueueFull(self._retry_after())
            self._uploading += 1
        return Place(self)

    def submit(self, job: Job) -> None:
        """Queue `job` in a place of its own, or raise `QueueFull` (the job is then not taken:
        its cleanup is yours)."""
        place = self.reserve()
        try:
            place.submit(job)
        finally:
            place.release()

    def _submit_in_place(self, job: Job) -> None:
        with self._lock:
            self._uploading -= 1
            if job.model not in self.names:
                raise ValueError(f"unknown model {job.model!r}")
            if self._stopping.is_set():
                raise QueueFull(self._retry_after())
            self._admitted += 1
        self._jobs.put(job)

    def _give_back(self) -> None:
        with self._lock:
            self._uploading -= 1

    def status(self) -> dict[str, int]:
        with self._lock:
            return {
                "workers": self.workers,
                "busy": self._busy,
                "queued": self._admitted - self._busy,
                "uploading": self._uploading,
                "queue_size": self.queue_size,
            }

    def _retry_after(self) -> int:
        """Seconds until a place is likely free: the share of the workers of the requests ahead,
        at the average job time so far (at least 1)."""
        waiting = self._uploading + self._admitted - self.workers + 1
        return max(1, math.ceil(self._seconds_per_job * waiting / self.workers))

    def _work(self, models: dict[str, Transcriber]) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        while (job := self._jobs.get()) is not None:
            began = time.monotonic()
            with self._lock:
                self._busy += 1
            try:
                self._run(job, models[job.model])
            finally:
                job.cleanup()
                seconds = time.monotonic() - began
                with self._lock:
                    self._busy -= 1
                    self._admitted -= 1
                    average = self._seconds_per_job
                    self._seconds_per_job = (
                        seconds if average == 0 else 0.8 * average + 0.2 * seconds
                    )

    def _run(self, job: Job, transcriber: Transcriber) -> None:
        try:
            result = self._transcribe(job, transcriber)
        except Exception as err:  # the request turns it into a response (and logs the unexpected)
            job.on_event("error", err)
        else:
            job.on_event("done", result)

    def _transcribe(self, job: Job, transcriber: Transcriber) -> Result:
        """The engine on the job's file: stopped before any step once the job should stop,
        settled words sent as events; a file it cannot read raises AudioError."""

        def stopped() -> bool:
            return self._stopping.is_set() or job.should_stop()

        def should_stop() -> bool:  # the engine asks before each step
            if self.before_step is not None:
                self.before_step(job)
            return stopped()

        if stopped():  # timed out or cancelled while waiting
            raise Stopped("stopped before it started")
        result = transcriber.transcribe(
            job.path,
            self.chunking,
            options=self.options,
            should_stop=should_stop,
            on_words=lambda _, words: job.on_event("words", words),
        )[0]
        if result.error is not None:
            raise AudioError(result.error)
        return result
