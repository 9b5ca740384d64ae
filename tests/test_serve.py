"""`asr serve` over real HTTP on a loopback port: every response format against the transcript
the `Transcriber` gives for the same file, OpenAI's own client library, bad requests (one clear
error each, and the server goes on serving), API keys, the upload limit, the bounded queue, the
time limit, and the step-by-step transcription behind them. The page is tested in Chromium in
tests/test_serve_page.py.

The main server is the real command (`asr serve` in a subprocess); the servers with tight limits
run the same application in this process, where they start in a fraction of the time.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="asr serve needs the serve extra: pip install 'asr[serve]'")
import httpx
import openai
import uvicorn
from serving_helpers import KEY, MODEL, serve_process, speech_files

import asr
from asr.checkpoint import bundle_path
from asr.cli import main
from asr.cli.serve import listen
from asr.inference.formats import format_result, subtitle_cues
from asr.inference.transcribe import Result, Word
from asr.serving.app import ServerLimits, build_app
from asr.serving.stepwise import Stopped, transcribe_stepwise
from asr.serving.workers import ModelWorkers

ENV_KEYS = "sk-env-one, sk-env-two"
URL = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    return speech_files(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="module")
def transcriber():
    return asr.load_model(MODEL)


@pytest.fixture(scope="module")
def expected(transcriber, audio):
    """What the Transcriber (and so `asr transcribe`) makes of each file."""
    # One file a call, as the server decodes them (the batch then holds that file's chunks only).
    results = {name: transcriber.transcribe(audio[name])[0] for name in ("short", "long")}
    assert all(r.error is None for r in results.values())
    assert len(results["short"].words) >= 3, "the model hears no words: nothing would be compared"
    return results


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    second = f"second={bundle_path(MODEL)}"
    args = ["--model", MODEL, "--model", second, "--api-key", KEY, "--max-upload-mb", "2",
            "--threads", "2"]  # fmt: skip
    with serve_process(tmp_path_factory.mktemp("server"), args, {"ASR_API_KEYS": ENV_KEYS}) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as client:  # fmt: skip
        yield client


def post(client: httpx.Client, path: Path, **fields) -> httpx.Response:
    with open(path, "rb") as f:
        return client.post(URL, files={"file": (path.name, f, "audio/wav")},
                           data={"model": MODEL, **fields})  # fmt: skip


def word_dicts(result) -> list[dict]:
    return [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
             "confidence": round(w.confidence, 3)} for w in result.words]  # fmt: skip


# --- response formats ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_each_response_format_carries_the_transcribers_transcript(client, audio, expected, fmt):
    response = post(client, audio["short"], response_format=fmt,
                    **{"timestamp_granularities[]": ["word", "segment"]})  # fmt: skip
    assert response.status_code == 200, response.text
    result = expected["short"]
    if fmt in ("text", "srt", "vtt"):
        assert response.text == format_result(result, "txt" if fmt == "text" else fmt)
        assert response.headers["content-type"].startswith("text/")
        return
    body = response.json()
    usage = {"type": "duration", "seconds": math.ceil(result.duration)}
    if fmt == "json":
        assert body == {"text": result.text, "usage": usage}
        return
    assert {k: body[k] for k in ("task", "duration", "text", "usage")} == {
        "task": "transcribe", "duration": round(result.duration, 3), "text": result.text,
        "usage": usage,
    }  # fmt: skip
    assert body["words"] == word_dicts(result)
    cues = subtitle_cues(result.words)
    assert [s["text"] for s in body["segments"]] == [" ".join(w.word for w in c) for c in cues]
    assert [s["start"] for s in body["segments"]] == [round(c[0].start, 3) for c in cues]


def test_verbose_json_gives_segments_by_default_and_words_when_asked(client, audio, expected):
    default = post(client, audio["short"], response_format="verbose_json").json()
    assert "segments" in default and "words" not in default
    words_only = post(client, audio["short"], response_format="verbose_json",
                      **{"timestamp_granularities[]": "word"}).json()  # fmt: skip
    assert "segments" not in words_only and words_only["words"] == word_dicts(expected["short"])


def test_a_long_file_gets_the_transcript_of_the_transcriber(client, audio, expected):
    """45 s: three overlapping chunks, stitched by the server as the Transcriber stitches them."""
    response = post(client, audio["long"], response_format="verbose_json",
                    **{"timestamp_granularities[]": "word"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["words"] == word_dicts(expected["long"])
    assert expected["long"].duration > 40


def test_the_second_model_is_served_under_its_name(client, audio, expected):
    assert post(client, audio["short"], model="second").json()["text"] == expected["short"].text


# --- OpenAI's client library ---------------------------------------------------------------


def test_the_openai_client_lists_models_and_transcribes(server, audio, expected):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL, "second"]
    with open(audio["short"], "rb") as f:
        assert (
            client.audio.transcriptions.create(model=MODEL, file=f).text == expected["short"].text
        )
    with open(audio["short"], "rb") as f:
        verbose = client.audio.transcriptions.create(
            model=MODEL, file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert [(w.word, w.start, w.end) for w in verbose.words] == [
        (w["word"], w["start"], w["end"]) for w in word_dicts(expected["short"])
    ]
    assert verbose.duration == pytest.approx(expected["short"].duration, abs=1e-3)
    with open(audio["short"], "rb") as f:
        srt = client.audio.transcriptions.create(model=MODEL, file=f, response_format="srt")
    assert srt == format_result(expected["short"], "srt")


def test_the_openai_client_streams_words_as_they_settle(server, audio, expected):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    with open(audio["long"], "rb") as f:
        events = list(client.audio.transcriptions.create(model=MODEL, file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2  # one per chunk whose words settled
    assert "".join(deltas) == expected["long"].text
    assert events[-1].type == "transcript.text.done" and events[-1].text == expected["long"].text


# --- models, health, keys ------------------------------------------------------------------


def test_models_and_health(server, client):
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL, "second"]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert client.get("/v1/models/nope").status_code == 404
    health = httpx.get(f"{server}/health").json()  # no key needed
    assert health == {"status": "ok", "models": [MODEL, "second"], "workers": 1, "busy": 0,
                      "queued": 0, "queue_size": 16}  # fmt: skip


@pytest.mark.parametrize("key", [KEY, "sk-env-one", "sk-env-two"])
def test_keys_from_the_flag_and_the_environment_are_accepted(server, key):
    response = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_the_page_and_health_need_no_key(server):
    assert httpx.get(f"{server}/health").status_code == 200
    page = httpx.get(server)
    assert page.status_code == 200 and "<title>asr" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{server}/page/app.js").status_code == 200


def test_subtitles_are_written_by_the_servers_writer(client, expected):
    """POST /subtitles (the page's downloads) with verbose_json's words: `asr transcribe`'s SRT
    and VTT of those words."""
    words = word_dicts(expected["short"])
    rounded = Result(id="x", path=None, words=[Word(**w) for w in words])
    for fmt in ("srt", "vtt"):
        response = client.post("/subtitles", json={"words": words, "format": fmt})
        assert response.status_code == 200, response.text
        assert response.text == format_result(rounded, fmt)
    bad = client.post("/subtitles", json={"words": words, "format": "docx"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"


# --- bad requests --------------------------------------------------------------------------


def chunked_body(size: int, headers: dict[str, str]) -> dict:
    """A multipart body with a file of `size` bytes, sent chunked (no Content-Length)."""
    boundary = "asr-test-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"'
            "\r\nContent-Type: audio/wav\r\n\r\n").encode()  # fmt: skip

    def body():
        yield head
        for _ in range(size // 2**16):
            yield bytes(2**16)
        yield f"\r\n--{boundary}--\r\n".encode()

    content_type = f"multipart/form-data; boundary={boundary}"
    return {"content": body(), "headers": {"Content-Type": content_type, **headers}}


BAD_REQUESTS = [
    "no file", "not multipart", "not audio", "empty file", "truncated file", "unknown model",
    "unknown response format", "unknown granularity", "stream with subtitles",
    "oversized upload", "oversized chunked upload", "wrong API key", "no API key",
]  # fmt: skip


def bad_request(case: str, short: bytes) -> tuple[dict, int, str | None, str]:
    """(httpx request arguments, status, param, part of the message) of one bad request."""
    keyed = {"Authorization": f"Bearer {KEY}"}

    def form(name="short.wav", data=short, key=KEY, **fields):
        return {"files": {"file": (name, data)}, "data": {"model": MODEL, **fields},
                "headers": {"Authorization": f"Bearer {key}"}}  # fmt: skip

    too_large = "the upload is larger than this server's limit of 2 MB"
    cases = {
        "no file": ({"files": {"audio": ("a.wav", short)}, "headers": keyed}, 400, "file",
                    "no audio file: send it as a file in the multipart field 'file'"),
        "not multipart": ({"json": {"model": MODEL}, "headers": keyed}, 400, "file",
                          "send a multipart/form-data body with the audio in the field 'file'"),
        "not audio": (form("notes.txt", b"these are notes, not audio\n" * 20), 400, "file",
                      "cannot read audio file 'notes.txt': not a readable audio file"),
        "empty file": (form("empty.wav", b""), 400, "file",
                       "cannot read audio file 'empty.wav': file is empty"),
        "truncated file": (form("cut.wav", short[: len(short) // 2]), 400, "file",
                           "cannot read audio file 'cut.wav': truncated"),
        "unknown model": (form(model="whisper-9"), 404, "model",
                          f"model 'whisper-9' is not served here; served: {MODEL}, second"),
        "unknown response format": (form(response_format="xml"), 400, "response_format",
                                    "response_format 'xml' is not one of json, text, srt, vtt"),
        "unknown granularity": (form(**{"timestamp_granularities[]": "letter"}), 400,
                                "timestamp_granularities[]", "'letter' is not one of segment"),
        "stream with subtitles": (form(stream="true", response_format="srt"), 400, "stream",
                                  "stream=true sends text events"),
        "oversized upload": (form("big.wav", bytes(3 * 2**20)), 413, None, too_large),
        "oversized chunked upload": (chunked_body(3 * 2**20, keyed), 413, None, too_large),
        "wrong API key": (form(key="sk-wrong"), 401, None, "incorrect API key"),
        "no API key": ({**form(), "headers": {}}, 401, None, "this server needs an API key"),
    }  # fmt: skip
    assert list(cases) == BAD_REQUESTS
    return cases[case]


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_gets_one_clear_error_and_the_server_goes_on(
    server, client, audio, expected, case
):
    arguments, status, param, message = bad_request(case, audio["short"].read_bytes())
    with httpx.Client(base_url=server, timeout=60) as plain:
        response = plain.post(URL, **arguments)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"] and error["param"] == param
    assert "\n" not in error["message"] and "asr-serve-" not in error["message"]  # no paths
    good = post(client, audio["short"])
    assert good.status_code == 200 and good.json()["text"] == expected["short"].text


def test_an_unknown_route_answers_in_the_error_shape(client):
    response = client.get("/v1/audio/translations")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "GET /v1/audio/translations: Not Found"


# --- queue and time limit (servers in this process) ----------------------------------------


@contextlib.contextmanager
def app_server(workers: ModelWorkers, limits: ServerLimits):
    """The application on a free loopback port, served by uvicorn on a thread of this process."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(workers, limits), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    began = time.monotonic()
    while not server.started:
        assert thread.is_alive() and time.monotonic() - began < 30, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for_health(url: str, timeout: float = 30, **state) -> dict:
    began = time.monotonic()
    while True:
        health = httpx.get(f"{url}/health").json()
        if all(health[k] == v for k, v in state.items()):
            return health
        assert time.monotonic() - began < timeout, f"health never reached {state}: {health}"
        time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after_and_recovers(audio, expected):
    workers = ModelWorkers.load({MODEL: MODEL}, workers=1, queue_size=1)
    with (
        app_server(workers, ServerLimits(request_timeout=120)) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        files = {"file": audio["ten_minutes"].read_bytes()}
        results: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: results.append(post(client, audio["short"])))
        with client.stream("POST", URL, files=files, data={"stream": "true"}) as running:
            wait_for_health(url, busy=1)  # the long file holds the only worker
            waiting.start()
            wait_for_health(url, busy=1, queued=1)
            refused = post(client, audio["short"])
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "server_busy"
            assert refused.json()["error"]["message"].startswith(
                "the server is busy: every worker is transcribing and the queue of 1 is full"
            )
            assert running.status_code == 200
        # The client of the long file left: its job stops and the waiting one runs.
        waiting.join(timeout=60)
        assert results[0].status_code == 200
        assert results[0].json()["text"] == expected["short"].text
        wait_for_health(url, busy=0, queued=0)


def test_a_request_past_its_time_limit_gets_504_and_frees_its_worker(audio, expected):
    workers = ModelWorkers.load({MODEL: MODEL}, workers=1, queue_size=1)
    with (
        app_server(workers, ServerLimits(request_timeout=3)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        began = time.monotonic()
        late = post(client, audio["ten_minutes"])
        assert late.status_code == 504, late.text
        assert late.json()["error"]["message"] == (
            "the transcription did not finish within the server's time limit of 3 s"
        )
        assert time.monotonic() - began < 10
        wait_for_health(url, timeout=10, busy=0)  # stopped at its next step, not at the end
        ok = post(client, audio["short"])
        assert ok.status_code == 200 and ok.json()["text"] == expected["short"].text


# --- step by step --------------------------------------------------------------------------


def test_stepwise_transcription_equals_the_transcriber_and_settles_words_early(transcriber, audio):
    """45 s in 20 s chunks, two chunks a step: two steps, words handed out after each."""
    whole = transcriber.transcribe(audio["long"], batch_seconds=40)[0]
    handed: list[list] = []
    result = transcribe_stepwise(transcriber, audio["long"], on_words=handed.append,
                                 batch_seconds=40)  # fmt: skip
    assert result.words == whole.words and result.text == whole.text
    assert result.duration == whole.duration
    assert len(handed) == 3 and [w for words in handed for w in words] == whole.words


def test_stepwise_transcription_stops_between_steps(transcriber, audio):
    handed: list[list] = []
    asked = []

    def should_stop() -> bool:
        asked.append(len(handed))
        return len(asked) > 1  # let the first step run, stop before the second

    with pytest.raises(Stopped):
        transcribe_stepwise(transcriber, audio["long"], on_words=handed.append,
                            should_stop=should_stop, batch_seconds=40)  # fmt: skip
    assert asked == [0, 1] and len(handed) == 1


# --- the command ---------------------------------------------------------------------------


def test_serve_refuses_bad_options_with_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing.pt"), "--port", "0"]) == 2
    assert main(["serve", "--model", "a=x.pt", "--model", "a=y.pt"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("asr: error: ") for e in errors)
    assert "missing.pt" in errors[0]
    assert errors[1] == "asr: error: two models are named 'a': name them with NAME=MODEL"


def test_serve_refuses_a_port_in_use(capsys):
    with listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--model", MODEL, "--port", str(port)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"asr: error: cannot listen on 127.0.0.1:{port}: ")


def test_the_sse_stream_is_plain_data_events(client, audio, expected):
    """What a client without OpenAI's library reads: `data: {json}` events, a blank line each."""
    with open(audio["short"], "rb") as f:
        response = client.post(URL, files={"file": ("short.wav", f)},
                               data={"model": MODEL, "stream": "true"})  # fmt: skip
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(block.removeprefix("data: ")) for block in response.text.split("\n\n")
              if block]  # fmt: skip
    assert events[-1] == {"type": "transcript.text.done", "text": expected["short"].text,
                          "usage": {"type": "duration",
                                    "seconds": math.ceil(expected["short"].duration)}}  # fmt: skip
    assert "".join(e["delta"] for e in events[:-1]) == expected["short"].text
