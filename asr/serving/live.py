"""Live captions over a WebSocket: audio in as it is spoken, partial and final text out.

`GET /v1/realtime?intent=transcription` speaks a subset of OpenAI's Realtime transcription
protocol (the event names of its `transcription_session` API, as OpenAI's own clients and other
OpenAI-compatible servers such as speaches use them). Each utterance ("item") runs on its own
`Stream` (`asr.inference.streaming`): partial text after every chunk, the final transcript with
word times at its end.

Protocol, as implemented here (every event a JSON text message with a `type`):

- connect: `GET /v1/realtime?intent=transcription[&model=NAME]` (`intent` may be left out;
  another intent is refused). `model` picks a served model as POST /v1/audio/transcriptions
  does. The API key, when the server has any: header `Authorization: Bearer KEY`, or the
  subprotocol `openai-insecure-api-key.KEY` (browsers); the subprotocol `realtime` is selected
  when offered. Host and Origin are checked as for HTTP (`access`).
- server: `transcription_session.created` {session}.
- client: `transcription_session.update` {session: {input_audio_format, input_audio_transcription,
  turn_detection}}; the server answers `transcription_session.updated` {session}. The GA form,
  `session.update` {session: {type: "transcription", audio: {input: {format, transcription,
  turn_detection}}}}, is accepted too and answered with `session.updated`.
  `input_audio_format`: "pcm16" (16-bit little-endian mono at 24 kHz, OpenAI's format), or
  {"type": "audio/pcm", "rate": N} for another rate (8 to 192 kHz): the stream resamples it.
  g711 formats are refused. `input_audio_transcription.model` may name a served model for the
  next utterance; its `language` and `prompt` are accepted and ignored.
- client: `input_audio_buffer.append` {audio: base64 PCM16}. A binary message is taken as raw
  PCM16 at the session's rate (a convenience, not OpenAI's). Audio goes to the current item's
  stream at once; the server sends `conversation.item.input_audio_transcription.delta`
  {item_id, content_index: 0, delta} whenever the partial (greedy) text grows.
- client: `input_audio_buffer.commit` ends the item: the server sends `input_audio_buffer.committed`
  {item_id, previous_item_id}, `conversation.item.created`, a last delta for the text the end of
  the audio adds, then `conversation.item.input_audio_transcription.completed` {item_id,
  content_index: 0, transcript, usage: {type: "duration", seconds}} with an extra field `words`:
  [{word, start, end, confidence}], seconds from the item's first sample. With greedy decoding
  the deltas of an item concatenate to its transcript; with a beam search or LM the transcript
  is the final decoding and the deltas are its greedy preview. `input_audio_buffer.clear` drops
  the current item (`input_audio_buffer.cleared`). Committing no audio is an error event.
- turn detection: none by default (the client's commit ends an utterance). A session with
  `turn_detection: {"type": "server_vad", threshold, silence_duration_ms, prefix_padding_ms}`
  (defaults 0.5, 500, 300) gets a plain energy detector, not a speech model (`turns`). An item
  starts at the first speech frame, with `prefix_padding_ms` of the audio before it
  (`input_audio_buffer.speech_started` {item_id, audio_start_ms}), and is committed as above after
  `silence_duration_ms` without speech (`input_audio_buffer.speech_stopped` {item_id,
  audio_end_ms}); audio_start_ms and audio_end_ms (from the session's first sample) bound exactly
  the audio the item was given. Audio between utterances is not transcribed.
- errors: `error` {error: {type, code, message, param, event_id}}, after which the session goes
  on: an unknown event type, a bad field, audio that is not base64 PCM16.

Limits (`LiveOptions`): at most `max_streams` sessions at once (more: an `error` event with code
`server_busy`, then close code 1013, "try again later"); a session that sends nothing for
`idle_seconds` is closed (1000, with the reason); a text message that is not JSON is closed with
1007, a message over `max_message_bytes` with 1009. A refusal at connection (another intent, a
model that cannot stream, an unknown model of several, live captions off) is an `error` event
naming why, then close code 1008. Other clients are served throughout.

Compute: each session's chunks run on a pool of `max_streams` threads (one step of a session at
a time, in order), on a copy of each model sharing worker 0's weights (`ModelWorkers.model`)
with decoders of its own; final decodings of one model take turns (a beam-search decoder keeps
state while it decodes). Live streams are not counted in the workers' queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from starlette.datastructures import Headers
from starlette.websockets import WebSocket, WebSocketDisconnect

from asr.inference.options import DecodingOptions
from asr.inference.result import Result
from asr.inference.streaming import (
    DEFAULT_CHUNK_MS,
    DEFAULT_LEFT_SECONDS,
    DEFAULT_LOOKAHEAD_MS,
    Stream,
)
from asr.inference.transcribe import Transcriber
from asr.modules.attention import RelativePositionalEncoding
from asr.serving.access import check_api_key, deny_websocket, websocket_authorization
from asr.serving.responses import ApiError
from asr.serving.turns import EnergyVad, turn_detection
from asr.serving.workers import ModelWorkers

log = logging.getLogger(__name__)
OPENAI_RATE = 24000  # "pcm16": OpenAI's Realtime audio format
MIN_RATE, MAX_RATE = 8000, 192000
CLOSE_NORMAL, CLOSE_UNSUPPORTED, CLOSE_INVALID, CLOSE_POLICY, CLOSE_TOO_BIG = (
    1000, 1003, 1007, 1008, 1009)  # fmt: skip
CLOSE_ERROR, CLOSE_TRY_LATER = 1011, 1013


@dataclass(frozen=True)
class LiveOptions:
    """Live captions: sessions at once (0: off), seconds a silent session is kept, the largest
    message in bytes, and each stream's chunk, left context and look-ahead
    (`Transcriber.stream`)."""

    max_streams: int = 4
    idle_seconds: float = 30.0
    max_message_bytes: int = 2**20
    chunk_ms: float = DEFAULT_CHUNK_MS
    left_seconds: float = DEFAULT_LEFT_SECONDS  # a bound: a server's streams keep bounded state
    lookahead_ms: float = DEFAULT_LOOKAHEAD_MS

    def __post_init__(self) -> None:
        if self.max_streams < 0:
            raise ValueError(f"max live streams must be >= 0, got {self.max_streams}")
        if self.idle_seconds <= 0 or self.max_message_bytes < 1 or self.chunk_ms <= 0:
            raise ValueError(f"live idle seconds, message size and chunk must be > 0: {self}")
        if self.left_seconds is None or self.left_seconds < 0:
            raise ValueError(f"live left seconds must be >= 0, got {self.left_seconds}")
        if self.lookahead_ms < 0:
            raise ValueError(f"live look-ahead must be >= 0 ms, got {self.lookahead_ms}")


class Refused(Exception):
    """A session the server will not run: an `error` event with `code`, then close `close`."""

    def __init__(self, message: str, code: str, close: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.code, self.close = code, close


class LiveModels:
    """What live sessions share: per model a `Transcriber` on worker 0's weights and the reason
    it cannot stream (None when it can), the thread pool, the count of open sessions."""

    def __init__(
        self, workers: ModelWorkers, options: LiveOptions, decoding: DecodingOptions
    ) -> None:
        self.options, self.decoding = options, decoding
        self.names = workers.names
        self.transcribers: dict[str, Transcriber] = {}
        self.cannot: dict[str, str | None] = {}
        self.locks = {name: threading.Lock() for name in self.names}
        for name in self.names:
            shared = workers.model(name)
            self.transcribers[name] = Transcriber(shared.bundle, shared.device)
            try:
                self.open(name)  # also builds the decoder (an LM loads now, not on a session)
            except ValueError as err:
                self.cannot[name] = str(err)
                continue
            self.cannot[name] = None
            seconds = max(workers.chunking.chunk_seconds,
                          options.left_seconds
                          + (2 * options.chunk_ms + options.lookahead_ms) / 1000)  # fmt: skip
            _grow_position_tables(shared.bundle.model, math.ceil(seconds / shared.frame_seconds))
        self.pool = ThreadPoolExecutor(max(1, options.max_streams), "asr-live")
        self.sessions = 0

    def open(self, name: str) -> Stream:
        return self.transcribers[name].stream(
            self.options.chunk_ms, self.options.left_seconds, options=self.decoding,
            lookahead_ms=self.options.lookahead_ms,
        )  # fmt: skip

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def finish(self, name: str, stream: Stream) -> Result:
        def finish() -> Result:
            with self.locks[name]:
                return stream.finish()

        return await self.run(finish)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def serve(
        self, websocket: WebSocket, keys: list[bytes], resolve: Callable[[str], str]
    ) -> None:
        """One WebSocket connection, from its handshake to its close. `resolve` turns a
        requested model name into a served one (or raises an ApiError)."""
        headers = Headers(scope=websocket.scope)
        if keys:
            try:
                check_api_key(websocket_authorization(headers), keys)
            except ApiError as err:
                await deny_websocket(err, websocket.scope, websocket.receive, websocket.send)
                return
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        session = _Session(self, websocket, resolve)
        try:
            name = self._admit(websocket.query_params, resolve)
        except Refused as refused:
            await session.refuse(refused)
            return
        self.sessions += 1
        try:
            await session.run(name)
        finally:
            self.sessions -= 1

    def _admit(self, query: Any, resolve: Callable[[str], str]) -> str:
        """The model a new session runs, or Refused saying why it cannot start."""
        intent = query.get("intent", "transcription")
        if intent != "transcription":
            raise Refused(f"intent {intent!r}: this server only transcribes; connect with "
                          "?intent=transcription", "unsupported_intent")  # fmt: skip
        if self.options.max_streams == 0:
            raise Refused("live captions are off on this server (it was started with "
                          "--max-live-streams 0)", "live_off")  # fmt: skip
        name = _resolve(resolve, query.get("model", ""))
        if self.cannot[name] is not None:
            raise Refused(f"model {name!r} cannot stream: {self.cannot[name]}",
                          "model_cannot_stream")  # fmt: skip
        if self.sessions >= self.options.max_streams:
            raise Refused(f"the server is busy: all {self.options.max_streams} live streams "
                          "are taken; try again later", "server_busy", CLOSE_TRY_LATER)  # fmt: skip
        return name


def _grow_position_tables(model: Any, frames: int) -> None:
    """Make a model's attention safe to share between threads: `RelativePositionalEncoding`
    grows its table on demand by replacing it, under a forward on another thread that may be
    reading it. Grown here, before any thread runs, to the longest window (`frames`) this
    server's offline chunks and live streams use, forwards only read it. (ONNX models: nothing
    to do.)"""
    if not isinstance(model, torch.nn.Module):
        return
    with torch.inference_mode():
        for module in model.modules():
            if isinstance(module, RelativePositionalEncoding):
                module(frames)


def _resolve(resolve: Callable[[str], str], asked: str) -> str:
    try:
        return resolve(asked)
    except ApiError as err:
        raise Refused(err.body["error"]["message"], "model_not_found") from None


@dataclass
class _Item:
    """One utterance: its id, its stream, and the text its deltas have sent."""

    id: str
    model: str
    stream: Stream
    samples: int = 0
    sent: str = ""


class _Session:
    """One connection's state: its format, turn detection, current item (see the module)."""

    def __init__(self, live: LiveModels, websocket: WebSocket, resolve: Callable[[str], str]):
        self.live, self.ws, self.resolve = live, websocket, resolve
        self.id = "sess_" + secrets.token_hex(8)
        self.model = ""
        self.rate = OPENAI_RATE
        self.format: Any = "pcm16"
        self.turn_detection: dict[str, Any] | None = None
        self.vad: EnergyVad | None = None
        self.item: _Item | None = None
        self.previous: str | None = None
        self.received = 0  # samples in the session, at `rate`

    # --- the connection ------------------------------------------------------------------

    async def run(self, model: str) -> None:
        self.model = model
        try:
            await self.send("transcription_session.created", session=self.session())
            await self._loop()
        except (WebSocketDisconnect, OSError):
            return  # the client left
        except Exception:
            log.exception("live session %s failed", self.id)
            with contextlib.suppress(Exception):
                await self.error("internal server error; the server's log has the details",
                                 "server_error", type="server_error")  # fmt: skip
                await self.close(CLOSE_ERROR, "internal server error")

    async def _loop(self) -> None:
        limit = self.live.options.max_message_bytes
        idle = self.live.options.idle_seconds
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), idle)
            except asyncio.TimeoutError:
                await self.close(CLOSE_NORMAL, f"idle: nothing received for {idle:g} s")
                return
            if message["type"] == "websocket.disconnect":
                return
            data: bytes | None = message.get("bytes")
            text: str | None = message.get("text")
            size = len(data) if data is not None else len((text or "").encode())
            if size > limit:
                await self.error(
                    f"message of {size} bytes: the limit is {limit}", "message_too_big"
                )
                await self.close(CLOSE_TOO_BIG, f"message over {limit} bytes")
                return
            if data is not None:
                await self._pcm16(data, "binary message")
                continue
            try:
                event = json.loads(text or "")
            except ValueError:
                await self.error("not JSON: the Realtime protocol sends JSON events",
                                 "invalid_json")  # fmt: skip
                await self.close(CLOSE_INVALID, "not JSON")
                return
            await self._dispatch(event)

    async def refuse(self, refused: Refused) -> None:
        with contextlib.suppress(WebSocketDisconnect, OSError):
            await self.error(str(refused), refused.code)
            await self.close(refused.close, str(refused))

    async def close(self, code: int, reason: str) -> None:
        reason = reason.encode()[:123].decode(errors="ignore")  # a close frame's limit
        await self.ws.close(code, reason)

    async def send(self, type: str, **fields: Any) -> None:
        event = {"type": type, "event_id": "event_" + secrets.token_hex(8), **fields}
        await self.ws.send_text(json.dumps(event, ensure_ascii=False))

    async def error(self, message: str, code: str, param: str | None = None,
                    event_id: str | None = None, type: str = "invalid_request_error") -> None:  # fmt: skip
        await self.send("error", error={"type": type, "code": code, "message": message,
                                        "param": param, "event_id": event_id})  # fmt: skip

    # --- client events -------------------------------------------------------------------

    async def _dispatch(self, event: Any) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.error("an event is a JSON object with a string 'type'", "invalid_event")
            return
        kind, event_id = event["type"], event.get("event_id")
        handlers = {
            "transcription_session.update": self._update,
            "session.update": self._update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_event,
            "input_audio_buffer.clear": self._clear,
        }
        if kind not in handlers:
            await self.error(f"unknown event type {kind!r}; this server takes "
                             f"{', '.join(handlers)}", "unknown_event", "type", event_id)  # fmt: skip
            return
        try:
            await handlers[kind](event)
        except _BadEvent as bad:
            await self.error(str(bad), bad.code, bad.param, event_id)

    async def _update(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            raise _BadEvent("session: expected an object", "invalid_value", "session")
        if event["type"] == "session.update":  # GA shape: session.audio.input.*
            if session.get("type", "transcription") != "transcription":
                raise _BadEvent(f"session.type {session.get('type')!r}: this server only "
                                "transcribes ('transcription')", "invalid_value", "session.type")  # fmt: skip
            audio = session.get("audio") or {}
            given = audio.get("input") if isinstance(audio, dict) else None
            given = given if isinstance(given, dict) else {}
            names = {"format": "input_audio_format", "transcription": "input_audio_transcription"}
            session = {names.get(k, k): v for k, v in given.items()}
        updates = self._parse_session(session)
        for key, value in updates.items():
            setattr(self, key, value)
        if "turn_detection" in updates or "rate" in updates:
            self.vad = EnergyVad.make(self.turn_detection, self.rate, self.item is not None,
                                       self.received)  # fmt: skip
        answer = "session.updated" if event["type"] == "session.update" else None
        await self.send(answer or "transcription_session.updated", session=self.session())

    def _parse_session(self, session: dict[str, Any]) -> dict[str, Any]:
        """The attributes a session update changes, or _BadEvent for a bad field."""
        updates: dict[str, Any] = {}
        if "input_audio_format" in session:
            fmt = session["input_audio_format"]
            rate = _pcm_rate(fmt)
            if rate != self.rate and (self.received or self.item is not None):
                raise _BadEvent("the audio's rate cannot change once audio was sent",
                                "invalid_value", "input_audio_format")  # fmt: skip
            updates.update(format=fmt, rate=rate)
        transcription = session.get("input_audio_transcription")
        if isinstance(transcription, dict) and transcription.get("model"):
            try:
                updates["model"] = self.resolve(str(transcription["model"]))
            except ApiError as err:
                raise _BadEvent(err.body["error"]["message"], "model_not_found",
                                "input_audio_transcription.model") from None  # fmt: skip
            if self.live.cannot[updates["model"]] is not None:
                raise _BadEvent(f"model {updates['model']!r} cannot stream: "
                                f"{self.live.cannot[updates['model']]}", "model_cannot_stream",
                                "input_audio_transcription.model")  # fmt: skip
        if "turn_detection" in session:
            try:
                updates["turn_detection"] = turn_detection(session["turn_detection"])
            except ValueError as err:
                raise _BadEvent(str(err), "invalid_value", "turn_detection") from None
        return updates

    def session(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "realtime.transcription_session",
            "input_audio_format": self.format,
            "input_audio_transcription": {"model": self.model, "language": None, "prompt": ""},
            "turn_detection": self.turn_detection,
            "modalities": ["text"],
        }

    async def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise _BadEvent("audio: expected a base64 string", "invalid_value", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _BadEvent("audio is not valid base64; the piece was dropped",
                            "invalid_audio", "audio") from None  # fmt: skip
        await self._pcm16(data, "audio")

    async def _pcm16(self, data: bytes, what: str) -> None:
        if len(data) % 2:
            await self.error(f"{what}: {len(data)} bytes is not 16-bit PCM (an odd count); the "
                             "piece was dropped", "invalid_audio", "audio")  # fmt: skip
            return
        samples = np.frombuffer(data, "<i2")
        if self.vad is None:
            await self._feed(samples)
        else:
            for kind, piece, at_ms in self.vad.push(samples):
                if kind == "start":
                    item = self._new_item()
                    await self.send("input_audio_buffer.speech_started", item_id=item.id,
                                    audio_start_ms=at_ms)  # fmt: skip
                if len(piece):
                    await self._feed(piece)
                if kind == "stop" and self.item is not None:
                    await self.send("input_audio_buffer.speech_stopped", item_id=self.item.id,
                                    audio_end_ms=at_ms)  # fmt: skip
                    await self._commit()
        self.received += len(samples)

    async def _feed(self, samples: np.ndarray) -> None:
        item = self.item or self._new_item()
        partial = await self.live.run(item.stream.accept, samples, self.rate)
        item.samples += len(samples)
        await self._delta(item, partial.text)

    async def _delta(self, item: _Item, text: str) -> None:
        text = " ".join(text.split())
        if len(text) > len(item.sent) and text.startswith(item.sent):
            await self.send("conversation.item.input_audio_transcription.delta",
                            item_id=item.id, content_index=0, delta=text[len(item.sent) :])  # fmt: skip
            item.sent = text

    def _new_item(self) -> _Item:
        self.item = _Item("item_" + secrets.token_hex(8), self.model, self.live.open(self.model))
        return self.item

    async def _commit_event(self, event: dict[str, Any]) -> None:
        if self.item is None or self.item.samples == 0:
            raise _BadEvent("the input audio buffer is empty: append audio before committing",
                            "input_audio_buffer_commit_empty")  # fmt: skip
        if self.vad is not None:
            self.vad.reset()
        await self._commit()

    async def _commit(self) -> None:
        item, self.item = self.item, None
        assert item is not None
        await self.send("input_audio_buffer.committed", item_id=item.id,
                        previous_item_id=self.previous)  # fmt: skip
        await self.send("conversation.item.created", previous_item_id=self.previous, item={
            "id": item.id, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "user", "content": [{"type": "input_audio", "transcript": None}],
        })  # fmt: skip
        self.previous = item.id
        result = await self.live.finish(item.model, item.stream)
        await self._delta(item, result.text)
        words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                  "confidence": round(w.confidence, 3)} for w in result.words]  # fmt: skip
        await self.send("conversation.item.input_audio_transcription.completed", item_id=item.id,
                        content_index=0, transcript=result.text, words=words,
                        usage={"type": "duration", "seconds": round(result.duration, 3)})  # fmt: skip

    async def _clear(self, event: dict[str, Any]) -> None:
        self.item = None
        if self.vad is not None:
            self.vad.reset()
        await self.send("input_audio_buffer.cleared")


class _BadEvent(Exception):
    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


def _pcm_rate(fmt: Any) -> int:
    """The sample rate of an `input_audio_format`: "pcm16" or {"type": "audio/pcm", "rate": N}."""
    if fmt == "pcm16":
        return OPENAI_RATE
    if isinstance(fmt, dict) and fmt.get("type") == "audio/pcm":
        rate = fmt.get("rate", OPENAI_RATE)
        if isinstance(rate, int) and MIN_RATE <= rate <= MAX_RATE:
            return rate
        raise _BadEvent(f"input_audio_format.rate {rate!r}: expected a whole number of Hz "
                        f"from {MIN_RATE} to {MAX_RATE}", "invalid_value", "input_audio_format")  # fmt: skip
    raise _BadEvent(f"input_audio_format {fmt!r} is not supported: 'pcm16' (24 kHz) or "
                    "{'type': 'audio/pcm', 'rate': N}", "invalid_value", "input_audio_format")  # fmt: skip
