"""`asr serve` over real HTTP on a loopback port: every response format against the transcript
the `Transcriber` gives for the same file, OpenAI's own client library, bad requests (one clear
error each, and the server goes on serving), API keys, the upload limit, the bounded queue, the
time limit (a gate in the workers, not the speed of the machine, decides when a job finishes),
uploads admitted before their body and written once, the Host and Origin checks, any model name
on a one-model server, and the workers' jobs on the engine (words as they settle, a stop between
steps, the server's chunking). The page is tested in Chromium in
tests/test_serve_page.py.

The main server is the real command (`asr serve` in a subprocess); the servers with tight limits
run the same application in this process, where they start in a fraction of the time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="asr serve needs the serve extra: pip install 'asr[serve]'")
import httpx
import openai
from serving_helpers import KEY, MODEL, app_server, serve_process, speech_files, wait_until

import asr
from asr.audio import AudioError
from asr.checkpoint import bundle_path
from asr.cli import main
from asr.cli.serve import listen
from asr.inference.engine import Stopped
from asr.inference.formats import format_result, subtitle_cues
from asr.inference.options import ChunkingOptions
from asr.inference.transcribe import Result, Word
from asr.serving.app import ServerLimits
from asr.serving.workers import Job, ModelWorkers

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
    folder = tmp_path_factory.mktemp("server")
    (folder / "keys.txt").write_text("sk-file-one\n\n  sk-file-two  \n")
    second = f"second={bundle_path(MODEL)}"
    args = ["--model", MODEL, "--model", second, "--api-key", KEY, "--max-upload-mb", "2",
            "--threads", "2", "--api-key-file", str(folder / "keys.txt"),
            "--allowed-host", "asr.example", "--cors-origin", "http://app.example"]  # fmt: skip
    with serve_process(folder, args, {"ASR_API_KEYS": ENV_KEYS}) as url:
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
                      "queued": 0, "uploading": 0, "queue_size": 16}  # fmt: skip


@pytest.mark.parametrize("key", [KEY, "sk-env-one", "sk-env-two", "sk-file-one", "sk-file-two"])
def test_keys_from_the_flag_the_key_file_and_the_environment_are_accepted(server, key):
    response = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_the_command_serves_allowed_hosts_and_cors_origins_only(server):
    keyed = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{server}/v1/models", headers={**keyed, "Host": "asr.example:443"}
                     ).status_code == 200  # fmt: skip
    assert httpx.get(f"{server}/v1/models", headers={**keyed, "Host": "other.example"}
                     ).status_code == 421  # fmt: skip
    allowed = httpx.get(f"{server}/v1/models", headers={**keyed, "Origin": "http://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.get(f"{server}/v1/models", headers={**keyed, "Origin": "http://b.example"})
    assert other.status_code == 403


def test_the_api_key_flag_warns_that_ps_shows_it(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "visible to other users in ps" in text
    assert "--api-key-file" in text and "ASR_API_KEYS" in text


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


class Gate:
    """ModelWorkers' `before_step` hook as the tests use it: every step of every job waits at
    the gate until the test opens it or the job is stopped (past its deadline, cancelled by its
    request). The test, not the speed of the machine, decides when work finishes.

    `held` lists the jobs in the order they reached the gate; `steps` counts the steps asked
    for. Leaving the `with` block opens the gate, so no worker is left waiting."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.held: list[Job] = []
        self.steps = 0
        self._lock = threading.Lock()

    def __call__(self, job: Job) -> None:
        with self._lock:
            self.steps += 1
            if not any(j is job for j in self.held):
                self.held.append(job)
        while not (self.opened.is_set() or job.should_stop()):
            self.opened.wait(0.01)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        self.opened.set()


def wait_for_health(url: str, **state) -> dict:
    health: dict = {}

    def reached() -> bool:
        health.update(httpx.get(f"{url}/health").json())
        return all(health[k] == v for k, v in state.items())

    wait_until(reached, f"/health shows {state}")
    return health


@pytest.fixture
def one_worker(transcriber):
    """One worker decoding with the module's transcriber, a queue of one, a closed gate."""
    with Gate() as gate:
        yield ModelWorkers([{MODEL: transcriber}], queue_size=1, before_step=gate), gate


def test_a_full_queue_answers_503_with_retry_after_and_recovers(one_worker, audio, expected):
    workers, gate = one_worker
    with (
        app_server(workers, ServerLimits(request_timeout=120)) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        results: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: results.append(post(client, audio["short"])))
        files = {"file": audio["short"].read_bytes()}
        with client.stream("POST", URL, files=files, data={"stream": "true"}) as running:
            wait_for_health(url, busy=1)  # held at the gate: the only worker
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
        # The first client left while its job was held: the job stops, and the waiting one
        # reaches the worker (still held: the gate is closed).
        wait_until(lambda: len(gate.held) == 2, "the waiting job reached the worker")
        assert gate.held[0].cancelled.is_set() and not gate.held[1].should_stop()
        gate.opened.set()
        waiting.join(timeout=60)
        assert results[0].status_code == 200
        assert results[0].json()["text"] == expected["short"].text
        wait_for_health(url, busy=0, queued=0)


def test_a_request_past_its_time_limit_gets_504_and_frees_its_worker(one_worker, audio, expected):
    workers, gate = one_worker
    with (
        app_server(workers, ServerLimits(request_timeout=3)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        late = post(client, audio["short"])  # held at the gate past its deadline
        assert late.status_code == 504, late.text
        assert late.json()["error"]["message"] == (
            "the transcription did not finish within the server's time limit of 3 s"
        )
        wait_for_health(url, busy=0)
        assert gate.steps == 1  # stopped before its next step, not after the last
        gate.opened.set()
        ok = post(client, audio["short"])
        assert ok.status_code == 200 and ok.json()["text"] == expected["short"].text


# --- uploads: admitted before their body, written once (servers in this process) -----------

MB = 2**20
BOUNDARY = "asr-test-boundary"
HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"'
        "\r\nContent-Type: audio/wav\r\n\r\n").encode()  # fmt: skip
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def held_upload(url: str, size: int, hold: int, release: threading.Event) -> httpx.Response:
    """POST a multipart body of exactly `size` bytes (zeros in the field 'file'); all but the
    last `hold` bytes of the file are sent at once, the rest once `release` is set."""
    data = size - len(HEAD) - len(TAIL)

    def body():
        yield HEAD
        sent = 0
        while sent < data - hold:
            piece = min(2**16, data - hold - sent)
            yield bytes(piece)
            sent += piece
        release.wait(120)
        yield bytes(hold) + TAIL

    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
               "Content-Length": str(size)}  # fmt: skip
    return httpx.post(f"{url}{URL}", content=body(), headers=headers, timeout=120)


def answer_to_head(url: str, size: int, expect_continue: bool = False) -> bytes:
    """Send only the head of a multipart POST that announces `size` bytes, never its body;
    the server's answer up to the end of its headers (b"" when it gives none in 30 s)."""
    port = int(url.rsplit(":", 1)[1])
    head = (f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {size}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            + ("Expect: 100-continue\r\n" if expect_continue else "") + "\r\n")  # fmt: skip
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        with contextlib.suppress(TimeoutError):
            while b"\r\n\r\n" not in answer and (piece := sock.recv(65536)):
                answer += piece
    return answer


def upload_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_uploads_at_the_limit_go_once_into_their_own_files_within_the_disk_bound(
    one_worker, tmp_path
):
    """workers + queue_size uploads of the largest size, held mid-body: each is written once,
    straight into its own file under upload_dir, so the disk never holds more than
    (workers + queue_size) x max_upload_bytes of them."""
    workers, _ = one_worker
    limit, hold = 2 * MB, 64 * 2**10
    limits = ServerLimits(max_upload_bytes=limit, request_timeout=120, upload_dir=tmp_path)
    release = threading.Event()
    answers: list[httpx.Response] = []
    with app_server(workers, limits) as url:
        uploads = [threading.Thread(target=lambda: answers.append(held_upload(url, limit, hold,
                                                                              release)))
                   for _ in range(workers.capacity)]  # fmt: skip
        try:
            for upload in uploads:
                upload.start()
            arrived = limit - len(HEAD) - len(TAIL) - hold

            def all_arrived() -> bool:
                files = upload_files(tmp_path)
                return len(files) == workers.capacity and all(
                    f.stat().st_size >= arrived - 2**16 for f in files
                )

            wait_until(all_arrived, f"{workers.capacity} uploads in their files mid-body")
            files = upload_files(tmp_path)
            assert sorted(f.name for f in files) == ["upload.wav"] * workers.capacity
            assert len({f.parent for f in files}) == workers.capacity  # a folder each
            assert sum(f.stat().st_size for f in files) <= workers.capacity * limit
            assert wait_for_health(url)["uploading"] == workers.capacity
        finally:
            release.set()
            for upload in uploads:
                upload.join(timeout=120)
        assert [a.status_code for a in answers] == [400] * workers.capacity
        assert all("not a readable audio file" in a.json()["error"]["message"] for a in answers)
        wait_until(lambda: not any(tmp_path.iterdir()), "every upload removed")
        assert wait_for_health(url)["uploading"] == 0


def test_a_request_beyond_capacity_gets_503_before_it_sends_its_body(one_worker, audio):
    """Uploads in progress take places as jobs do: with every place taken by an upload still
    arriving, one more request is refused from its headers alone (no 100 Continue first)."""
    workers, gate = one_worker
    release = threading.Event()
    answers: list[httpx.Response] = []
    with app_server(workers, ServerLimits(request_timeout=120)) as url:
        uploads = [threading.Thread(target=lambda: answers.append(held_upload(url, MB, MB // 2,
                                                                              release)))
                   for _ in range(workers.capacity)]  # fmt: skip
        try:
            for upload in uploads:
                upload.start()
            wait_for_health(url, uploading=workers.capacity)
            for expect_continue in (False, True):
                answer = answer_to_head(url, MB, expect_continue).decode()
                assert answer.startswith("HTTP/1.1 503 "), answer
                assert "\r\nretry-after: " in answer.lower()
        finally:
            release.set()
            for upload in uploads:
                upload.join(timeout=120)
        assert [a.status_code for a in answers] == [400] * workers.capacity
        gate.opened.set()
        with httpx.Client(base_url=url, timeout=60) as client:
            assert post(client, audio["short"]).status_code == 200  # the places are free again


# --- who may call: Host and Origin (servers in this process) ---------------------------------


def test_a_request_naming_another_host_gets_421_naming_it(one_worker, audio):
    """DNS rebinding: a page of rebound.example whose name now points at 127.0.0.1 reaches the
    server with its own name in Host; any port of the server's own names is fine."""
    workers, gate = one_worker
    gate.opened.set()
    with app_server(workers) as url, httpx.Client(base_url=url, timeout=60) as client:
        for host in ("rebound.example:8000", "rebound.example", "127.0.0.2"):
            refused = client.get("/v1/models", headers={"Host": host})
            assert refused.status_code == 421, (host, refused.text)
            error = refused.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["message"].startswith(f"Host {host!r} is not a name of this server")
            assert "\n" not in error["message"] and error["code"] == "host_not_allowed"
        with open(audio["short"], "rb") as f:
            upload = client.post(URL, files={"file": f}, headers={"Host": "rebound.example"})
        assert upload.status_code == 421
        for host in ("127.0.0.1:1", "localhost", "LOCALHOST:9999", f"{url[7:]}"):
            assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host


def test_a_cross_origin_request_gets_403_naming_its_origin(one_worker, audio):
    """A page of another origin can POST a form (no CORS preflight): refused. The server's own
    page (same scheme, host and port) is not."""
    workers, gate = one_worker
    gate.opened.set()
    with app_server(workers) as url, httpx.Client(base_url=url, timeout=60) as client:
        port = url.rsplit(":", 1)[1]
        for origin in ("http://evil.example", f"http://127.0.0.1:{int(port) + 1}",
                       f"https://127.0.0.1:{port}", "null"):  # fmt: skip
            with open(audio["short"], "rb") as f:
                refused = client.post(URL, files={"file": f}, headers={"Origin": origin})
            assert refused.status_code == 403, (origin, refused.text)
            error = refused.json()["error"]
            assert error["message"].startswith(f"Origin {origin!r} may not use this server")
            assert error["code"] == "origin_not_allowed" and "\n" not in error["message"]
            assert "access-control-allow-origin" not in refused.headers
        for own in (url, f"http://localhost:{port}"):  # the Host it was reached by
            with open(audio["short"], "rb") as f:
                same = client.post(URL, files={"file": f}, headers={"Origin": own,
                                                                    "Host": own[7:]})  # fmt: skip
            assert same.status_code == 200, same.text


def test_an_allowed_cors_origin_gets_cors_headers(one_worker, audio):
    workers, gate = one_worker
    gate.opened.set()
    allowed = "http://app.example:3000"
    with (
        app_server(workers, cors_origins=[allowed + "/"]) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        preflight = client.options(URL, headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        })  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        assert "POST" in preflight.headers["access-control-allow-methods"]
        with open(audio["short"], "rb") as f:
            answer = client.post(URL, files={"file": f}, headers={"Origin": allowed})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == allowed
        refused = client.options(URL, headers={"Origin": "http://app.example:3001",
                                               "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert refused.status_code == 403


# --- jobs on the engine (workers in this process) ------------------------------------------


def run_job(workers: ModelWorkers, path: Path) -> list[tuple[str, object]]:
    """Submit a job for `path` to started `workers`; its events, up to and with the last."""
    events: list[tuple[str, object]] = []
    ended = threading.Event()

    def on_event(kind: str, value: object) -> None:
        events.append((kind, value))
        if kind != "words":
            ended.set()

    workers.submit(Job(MODEL, path, math.inf, on_event))
    assert ended.wait(120), f"the job ended with no result: {events}"
    return events


@contextlib.contextmanager
def started(workers: ModelWorkers):
    workers.start()
    try:
        yield workers
    finally:
        workers.stop()


def test_a_job_gives_the_transcribers_result_and_settles_words_early(transcriber, audio):
    """45 s in 20 s windows, two windows a step (the server's chunking): two steps, words handed
    out after each, and the same result as `Transcriber.transcribe` with that chunking."""
    chunking = ChunkingOptions(batch_seconds=40)
    whole = transcriber.transcribe(audio["long"], chunking)[0]
    with started(ModelWorkers([{MODEL: transcriber}], 0, chunking=chunking)) as workers:
        events = run_job(workers, audio["long"])
    *handed, (kind, result) = events
    assert kind == "done" and result.words == whole.words and result.text == whole.text
    assert result.duration == whole.duration
    assert [k for k, _ in handed] == ["words"] * 3
    assert [w for _, words in handed for w in words] == whole.words


def test_a_job_transcribes_with_the_servers_chunking(transcriber, audio):
    """10 s windows give another transcript than the default 20 s: the workers use theirs."""
    chunking = ChunkingOptions(chunk_seconds=10, chunk_overlap=2)
    windowed = transcriber.transcribe(audio["long"], chunking)[0]
    default = transcriber.transcribe(audio["long"])[0]
    assert [w.start for w in windowed.words] != [w.start for w in default.words]
    with started(ModelWorkers([{MODEL: transcriber}], 0, chunking=chunking)) as workers:
        kind, result = run_job(workers, audio["long"])[-1]
    assert kind == "done" and result.words == windowed.words


def test_a_job_stops_between_steps(transcriber, audio):
    """The engine asks before each step; `before_step` cancels the job before the second."""
    steps: list[Job] = []

    def before_step(job: Job) -> None:
        steps.append(job)
        if len(steps) > 1:
            job.cancelled.set()

    chunking = ChunkingOptions(batch_seconds=40)
    workers = ModelWorkers([{MODEL: transcriber}], 0, before_step=before_step, chunking=chunking)
    with started(workers):
        events = run_job(workers, audio["long"])
    assert [kind for kind, _ in events] == ["words", "error"] and len(steps) == 2
    assert isinstance(events[-1][1], Stopped)


def test_a_file_the_engine_cannot_read_is_an_audio_error(transcriber, tmp_path):
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio\n")
    with started(ModelWorkers([{MODEL: transcriber}], 0)) as workers:
        [(kind, err)] = run_job(workers, notes)
    assert kind == "error" and isinstance(err, AudioError)
    assert str(err) == transcriber.transcribe(notes)[0].error


# --- any model name on a one-model server ----------------------------------------------------


def test_a_one_model_server_answers_openais_model_names(one_worker, audio, expected, caplog):
    """Code written for OpenAI sends model="whisper-1": one model serves it, and the model list
    gives its real id."""
    workers, gate = one_worker
    gate.opened.set()
    caplog.set_level(logging.DEBUG, logger="asr.serving.app")
    with app_server(workers) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
        for name in ("whisper-1", "gpt-4o-transcribe", MODEL):
            with open(audio["short"], "rb") as f:
                answer = client.audio.transcriptions.create(model=name, file=f)
            assert answer.text == expected["short"].text
    aliases = [r.getMessage() for r in caplog.records if r.name == "asr.serving.app"]
    assert aliases == [
        f"model {name!r} asked for: transcribing with {MODEL!r}, the only model served"
        for name in ("whisper-1", "gpt-4o-transcribe")
    ]


def test_a_server_of_several_models_refuses_an_unknown_name_listing_them(server, audio):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    with open(audio["short"], "rb") as f, pytest.raises(openai.NotFoundError) as refused:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert refused.value.body["message"] == (
        f"model 'whisper-1' is not served here; served: {MODEL}, second"
    )
    assert refused.value.body["code"] == "model_not_found"


# --- the command ---------------------------------------------------------------------------


def test_serve_refuses_bad_options_with_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing.pt"), "--port", "0"]) == 2
    assert main(["serve", "--model", "a=x.pt", "--model", "a=y.pt"]) == 2
    keys = tmp_path / "keys.txt"
    assert main(["serve", "--model", MODEL, "--api-key-file", str(keys)]) == 2
    keys.write_text("\n  \n")
    assert main(["serve", "--model", MODEL, "--api-key-file", str(keys)]) == 2
    assert main(["serve", "--model", MODEL, "--upload-dir", str(tmp_path / "none")]) == 2
    assert main(["serve", "--model", MODEL, "--chunk-seconds", "4", "--chunk-overlap", "4"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 6 and all(e.startswith("asr: error: ") for e in errors)
    assert "missing.pt" in errors[0]
    assert errors[1] == "asr: error: two models are named 'a': name them with NAME=MODEL"
    assert errors[2].startswith(f"asr: error: --api-key-file {keys}: cannot read it: ")
    assert errors[3] == f"asr: error: --api-key-file {keys} holds no key (one key per line)"
    assert errors[4] == f"asr: error: upload folder {tmp_path / 'none'} is not a folder"
    assert errors[5] == "asr: error: need 0 <= chunk_overlap < chunk_seconds, got 4.0 and 4.0"


def test_serve_gives_the_workers_its_chunking_and_decoding_flags(monkeypatch, capsys):
    """The flags generated from ChunkingOptions and DecodingOptions reach ModelWorkers.load."""
    given = {}

    def load(*args, **kwargs):
        given.update(decoding=args[4], chunking=kwargs["chunking"])
        raise ValueError("loaded nothing")

    monkeypatch.setattr(ModelWorkers, "load", load)
    flags = ["--batch-seconds", "30", "--chunk-seconds", "10", "--chunk-overlap", "2",
             "--beam-size", "3", "--no-log-add"]  # fmt: skip
    assert main(["serve", "--model", MODEL, *flags]) == 2
    assert capsys.readouterr().err.strip() == "asr: error: loaded nothing"
    assert given["chunking"] == ChunkingOptions(batch_seconds=30, chunk_seconds=10,
                                                chunk_overlap=2)  # fmt: skip
    assert (given["decoding"].beam_size, given["decoding"].log_add) == (3, False)


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
