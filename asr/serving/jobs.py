"""A transcription request and its job: the job's events carried from its worker thread onto
the request's event loop, and followed until the result, the request's deadline or its client
leaving (which cancels the job, so its worker is free at its next step).

`finish` gives the result (a plain response); `stream_events` gives server-sent events, a
delta per batch of settled words then done. A job's failure becomes an `ApiError`
(`job_error`): 504 past the time limit, 400 for a file that is not audio, 500 (logged) for the
unexpected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from asr.audio import AudioError
from asr.inference.engine import Stopped
from asr.inference.transcribe import Result
from asr.serving import responses
from asr.serving.responses import ApiError
from asr.serving.uploads import Upload
from asr.serving.workers import Job

# How often a request waiting for its job asks whether its client is still there: a client that
# left (gave up, timed out) cancels its job, which then frees its worker at its next step.
DISCONNECT_POLL_SECONDS = 1.0
log = logging.getLogger(__name__)


def start_job(model: str, upload: Upload, deadline: float) -> tuple[Job, asyncio.Queue]:
    """A job for the upload, and the queue its events arrive in on this event loop."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def on_event(kind: str, value: object) -> None:  # runs on the worker thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    return Job(model, upload.path, deadline, on_event, upload.remove), events


async def job_events(
    job: Job, events: asyncio.Queue, request: Request
) -> AsyncIterator[tuple[str, Any]]:
    """The job's events as they come; ("error", Stopped) once its deadline passes, and the end
    of the events (the job cancelled) when its client has gone away, checked every second."""
    getter: asyncio.Future | None = None
    try:
        while True:
            left = job.deadline - time.monotonic()
            if left <= 0:
                yield "error", Stopped("past the time limit")
                return
            getter = getter or asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter}, timeout=min(left, DISCONNECT_POLL_SECONDS))
            if getter in done:
                yield getter.result()
                getter = None
            elif await request.is_disconnected():
                return
    finally:
        if getter is not None:
            getter.cancel()
        job.cancelled.set()


async def finish(
    job: Job, events: asyncio.Queue, request: Request, upload: Upload, request_timeout: float
) -> Result:
    """The job's result, or its error as an ApiError."""
    async with contextlib.aclosing(job_events(job, events, request)) as followed:
        async for kind, value in followed:
            if kind == "done":
                return value
            if kind == "error":
                raise job_error(value, upload, request_timeout)
    raise ApiError(499, "the client closed the request")  # nginx's code; nobody reads it


async def stream_events(
    job: Job, events: asyncio.Queue, request: Request, upload: Upload, request_timeout: float
) -> AsyncIterator[str]:
    """Server-sent events: a delta per batch of settled words, then done (or an error event)."""
    first = True
    async with contextlib.aclosing(job_events(job, events, request)) as followed:
        async for kind, value in followed:
            if kind == "words":
                yield responses.sse(responses.delta_event(value, first))
                first = False
            elif kind == "done":
                yield responses.sse(responses.done_event(value))
                return
            else:
                yield responses.sse(
                    {"type": "error", **job_error(value, upload, request_timeout).body}
                )
                return


def job_error(err: BaseException, upload: Upload, request_timeout: float) -> ApiError:
    if isinstance(err, Stopped):
        return ApiError(504, "the transcription did not finish within the server's time limit "
                        f"of {request_timeout:g} s", type="server_error", code="timeout")  # fmt: skip
    if isinstance(err, AudioError):
        return ApiError(400, upload.public(err), param="file", code="invalid_audio")
    log.error("transcription of %s failed", upload.name, exc_info=err)
    return ApiError(500, "the transcription failed on the server; its log has the details",
                    type="server_error")  # fmt: skip
