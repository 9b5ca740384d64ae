"""The FastAPI application of `asr serve`: OpenAI's transcription API, the model list, a health
check and the web page.

Routes: POST /v1/audio/transcriptions, GET /v1/models, GET /v1/models/{id}, GET /health, GET /
(the page, from `page/`) and POST /subtitles (SRT or VTT of given words: the page's downloads).

Limits, each answered with one clear message in OpenAI's error shape, after which the server
goes on serving:
- a body over `max_upload_bytes` gets 413, from its Content-Length before a byte is read, or as
  soon as the bytes received pass the limit;
- a request gets `request_timeout` seconds in all: 408 while its upload is still arriving, 504
  after (its job stops at its next step and frees the worker);
- when every worker is busy and the queue is full: 503 with Retry-After;
- with API keys, /v1/* and /subtitles need `Authorization: Bearer KEY` (401 without).

An upload (`uploads`) reaches a worker as a path to a file of its own; the worker removes it
when the job ends. A request follows its job's events until the result, its deadline, or its
client leaving (which cancels the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from asr import __version__
from asr.audio import AudioError, audio_duration
from asr.inference.formats import format_result
from asr.inference.transcribe import Result, Word
from asr.serving import responses
from asr.serving.responses import ApiError
from asr.serving.stepwise import Stopped
from asr.serving.uploads import BodyLimit, Upload, discard_body, receive_upload
from asr.serving.workers import Job, ModelWorkers, QueueFull

PAGE = Path(__file__).resolve().parent / "page"
# How often a request waiting for its job asks whether its client is still there: a client that
# left (gave up, timed out) cancels its job, which then frees its worker at its next step.
DISCONNECT_POLL_SECONDS = 1.0
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; "
    "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """What one request may take: its body in bytes, its time in seconds (upload included)."""

    max_upload_bytes: int = 200 * 2**20
    request_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.request_timeout <= 0:
            raise ValueError(f"limits must be > 0, got {self}")


def build_app(
    workers: ModelWorkers, limits: ServerLimits | None = None, api_keys: Sequence[str] = ()
) -> FastAPI:
    """The application serving `workers`' models; starting it starts the workers."""
    limits = limits or ServerLimits()
    keys = [key.encode() for key in api_keys if key]
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers.start()
        try:
            yield
        finally:
            await asyncio.to_thread(workers.stop)

    app = FastAPI(title="asr", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    _add_error_handlers(app)

    async def authorize(request: Request) -> None:
        if keys:
            _check_api_key(request.headers.get("authorization", ""), keys)

    @app.post("/v1/audio/transcriptions", dependencies=[Depends(authorize)])
    async def transcriptions(request: Request) -> Response:
        deadline = time.monotonic() + limits.request_timeout
        upload = await receive_upload(request, deadline, limits.request_timeout)
        try:
            params = _parse_params(upload.fields, workers.names)
            await asyncio.to_thread(audio_duration, upload.path)  # not audio: 400 now
            job, events = _job(params.model, upload, deadline)
            workers.submit(job)
        except QueueFull as full:
            upload.remove()
            raise ApiError(
                503,
                f"the server is busy: every worker is transcribing and the queue of "
                f"{workers.queue_size} is full; retry after {full.retry_after} s",
                type="server_error", code="server_busy",
                headers={"Retry-After": str(full.retry_after)},
            ) from None  # fmt: skip
        except AudioError as err:
            upload.remove()
            raise ApiError(400, upload.public(err), param="file", code="invalid_audio") from None
        except BaseException:
            upload.remove()
            raise
        if params.stream:
            return StreamingResponse(_stream(job, events, request, upload, limits),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})  # fmt: skip
        result = await _finish(job, events, request, upload, limits)
        body = responses.transcription_body(
            result, params.response_format, params.granularities, params.language
        )
        return Response(body, media_type=responses.MEDIA_TYPES[params.response_format])

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(n, created) for n in workers.names]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorize)])
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in workers.names:
            raise _unknown_model(model_id, workers.names)
        return _model_card(model_id, created)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": workers.names, **workers.status()}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE / "index.html", headers=PAGE_HEADERS)

    @app.post("/subtitles", dependencies=[Depends(authorize)])
    async def subtitles(body: SubtitleRequest) -> Response:
        words = [Word(w.word, w.start, w.end, w.confidence) for w in body.words]
        result = Result(id="page", path=None, text=" ".join(w.word for w in words), words=words)
        return Response(
            format_result(result, body.format), media_type=responses.MEDIA_TYPES[body.format]
        )

    app.mount("/page", StaticFiles(directory=PAGE), name="page")
    return app


class SubtitleWord(BaseModel):
    word: str
    start: float
    end: float
    confidence: float = 1.0


class SubtitleRequest(BaseModel):
    """POST /subtitles: words (as verbose_json gives them) and the format to write."""

    words: list[SubtitleWord]
    format: Literal["srt", "vtt"]


# --- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Params:
    """The form fields of a transcription request that matter; `language`, `prompt`,
    `temperature` and any other field are accepted and ignored."""

    model: str
    response_format: str
    granularities: tuple[str, ...]
    stream: bool
    language: str | None


def _parse_params(fields: dict[str, list[str]], names: list[str]) -> _Params:
    def last(key: str, default: str = "") -> str:
        return fields[key][-1].strip() if fields.get(key) else default

    model = last("model") or names[0]
    if model not in names:
        raise _unknown_model(model, names)
    fmt = last("response_format", "json")
    if fmt not in responses.RESPONSE_FORMATS:
        raise ApiError(400, f"response_format {fmt!r} is not one of "
                       f"{', '.join(responses.RESPONSE_FORMATS)}", param="response_format")  # fmt: skip
    asked = fields.get("timestamp_granularities[]", []) + fields.get("timestamp_granularities", [])
    granularities = tuple(dict.fromkeys(g.strip() for g in asked))
    for g in granularities:
        if g not in responses.GRANULARITIES:
            raise ApiError(400, f"timestamp_granularities[] {g!r} is not one of "
                           f"{', '.join(responses.GRANULARITIES)}", param="timestamp_granularities[]")  # fmt: skip
    stream = last("stream", "false").lower()
    if stream not in ("true", "false"):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", param="stream")
    if stream == "true" and fmt not in ("json", "text"):
        raise ApiError(400, "stream=true sends text events: use response_format json or text",
                       param="stream")  # fmt: skip
    return _Params(model, fmt, granularities, stream == "true", last("language") or None)


def _unknown_model(model: str, names: list[str]) -> ApiError:
    return ApiError(404, f"model {model!r} is not served here; served: {', '.join(names)}",
                    param="model", code="model_not_found")  # fmt: skip


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "asr"}


def _check_api_key(header: str, keys: list[bytes]) -> None:
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "this server needs an API key: send the header "
                       "'Authorization: Bearer KEY'", code="invalid_api_key")  # fmt: skip
    given = key.strip().encode()
    # compare_digest with every key: the time taken does not tell how much of a key matched.
    if not any([hmac.compare_digest(given, k) for k in keys]):
        raise ApiError(401, "incorrect API key", code="invalid_api_key")


# --- jobs ----------------------------------------------------------------------------------


def _job(model: str, upload: Upload, deadline: float) -> tuple[Job, asyncio.Queue]:
    """A job for the upload, and the queue its events arrive in on this event loop."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def on_event(kind: str, value: object) -> None:  # runs on the worker thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    return Job(model, upload.path, deadline, on_event, upload.remove), events


async def _job_events(
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


async def _finish(
    job: Job, events: asyncio.Queue, request: Request, upload: Upload, limits: ServerLimits
) -> Result:
    """The job's result, or its error as an ApiError."""
    async with contextlib.aclosing(_job_events(job, events, request)) as job_events:
        async for kind, value in job_events:
            if kind == "done":
                return value
            if kind == "error":
                raise _job_error(value, upload, limits)
    raise ApiError(499, "the client closed the request")  # nginx's code; nobody reads it


async def _stream(
    job: Job, events: asyncio.Queue, request: Request, upload: Upload, limits: ServerLimits
) -> AsyncIterator[str]:
    """Server-sent events: a delta per batch of settled words, then done (or an error event)."""
    first = True
    async with contextlib.aclosing(_job_events(job, events, request)) as job_events:
        async for kind, value in job_events:
            if kind == "words":
                yield responses.sse(responses.delta_event(value, first))
                first = False
            elif kind == "done":
                yield responses.sse(responses.done_event(value))
                return
            else:
                yield responses.sse({"type": "error", **_job_error(value, upload, limits).body})
                return


def _job_error(err: BaseException, upload: Upload, limits: ServerLimits) -> ApiError:
    if isinstance(err, Stopped):
        return ApiError(504, "the transcription did not finish within the server's time limit "
                        f"of {limits.request_timeout:g} s", type="server_error", code="timeout")  # fmt: skip
    if isinstance(err, AudioError):
        return ApiError(400, upload.public(err), param="file", code="invalid_audio")
    log.error("transcription of %s failed", upload.name, exc_info=err)
    return ApiError(500, "the transcription failed on the server; its log has the details",
                    type="server_error")  # fmt: skip


# --- errors --------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        await discard_body(request)
        if isinstance(err, ApiError):
            return err.response()
        message = f"{request.method} {request.url.path}: {err.detail}"  # unknown route, method
        return ApiError(err.status_code, message, headers=err.headers).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or "body"
        return ApiError(400, f"{where}: {first['msg']}", param=where).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        # Starlette raises `err` again after this answer, and uvicorn logs its traceback.
        return ApiError(500, "internal server error; the server's log has the details",
                        type="server_error").response()  # fmt: skip
