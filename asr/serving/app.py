"""The FastAPI application of `asr serve`: OpenAI's transcription API, the model list, a health
check and the web page.

Routes: POST /v1/audio/transcriptions, GET /v1/models, GET /v1/models/{id}, GET /health, GET /
(the page, from `page/`) and POST /subtitles (SRT or VTT of given words: the page's downloads).

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

Disk: an upload is written once, as it arrives, into a folder of its own under `upload_dir`
(`uploads`), and only one upload is on disk per place, so the uploads on disk never exceed
(workers + queue_size) x max_upload_bytes: 17 x 200 MB with the defaults. The worker removes
an upload when its job ends.

Who may call (`HostAndOrigin`), against web pages driving a server on this machine: a Host
header that is not a name of this server gets 421 (DNS rebinding: a page of another name that
now resolves to this address). Its names are the bound address, `localhost` and
`allowed_hosts` ("*": any); bound to every interface (0.0.0.0, ::), any IP address too. Any
port: a tunnel or proxy may forward another one, and DNS rebinding changes the name, not the
port. An Origin header other than the server's own (scheme, host and port of the request) gets
403, unless it is one of `cors_origins`, which also get CORS headers; the page at / is the
server's own. Clients other than browsers send no Origin.

A request follows its job's events until the result, its deadline, or its client leaving
(which cancels the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from asr import __version__
from asr.audio import AudioError, audio_duration
from asr.inference.formats import format_result
from asr.inference.transcribe import Result, Word
from asr.serving import responses
from asr.serving.responses import ApiError
from asr.serving.stepwise import Stopped
from asr.serving.uploads import BodyLimit, Upload, discard_body, drain, receive_upload
from asr.serving.workers import Job, ModelWorkers, Place, QueueFull

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
) -> FastAPI:
    """The application serving `workers`' models on address `host`; starting it starts the
    workers. `allowed_hosts` and `cors_origins`: see the module's docstring."""
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
    origins = [_canonical_origin(origin) for origin in cors_origins]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)  # fmt: skip
    app.add_middleware(HostAndOrigin, host=host, allowed_hosts=allowed_hosts, origins=origins)
    _add_error_handlers(app)

    async def authorize(request: Request) -> None:
        if keys:
            _check_api_key(request.headers.get("authorization", ""), keys)

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
            job, events = _job(params.model, upload, deadline)
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


# --- who may call --------------------------------------------------------------------------


class HostAndOrigin:
    """ASGI middleware: 421 for a Host header that is not a name of this server, 403 for an
    Origin header other than the server's own and `origins` (see the module's docstring)."""

    def __init__(
        self, app: ASGIApp, host: str, allowed_hosts: Sequence[str], origins: Sequence[str]
    ) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.any_address = host in ("0.0.0.0", "::", "")  # every interface: any of its addresses
        self.names = sorted({_host_name(h) for h in (host, "localhost", *allowed_hosts)})
        self.any_origin = "*" in origins
        self.origins = {_origin_key(origin) for origin in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error = self._check(scope["scheme"], headers.get("host"), headers.get("origin"))
        if error is None:
            await self.app(scope, receive, send)
            return
        if headers.get("expect", "").lower() != "100-continue":
            await drain(receive)  # so that the client hears the answer (uploads.DRAIN_SECONDS)
        await error.response()(scope, receive, send)

    def _check(self, scheme: str, host: str | None, origin: str | None) -> ApiError | None:
        if host is not None and not self._host_allowed(host):
            return ApiError(421, f"Host {host!r} is not a name of this server ("
                            f"{', '.join(self.names)}); start it with --allowed-host NAME to "
                            "add a name", code="host_not_allowed")  # fmt: skip
        if origin is None or self.any_origin or _origin_key(origin) in self.origins:
            return None
        own = f"{scheme}://{host}" if host is not None else None
        if own is not None and _origin_key(origin) == _origin_key(own):
            return None
        return ApiError(403, f"Origin {origin!r} may not use this server: only its own pages "
                        f"({own or 'no Host given'}) and origins given with --cors-origin may",
                        code="origin_not_allowed")  # fmt: skip

    def _host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        if self.any_host or name in self.names:
            return True
        if not self.any_address:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def _host_name(host: str) -> str:
    """The name in a Host header (or an address), without its port: lowercase, IPv6 bare."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:  # name:port; more colons: an IPv6 address without brackets
        host = host.partition(":")[0]
    return host.rstrip(".")


def _origin_key(origin: str) -> tuple[str, str, int] | str:
    """(scheme, host, port) of an origin, the port filled in; an origin that is not a URL
    (like "null") as it is."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return origin
    if not parts.hostname or port is None:
        return origin
    return parts.scheme.lower(), parts.hostname.rstrip("."), port


def _canonical_origin(origin: str) -> str:
    """An origin as browsers send it: scheme://host[:port], without a default port or a final
    slash ("*" as it is)."""
    key = _origin_key(origin.strip().rstrip("/"))
    if isinstance(key, str):
        return key
    scheme, host, port = key
    shown = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{shown}" + ("" if port == default else f":{port}")
