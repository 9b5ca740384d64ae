"""Live captions of `asr serve` over a real WebSocket (`asr.serving.live`): OpenAI's own Realtime
client gets, from partial deltas to the completed transcript with word times, exactly what a
`Stream` of the same model, chunk and left context makes of the same audio; raw PCM16 at another
rate; the energy turn detector's utterances, each the Stream's transcript of its span; the
limits (streams at once, idle sessions, garbage, oversized messages) with their close codes,
the server serving on; the Host, Origin and API-key checks on the handshake; and the refusal of
a model that cannot stream, naming why.

The model: a causal Conformer with random weights whose head is calibrated on the speech
(tests/test_streaming.py), since the shipped model cannot stream. The main server is the real
command; the servers with tight limits run the application in this process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import numpy as np
import pytest
import torch
import torchaudio

pytest.importorskip("fastapi", reason="asr serve needs the serve extra: pip install 'asr[serve]'")
pytest.importorskip("websockets", reason="live captions need the serve extra")
import httpx
import openai
import websockets
from openai.types.beta.realtime import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionDeltaEvent,
    InputAudioBufferCommittedEvent,
)
from serving_helpers import KEY, MODEL, RATE, SENTENCES, app_server, serve_process, speak
from test_streaming import calibrated_streaming_bundle

import asr
from asr.cli import main
from asr.inference.streaming import DEFAULT_LOOKAHEAD_MS
from asr.serving.live import LiveOptions
from asr.serving.workers import ModelWorkers

CHUNK_MS, LEFT_SECONDS = 320.0, 2.56
PIECE = 2400  # samples per append: 100 ms at 24 kHz


def resampled(wave: np.ndarray, rate: int) -> np.ndarray:
    """eSpeak's float audio at 22050 Hz -> 16-bit PCM at `rate`."""
    x = torchaudio.functional.resample(torch.from_numpy(wave), RATE, rate).numpy()
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Two sentences, 16-bit PCM at 24 kHz (OpenAI's Realtime format)."""
    return resampled(speak(SENTENCES[:2]), 24000)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, speech):
    wave16 = torch.from_numpy(resampled(speak(SENTENCES[:2]), 16000).astype(np.float32) / 32768)
    return calibrated_streaming_bundle(tmp_path_factory.mktemp("live") / "causal.pt", wave16[None])


@pytest.fixture(scope="module")
def transcriber(bundle):
    return asr.load_model(bundle)


def reference(
    transcriber, pcm: np.ndarray, rate: int, piece: int = PIECE, lookahead_ms=DEFAULT_LOOKAHEAD_MS
):
    """What a Stream with the server's chunk, look-ahead (by default the library's, as the
    server's) and left context makes of `pcm` in pieces."""
    stream = transcriber.stream(CHUNK_MS, LEFT_SECONDS, lookahead_ms=lookahead_ms)
    for i in range(0, len(pcm), piece):
        stream.accept(pcm[i : i + piece], rate)
    result = stream.finish()
    words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
              "confidence": round(w.confidence, 3)} for w in result.words]  # fmt: skip
    return result.text, words


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundle):
    """`asr serve` with the causal model (the default) and the shipped one (cannot stream)."""
    args = ["--model", f"live={bundle}", "--model", MODEL, "--api-key", KEY, "--threads", "2",
            "--chunk-ms", str(CHUNK_MS), "--left-seconds", str(LEFT_SECONDS),
            "--cors-origin", "http://app.example"]  # fmt: skip
    with serve_process(tmp_path_factory.mktemp("server"), args) as url:
        yield url


def ws_url(url: str, query: str = "intent=transcription") -> str:
    return url.replace("http://", "ws://") + f"/v1/realtime?{query}"


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 300))  # a deadline, not a measure of speed


def append(pcm: np.ndarray) -> str:
    return json.dumps({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(pcm.tobytes()).decode()})  # fmt: skip


async def until(websocket, kind: str) -> tuple[dict, list[dict]]:
    """Events up to the first of type `kind`: (it, the ones before)."""
    before = []
    while (event := json.loads(await websocket.recv()))["type"] != kind:
        before.append(event)
    return event, before


# --- the transcript ------------------------------------------------------------------------


def test_the_openai_client_gets_the_streams_transcript_live(server, speech, transcriber):
    """Partial deltas arrive while audio is still being sent, concatenate to the completed
    transcript, and that (with its word times) is the Stream's of the same pieces."""
    want_text, want_words = reference(transcriber, speech, 24000)
    assert len(want_text.split()) >= 3, "the model says nothing: nothing would be compared"

    async def session():
        client = openai.AsyncOpenAI(api_key=KEY, base_url=f"{server}/v1",
                                    websocket_base_url=server.replace("http", "ws") + "/v1")  # fmt: skip
        events: list = []
        async with client.beta.realtime.connect(
            model="live", extra_query={"intent": "transcription"}
        ) as connection:

            async def read():
                while True:
                    events.append(connection.parse_event(await connection.recv_bytes()))

            reader = asyncio.create_task(read())
            await connection.transcription_session.update(session={"input_audio_format": "pcm16"})
            half = len(speech) // 2 // PIECE * PIECE
            for i in range(0, half, PIECE):
                await connection.input_audio_buffer.append(
                    audio=base64.b64encode(speech[i : i + PIECE].tobytes()).decode()
                )
            while not any(e.type.endswith(".delta") for e in events):  # before the rest is sent
                await asyncio.sleep(0.02)
            for i in range(half, len(speech), PIECE):
                await connection.input_audio_buffer.append(
                    audio=base64.b64encode(speech[i : i + PIECE].tobytes()).decode()
                )
            await connection.input_audio_buffer.commit()
            while not any(e.type.endswith(".completed") for e in events):
                await asyncio.sleep(0.02)
            reader.cancel()
        return events

    events = run(session())
    kinds = [e.type for e in events]
    assert kinds[0] == "transcription_session.created" and "error" not in kinds, events
    deltas = [e for e in events if e.type.endswith(".delta")]
    (committed,) = [e for e in events if e.type == "input_audio_buffer.committed"]
    (completed,) = [e for e in events if e.type.endswith(".completed")]
    assert all(isinstance(e, ConversationItemInputAudioTranscriptionDeltaEvent) for e in deltas)
    assert isinstance(committed, InputAudioBufferCommittedEvent)
    assert isinstance(completed, ConversationItemInputAudioTranscriptionCompletedEvent)
    assert completed.transcript == want_text
    assert completed.to_dict()["words"] == want_words
    assert completed.usage.seconds == pytest.approx(len(speech) / 24000, abs=1e-3)
    assert "".join(d.delta for d in deltas) == want_text  # greedy: the deltas are the transcript
    assert len(deltas) >= 3 and {d.item_id for d in deltas} == {completed.item_id}
    assert committed.item_id == completed.item_id


def test_binary_pcm16_at_another_rate_gets_the_streams_transcript(server, transcriber):
    pcm = resampled(speak(SENTENCES[2:3]), 16000)
    want_text, want_words = reference(transcriber, pcm, 16000, piece=1000)

    async def session():
        async with websockets.connect(ws_url(server),
                                      additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:  # fmt: skip
            created = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "transcription_session.update", "session": {
                "input_audio_format": {"type": "audio/pcm", "rate": 16000}}}))  # fmt: skip
            updated = json.loads(await ws.recv())
            for i in range(0, len(pcm), 1000):
                await ws.send(pcm[i : i + 1000].tobytes())
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            completed, before = await until(
                ws, "conversation.item.input_audio_transcription.completed"
            )
            return created, updated, completed, before

    created, updated, completed, before = run(session())
    assert created["type"] == "transcription_session.created"
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == {"type": "audio/pcm", "rate": 16000}
    assert (completed["transcript"], completed["words"]) == (want_text, want_words)
    assert "error" not in [e["type"] for e in before]


def test_server_vad_ends_each_utterance_at_its_silence(server, transcriber):
    """Two sentences between silences, no commit: two items, each the Stream's transcript of
    the span its speech_started and speech_stopped bound."""
    a, b = resampled(speak(SENTENCES[3:4]), 24000), resampled(speak(SENTENCES[4:5]), 24000)
    gap = np.zeros(36000, "<i2")  # 1.5 s
    pcm = np.concatenate([gap[:12000], a, gap, b, gap])
    b_at = (12000 + len(a) + len(gap)) / 24  # ms: where the second sentence's audio begins

    async def session():
        async with websockets.connect(ws_url(server),
                                      subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:  # fmt: skip
            await until(ws, "transcription_session.created")
            await ws.send(json.dumps({"type": "transcription_session.update", "session": {
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}))  # fmt: skip
            updated, _ = await until(ws, "transcription_session.updated")
            for i in range(0, len(pcm), PIECE):
                await ws.send(append(pcm[i : i + PIECE]))
            items = []
            for _ in range(2):
                completed, before = await until(
                    ws, "conversation.item.input_audio_transcription.completed"
                )
                items.append((completed, {e["type"]: e for e in before}))
            return updated, items

    updated, items = run(session())
    assert updated["session"]["turn_detection"] == {"type": "server_vad", "threshold": 0.5,
        "silence_duration_ms": 500, "prefix_padding_ms": 300}  # fmt: skip
    spans = []
    for completed, before in items:
        started = before["input_audio_buffer.speech_started"]
        stopped = before["input_audio_buffer.speech_stopped"]
        assert started["item_id"] == stopped["item_id"] == completed["item_id"]
        start, end = started["audio_start_ms"], stopped["audio_end_ms"]
        text, words = reference(transcriber, pcm[start * 24 : end * 24], 24000)
        assert (completed["transcript"], completed["words"]) == (text, words)
        assert completed["usage"]["seconds"] == pytest.approx((end - start) / 1000, abs=1e-3)
        spans.append((start, end))
    (s1, e1), (s2, e2) = spans
    # Each starts 300 ms (the prefix) before a frame of its sentence; the first ends before the
    # second sentence, the second before the audio does.
    assert 500 <= s1 + 300 < 500 + len(a) / 24 and b_at <= s2 + 300 < b_at + len(b) / 24
    assert e1 <= b_at and e2 <= len(pcm) / 24
    assert e1 - s1 >= len(a) / 24 * 0.5 and e2 - s2 >= len(b) / 24 * 0.5


# --- refusals and access -------------------------------------------------------------------


async def refusal(url: str, **options) -> tuple[dict, int, str]:
    """The error event a refused session gets, and its close code and reason."""
    async with websockets.connect(url, **options) as ws:
        event = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    return event, closed.value.rcvd.code, closed.value.rcvd.reason


def test_a_model_that_cannot_stream_is_refused_naming_why(server):
    auth = {"additional_headers": {"Authorization": f"Bearer {KEY}"}}
    event, code, reason = run(
        refusal(ws_url(server, f"intent=transcription&model={MODEL}"), **auth)
    )
    assert event["type"] == "error" and event["error"]["code"] == "model_cannot_stream"
    assert event["error"]["message"].startswith(f"model {MODEL!r} cannot stream: ")
    assert "causal_conv" in event["error"]["message"] and code == 1008
    assert reason and event["error"]["message"].startswith(reason)  # cut to a close frame's 123
    event, code, _ = run(refusal(ws_url(server, "intent=transcription&model=nope"), **auth))
    assert (
        event["error"]["code"] == "model_not_found"
        and "served: live, " in event["error"]["message"]
    )
    assert code == 1008
    event, code, _ = run(refusal(ws_url(server, "intent=conversation"), **auth))
    assert event["error"]["code"] == "unsupported_intent" and code == 1008


async def handshake(url: str, **options) -> tuple[int, str]:
    """The HTTP status and body of a refused handshake, or (101, subprotocol) when accepted."""
    try:
        async with websockets.connect(url, **options) as ws:
            await until(ws, "transcription_session.created")
            return 101, ws.subprotocol
    except websockets.InvalidStatus as refused:
        return refused.response.status_code, refused.response.body.decode()


def test_the_handshake_checks_the_key_host_and_origin(server):
    url, port = ws_url(server), server.rsplit(":", 1)[1]
    key = {"Authorization": f"Bearer {KEY}"}
    assert run(handshake(url))[0] == 401
    assert run(handshake(url, additional_headers={"Authorization": "Bearer wrong"}))[0] == 401
    assert run(handshake(url, subprotocols=[f"openai-insecure-api-key.{KEY}"])) == (101, None)
    assert run(handshake(url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"])) == (
        101, "realtime")  # fmt: skip
    status, body = run(handshake(url, additional_headers=key, origin="http://evil.example"))
    assert status == 403 and "Origin 'http://evil.example' may not use this server" in body
    # DNS rebinding: a name of another site, pointed at this server
    foreign = url.replace("127.0.0.1", "evil.example")
    status, body = run(handshake(foreign, additional_headers=key, host="127.0.0.1", port=int(port)))
    assert status == 421 and f"Host 'evil.example:{port}' is not a name of this server" in body
    for origin in (f"http://127.0.0.1:{port}", "http://app.example"):  # its own page, CORS
        assert run(handshake(url, additional_headers=key, origin=origin)) == (101, None)


def test_serve_documents_the_live_flags(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-live-streams N", "--live-idle-seconds S", "--live-max-message-kb KB",
                 "--chunk-ms", "--lookahead-ms", "--left-seconds",
                 "GET /v1/realtime?intent=transcription"):  # fmt: skip
        assert flag in shown


# --- limits --------------------------------------------------------------------------------


@contextlib.contextmanager
def tight_server(transcriber, **limits):
    workers = ModelWorkers([{"live": transcriber}], queue_size=1)
    live = LiveOptions(chunk_ms=CHUNK_MS, left_seconds=LEFT_SECONDS, **limits)
    with app_server(workers, live=live) as url:
        yield url


async def open_session(url: str):
    """A session once the server has a free stream (the last one may still be closing)."""
    deadline = time.monotonic() + 60
    while True:
        ws = await websockets.connect(url)
        event = json.loads(await ws.recv())
        if event["type"] == "transcription_session.created":
            return ws
        await ws.close()
        assert event["error"]["code"] == "server_busy" and time.monotonic() < deadline, event
        await asyncio.sleep(0.05)


async def transcribe(url: str, pcm: np.ndarray) -> str:
    ws = await open_session(url)
    async with ws:
        for i in range(0, len(pcm), PIECE):
            await ws.send(append(pcm[i : i + PIECE]))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        completed, _ = await until(ws, "conversation.item.input_audio_transcription.completed")
    return completed["transcript"]


def test_streams_beyond_the_limit_are_closed_with_1013_until_one_is_free(transcriber, speech):
    want = reference(transcriber, speech, 24000)[0]

    async def scenario(url: str):
        first = await open_session(url)
        event, code, reason = await refusal(url)  # while the first is open
        await first.close()
        return event, code, reason, await transcribe(url, speech)

    with tight_server(transcriber, max_streams=1) as url:
        event, code, reason, text = run(scenario(ws_url(url)))
    assert event["error"]["code"] == "server_busy" and code == 1013
    assert (
        reason
        == event["error"]["message"]
        == ("the server is busy: all 1 live streams are taken; try again later")
    )
    assert text == want


def test_an_idle_session_is_closed_with_the_reason(transcriber):
    async def scenario():
        ws = await open_session(ws_url(url))
        await ws.send(append(np.zeros(PIECE, "<i2")))  # then nothing
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
        return closed.value.rcvd

    with tight_server(transcriber, idle_seconds=0.5) as url:
        close = run(scenario())
    assert (close.code, close.reason) == (1000, "idle: nothing received for 0.5 s")


def test_garbage_gets_error_events_or_a_close_code_and_the_server_goes_on(transcriber, speech):
    want = reference(transcriber, speech, 24000)[0]
    bad_events = [
        ("{}", "invalid_event"), ('["x"]', "invalid_event"),
        ('{"type": "response.create"}', "unknown_event"),
        ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_audio"),
        ('{"type": "input_audio_buffer.append", "audio": 7}', "invalid_value"),
        ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty"),
        ('{"type": "transcription_session.update", "session": {"input_audio_format": '
         '"g711_ulaw"}}', "invalid_value"),
        ('{"type": "transcription_session.update", "session": {"turn_detection": '
         '{"type": "semantic_vad"}}}', "invalid_value"),
        (b"\x01\x02\x03", "invalid_audio"),
    ]  # fmt: skip

    async def scenario():
        codes = []
        async with await open_session(ws_url(url)) as ws:
            for message, _ in bad_events:  # each an error event; the session goes on
                await ws.send(message)
                codes.append(json.loads(await ws.recv())["error"]["code"])
            await ws.send(append(speech[:PIECE]))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await until(ws, "conversation.item.input_audio_transcription.completed")
        closes = []
        for message in ("not json at all", append(np.zeros(40000, "<i2"))):
            async with await open_session(ws_url(url)) as ws:
                await ws.send(message)
                error, _ = await until(ws, "error")
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                closes.append((error["error"]["code"], closed.value.rcvd.code))
        return codes, closes, await transcribe(ws_url(url), speech)

    with tight_server(transcriber, max_message_bytes=65536) as url:
        codes, closes, text = run(scenario())
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert codes == [code for _, code in bad_events]
    assert closes == [("invalid_json", 1007), ("message_too_big", 1009)]
    assert text == want


def test_sessions_at_once_each_get_their_own_streams_transcript(transcriber, speech):
    """Three sessions on one model at once (their chunks interleave on the server's threads)
    each get what their Stream alone gives."""
    pieces = [speech, speech[::-1].copy(), speech[len(speech) // 3 :]]
    want = [reference(transcriber, pcm, 24000)[0] for pcm in pieces]
    assert len(set(want)) == 3

    async def scenario(url: str):
        return await asyncio.gather(*(transcribe(url, pcm) for pcm in pieces))

    with tight_server(transcriber, max_streams=3) as url:
        assert run(scenario(ws_url(url))) == want


@pytest.mark.parametrize("lookahead_ms", [0.0, 80.0])
def test_a_server_with_another_lookahead_gives_its_streams_transcript(
    transcriber, speech, lookahead_ms
):
    """`asr serve --lookahead-ms`: each session's stream sees that much audio after each chunk
    (0: plain chunks), and the transcript is what such a Stream gives, not the default's."""
    want = reference(transcriber, speech, 24000, lookahead_ms=lookahead_ms)[0]
    assert want != reference(transcriber, speech, 24000)[0]
    with tight_server(transcriber, lookahead_ms=lookahead_ms) as url:
        assert run(transcribe(ws_url(url), speech)) == want
    with pytest.raises(ValueError, match="look-ahead must be >= 0 ms"):
        LiveOptions(lookahead_ms=-1)
