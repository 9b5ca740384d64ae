"""A fixed number of model workers behind a bounded queue.

A `Transcriber` is not thread-safe (it caches its decoder, and the beam-search decoder keeps its
state while it decodes), so each worker is one thread with its own loaded copy of every served model: no locks around
decoding, and N workers decode N requests at once. A request is a `Job`; `submit` admits it only
while fewer than `workers + queue_size` jobs are running or waiting, and otherwise raises
`QueueFull` with a Retry-After estimate, so a burst costs a 503, never unbounded memory.

Workers run `transcribe_stepwise`, which asks `Job.should_stop` between steps: a job past its
deadline or cancelled by its request (client gone, time limit) frees its worker within one step.
What a job produces reaches the request through `Job.on_event`, called on the worker thread:
("words", [Word, ...]) as words settle, then ("done", Result) or ("error", exception).
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

from asr.inference.decoding import DecodingOptions
from asr.inference.transcribe import Transcriber, load_model
from asr.serving.stepwise import Stopped, transcribe_stepwise


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


class ModelWorkers:
    """`len(copies)` worker threads; worker i decodes with its own models `copies[i]`."""

    def __init__(
        self,
        copies: list[dict[str, Transcriber]],
        queue_size: int,
        options: DecodingOptions | None = None,
        threads: int | None = None,
    ) -> None:
        if not copies or not copies[0]:
            raise ValueError("need at least one worker and one model")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self.names = list(copies[0])
        self.workers = len(copies)
        self.queue_size = queue_size
        self.options = options or DecodingOptions()
        self.threads = threads
        self._copies = copies
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
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
                result = transcriber.transcribe(silence, options=options)[0]
                if result.error is not None:
                    raise ValueError(f"model {name!r} cannot transcribe: {result.error}")
        return cls(copies, queue_size, options, threads)

    @property
    def capacity(self) -> int:
        """Jobs admitted at once: one running per worker plus `queue_size` waiting."""
        return self.workers + self.queue_size

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

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise `QueueFull` (the job is then not taken: its cleanup is yours)."""
        if job.model not in self.names:
            raise ValueError(f"unknown model {job.model!r}")
        with self._lock:
            if self._stopping.is_set() or self._admitted >= self.capacity:
                raise QueueFull(self._retry_after())
            self._admitted += 1
        self._jobs.put(job)

    def status(self) -> dict[str, int]:
        with self._lock:
            return {
                "workers": self.workers,
                "busy": self._busy,
                "queued": self._admitted - self._busy,
                "queue_size": self.queue_size,
            }

    def _retry_after(self) -> int:
        """Seconds until a place is likely free: the waiting jobs' share of the workers, at the
        average job time so far (at least 1)."""
        waiting = self._admitted - self.workers + 1
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
        def should_stop() -> bool:
            return self._stopping.is_set() or job.should_stop()

        try:
            if should_stop():  # timed out or cancelled while waiting
                raise Stopped("stopped before it started")
            result = transcribe_stepwise(
                transcriber,
                job.path,
                self.options,
                on_words=lambda words: job.on_event("words", words),
                should_stop=should_stop,
            )
        except Exception as err:  # the request turns it into a response (and logs the unexpected)
            job.on_event("error", err)
        else:
            job.on_event("done", result)
