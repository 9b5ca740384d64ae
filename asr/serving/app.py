"""The FastAPI application of `asr serve`: OpenAI's transcription API, the model list, a health
check and the web page.

Routes: POST /v1/audio/transcriptions, GET /v1/models, GET /v1/models/{id}, GET /health, GET /
(the page, from `page/`), POST /subtitles (SRT or VTT of given words: the page's downloads) and
the WebSocket GET /v1/realtime?intent=transcription (live captions: `live`).

Limits, each answered with one clear message in OpenAI's error shape, after which the server
goes on serving:
- a request takes one of the workers' `workers + queue_size` places when it arrives, before its
  body is read, and keeps it while its upload arrives and its job waits and runs; with none
  free it gets 503 with Retry-After at once;
- a body over `max_upload_bytes` gets 413, from its Content-Length before a byte is read, or as
  soon as the bytes received pass the limit;
- a request gets `request_timeout` seconds in all: 408 while its upload is still arriving, 504
  after (its job stops at its next step and frees the worker);
- with API keys, /v1/* and /subtitles need `Authorization: Bearer KEY` (401 without).

Who may call, against web pages driving a server on this machine (421 for a Host that is not a
name of this server, 403 for another site's Origin, CORS for `cors_origins`): `access`.

Models: a request names one in `model`. A server of one model answers whatever `model` says,
since code written for OpenAI sends "whisper-1" or its own choice (GET /v1/models lists the real
id); with several, an unknown name gets 404 listing them.

Disk: an upload is written once, as it arrives, into a folder of its own under `upload_dir`
(`uploads`), and only one upload is on disk per place, so the uploads on disk never exceed
(workers + queue_size) x max_upload_bytes: 17 x 200 MB with the defaults. The worker removes
an upload when its job ends.

A request follows its job's events (`jobs`) until the result, its deadline, or its client
leaving (which cancels the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request, WebSocket
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
from asr.serving.access import add_access_checks, check_api_key
from asr.serving.jobs import finish, start_job, stream_events
from asr.serving.live import LiveModels, LiveOptions
from asr.serving.responses import ApiError
from asr.serving.uploads import BodyLimit, Upload, discard_body, receive_upload
from asr.serving.workers import ModelWorkers, Place, QueueFull

PAGE = Path(__file__).resolve().parent / "page"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; "
    "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """What one request may take: its body in bytes, its time in seconds (upload included);
    and where uploads are written (None: the system's temporary folder)."""

    max_upload_bytes: int = 200 * 2**20
    request_timeout: float = 600.0
    upload_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.request_timeout <= 0:
            raise ValueError(f"limits must be > 0, got {self}")
        if self.upload_dir is not None and not Path(self.upload_dir).is_dir():
            raise ValueError(f"upload folder {self.upload_dir} is not a folder")


def build_app(
    workers: ModelWorkers,
    limits: ServerLimits | None = None,
    api_keys: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    cors_origins: Sequence[str] = (),
    live: LiveOptions | None = None,
) -> FastAPI:
    """The application serving `workers`' models on address `host`; starting it starts the
    workers. `allowed_hosts` and `cors_origins`: see the module's docstring; `live`: the live
    captions' limits and chunk (`asr.serving.live`)."""
    limits = limits or ServerLimits()
    keys = [key.encode() for key in api_keys if key]
    created = int(time.time())
    streams = LiveModels(workers, live or LiveOptions(), workers.options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers.start()
        try:
            yield
        finally:
            await asyncio.to_thread(workers.stop)
            await asyncio.to_thread(streams.close)

    app = FastAPI(title="asr", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    app.state.live = streams
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    add_access_checks(app, host, allowed_hosts, cors_origins)  # last added: runs first
    _add_error_handlers(app)

    async def authorize(request: Request) -> None:
        if keys:
            check_api_key(request.headers.get("authorization", ""), keys)

    @app.post("/v1/audio/transcriptions", dependencies=[Depends(authorize)])
    async def transcriptions(request: Request) -> Response:
        deadline = time.monotonic() + limits.request_timeout
        place = _reserve(workers)  # before a byte of the body is read
        upload: Upload | None = None
        try:
            upload = await receive_upload(request, deadline, limits.request_timeout,
                                          limits.upload_dir)  # fmt: skip
            params = _parse_params(upload.fields, workers.names)
            await asyncio.to_thread(audio_duration, upload.path)  # not audio: 400 now
            job, events = start_job(params.model, upload, deadline)
            place.submit(job)
        except BaseException as err:
            place.release()
            if upload is not None:
                upload.remove()
            if isinstance(err, QueueFull):
                raise _busy(workers, err) from None
            if isinstance(err, AudioError) and upload is not None:
                raise ApiError(400, upload.public(err), param="file",
                               code="invalid_audio") from None  # fmt: skip
            raise
        if params.stream:
            sse = stream_events(job, events, request, upload, limits.request_timeout)
            return StreamingResponse(sse, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})  # fmt: skip
        result = await finish(job, events, request, upload, limits.request_timeout)
        body = responses.transcription_body(
            result, params.response_format, params.granularities, params.language
        )
        return Response(body, media_type=responses.MEDIA_TYPES[params.response_format])

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        await streams.serve(websocket, keys, lambda asked: _served_model(asked, workers.names))

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

    model = _served_model(last("model"), names)
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


def _served_model(asked: str, names: list[str]) -> str:
    """The served model a request's `model` field means: itself, or (when it is not served)
    the only model of a one-model server; with several, an unknown name is a 404."""
    if not asked:
        return names[0]
    if asked in names:
        return asked
    if len(names) > 1:
        raise _unknown_model(asked, names)
    log.debug("model %r asked for: transcribing with %r, the only model served", asked, names[0])
    return names[0]


def _unknown_model(model: str, names: list[str]) -> ApiError:
    return ApiError(404, f"model {model!r} is not served here; served: {', '.join(names)}",
                    param="model", code="model_not_found")  # fmt: skip


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "asr"}


# --- jobs ----------------------------------------------------------------------------------


def _reserve(workers: ModelWorkers) -> Place:
    try:
        return workers.reserve()
    except QueueFull as full:
        raise _busy(workers, full) from None


def _busy(workers: ModelWorkers, full: QueueFull) -> ApiError:
    return ApiError(
        503,
        f"the server is busy: every worker is transcribing and the queue of "
        f"{workers.queue_size} is full; retry after {full.retry_after} s",
        type="server_error", code="server_busy", headers={"Retry-After": str(full.retry_after)},
    )  # fmt: skip


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
