"""Uploads: the multipart body of a transcription request, written once to its file, and the
body limit.

The body is parsed as it arrives (python-multipart's streaming `MultipartParser`): the bytes of
the field 'file' go straight into a fresh temporary folder of their own (under `upload_dir`,
default the system's temporary folder), in a file of a fixed name (only an audio suffix is kept
from the client's file name), so nothing in a request names a file on the server, and an upload
is on disk once, never more than its body's size. Other fields are kept in memory (at most
`MAX_FIELDS` of at most `MAX_FIELD_BYTES` each); a second file part is refused. `Upload.public`
calls the upload by the client's file name in error messages, never by its server path.

`BodyLimit` (ASGI middleware) answers 413 for a body over the limit: from its Content-Length
before a byte is read, or once the bytes received pass it. An error answered before the body is
read (413, 401, 503) first reads and drops the rest of it (`discard_body`), except from a client
that waits for `100 Continue` before sending it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asr.audio import AUDIO_EXTENSIONS
from asr.serving.responses import ApiError

# A client still sending when the server answers and closes gets a TCP reset instead of the
# answer; like nginx's lingering close, an early error reads and drops the rest of the body
# first, for at most this long.
DRAIN_SECONDS = 2.0
MAX_FIELDS = 64
MAX_FIELD_BYTES = 2**20


@dataclass
class Upload:
    """A received upload: its folder and file on the server, its name and the other fields."""

    folder: Path
    path: Path
    name: str  # the client's file name: what error messages call it
    fields: dict[str, list[str]]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def public(self, err: BaseException) -> str:
        """`err`'s message with the server's path of the upload replaced by its file name."""
        return " ".join(str(err).replace(str(self.path), self.name).split())


async def receive_upload(
    request: Request, deadline: float, limit_seconds: float, upload_dir: Path | None = None
) -> Upload:
    """The multipart body of `request`, its file written into a temporary folder of its own
    under `upload_dir` as it arrives."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "send a multipart/form-data body with the audio in the field 'file', "
                       "as OpenAI's API takes it", param="file")  # fmt: skip
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed multipart/form-data body: its Content-Type names no "
                       "boundary")  # fmt: skip
    form = _Form(Path(tempfile.mkdtemp(prefix="asr-serve-", dir=upload_dir)))
    try:
        await asyncio.wait_for(form.read(request.stream(), boundary), deadline - time.monotonic())
        return form.upload()
    except BaseException as err:
        shutil.rmtree(form.folder, ignore_errors=True)
        if isinstance(err, asyncio.TimeoutError):
            raise ApiError(408, "the upload did not arrive within the server's time limit of "
                           f"{limit_seconds:g} s", code="timeout") from None  # fmt: skip
        if isinstance(err, FormParserError):
            message = " ".join(str(err).split())
            raise ApiError(400, f"malformed multipart/form-data body: {message}") from None
        if isinstance(err, ClientDisconnect):
            raise ApiError(400, "the client closed the connection during its upload") from None
        raise


class _Form:
    """python-multipart's callbacks: the part 'file' goes to `folder`/upload.SUFFIX as it is
    parsed, other fields are collected. The callbacks only collect; `read` writes (off the
    event loop) what each chunk of the body brought."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path: Path | None = None
        self.name = ""
        self.fields: dict[str, list[str]] = {}
        self.ended = False
        self._files = 0
        self._file: BinaryIO | None = None
        self._pending = bytearray()  # file bytes parsed, not yet written
        self._header, self._value = b"", b""
        self._disposition = b""
        self._part: str | None = None  # the field being parsed; None for a file part
        self._keep_file = False
        self._data = bytearray()

    async def read(self, stream: AsyncIterator[bytes], boundary: bytes) -> None:
        callbacks = {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
            "on_header_end", "on_headers_finished", "on_end")}  # fmt: skip
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        try:
            async for chunk in stream:
                parser.write(chunk)
                if self._pending:
                    data, self._pending = bytes(self._pending), bytearray()
                    await asyncio.to_thread(self._write, data)
        finally:
            if self._file is not None:
                self._file.close()
        if not self.ended:
            raise ApiError(400, "malformed multipart/form-data body: it ends before its closing "
                           "boundary")  # fmt: skip

    def upload(self) -> Upload:
        if self.path is None:
            raise ApiError(400, "no audio file: send it as a file in the multipart field 'file'",
                           param="file")  # fmt: skip
        return Upload(self.folder, self.path, self.name, self.fields)

    def _write(self, data: bytes) -> None:
        assert self._file is not None, "file bytes without a file"
        self._file.write(data)

    # --- python-multipart callbacks (on the event loop, within `parser.write`) ---

    def on_part_begin(self) -> None:
        self._disposition, self._data = b"", bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        options = parse_options_header(self._disposition)[1]
        if b"name" not in options:
            raise ApiError(400, "malformed multipart/form-data body: a part's "
                           "Content-Disposition has no name")  # fmt: skip
        name = _text(options[b"name"])
        self._part, self._keep_file = name, False
        if b"filename" not in options:
            if sum(map(len, self.fields.values())) >= MAX_FIELDS:
                raise ApiError(400, f"more than {MAX_FIELDS} form fields")
            return
        self._part = None
        self._files += 1
        if self._files > 1:
            raise ApiError(400, "send one file, in the multipart field 'file'", param="file")
        if name == "file":  # a file in another field is read and dropped ("no audio file")
            self.name = _display_name(_text(options[b"filename"]))
            suffix = Path(self.name).suffix.lower()
            # Only the suffix is taken from the client (libsndfile goes by it for headerless MP3).
            self.path = self.folder / f"upload{suffix if suffix in AUDIO_EXTENSIONS else ''}"
            self._keep_file = True
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed at the end of `read`)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part is None:
            if self._keep_file:
                self._pending += data[start:end]
            return
        self._data += data[start:end]
        if len(self._data) > MAX_FIELD_BYTES:
            raise ApiError(400, f"the form field {self._part!r} is over "
                           f"{MAX_FIELD_BYTES // 1024} KB", param=self._part)  # fmt: skip

    def on_part_end(self) -> None:
        if self._part is not None:
            self.fields.setdefault(self._part, []).append(_text(bytes(self._data)))

    def on_end(self) -> None:
        self.ended = True


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _display_name(filename: str | None) -> str:
    """The client's file name without folders or control characters, at most 100 characters."""
    name = Path((filename or "").replace("\\", "/")).name
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")[:100]
    return name or "upload"


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` raises ApiError(413) when it is read,
    from its Content-Length before any byte or once the count passes the limit. Marks in the
    request's scope whether any of its body has been read, and whether all of it (see
    `DRAIN_SECONDS`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received, rejected = 0, False
        scope["asr.body_read"] = scope["asr.body_started"] = False

        async def limited() -> Message:
            nonlocal received, rejected
            if not rejected and declared.isdigit() and int(declared) > self.max_bytes:
                rejected = True
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                scope["asr.body_started"] = True
                scope["asr.body_read"] = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if not rejected and received > self.max_bytes:
                    rejected = True  # what follows is only read to be dropped
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the upload is larger than this server's limit of "
                        f"{self.max_bytes / 2**20:g} MB", code="file_too_large")  # fmt: skip


async def discard_body(request: Request) -> None:
    """Read and drop what is left of the body, for at most DRAIN_SECONDS; nothing when it was
    read, or when its client waits for `100 Continue` (which reading would send) to send it."""
    if request.scope.get("asr.body_read") is not False:
        return
    waits = request.headers.get("expect", "").lower() == "100-continue"
    if not (waits and not request.scope.get("asr.body_started")):
        await drain(request.receive)


async def drain(receive: Receive) -> None:
    """Read and drop the request's body until its end, for at most DRAIN_SECONDS."""

    async def read_all() -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(read_all(), DRAIN_SECONDS)
