"""Uploads: the multipart body of a transcription request, spooled to disk, and the body limit.

python-multipart spools the file to a temporary file (at most 1 MB of it in memory); it is then
copied into a fresh temporary folder under a fixed name (only an audio suffix is kept from the
client's file name), so nothing in a request names a file on the server. `Upload.public` calls
the upload by the client's file name in error messages, never by its server path.

`BodyLimit` (ASGI middleware) answers 413 for a body over the limit: from its Content-Length
before a byte is read, or once the bytes received pass it. An error answered before the body is
read (413, 401) first reads and drops the rest of it (`discard_body`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asr.audio import AUDIO_EXTENSIONS
from asr.serving.responses import ApiError

# A client still sending when the server answers and closes gets a TCP reset instead of the
# answer; like nginx's lingering close, an early error reads and drops the rest of the body
# first, for at most this long.
DRAIN_SECONDS = 2.0


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


async def receive_upload(request: Request, deadline: float, limit_seconds: float) -> Upload:
    """The multipart body of `request`, its file spooled into a temporary folder of its own."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(400, "send a multipart/form-data body with the audio in the field 'file', "
                       "as OpenAI's API takes it", param="file")  # fmt: skip
    try:
        form = await asyncio.wait_for(
            request.form(max_files=1, max_fields=64), deadline - time.monotonic()
        )
    except asyncio.TimeoutError:
        raise ApiError(408, "the upload did not arrive within the server's time limit of "
                       f"{limit_seconds:g} s", code="timeout") from None  # fmt: skip
    except ApiError:
        raise
    except HTTPException as err:  # Starlette's word on a malformed multipart body
        raise ApiError(400, f"malformed multipart/form-data body: {err.detail}") from None
    try:
        return await _keep_file(form)
    finally:
        await form.close()


async def _keep_file(form: FormData) -> Upload:
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise ApiError(400, "no audio file: send it as a file in the multipart field 'file'",
                       param="file")  # fmt: skip
    name = _display_name(file.filename)
    suffix = Path(name).suffix.lower()
    folder = Path(tempfile.mkdtemp(prefix="asr-serve-"))
    # Only the suffix is taken from the client (libsndfile goes by it for headerless MP3).
    path = folder / f"upload{suffix if suffix in AUDIO_EXTENSIONS else ''}"
    try:
        await asyncio.to_thread(_copy, file.file, path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    fields = {
        key: [v for v in form.getlist(key) if isinstance(v, str)] for key in form if key != "file"
    }
    return Upload(folder, path, name, fields)


def _copy(source: Any, path: Path) -> None:
    source.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _display_name(filename: str | None) -> str:
    """The client's file name without folders or control characters, at most 100 characters."""
    name = Path((filename or "").replace("\\", "/")).name
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")[:100]
    return name or "upload"


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` raises ApiError(413) when it is read,
    from its Content-Length before any byte or once the count passes the limit. Marks the
    request's scope once its body has been read to the end (see `DRAIN_SECONDS`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received, rejected = 0, False
        scope["asr.body_read"] = False

        async def limited() -> Message:
            nonlocal received, rejected
            if not rejected and declared.isdigit() and int(declared) > self.max_bytes:
                rejected = True
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
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
    """Read and drop what is left of the body, for at most DRAIN_SECONDS."""

    async def drain() -> None:
        while True:
            message = await request.receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    if request.scope.get("asr.body_read") is False:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(drain(), DRAIN_SECONDS)
