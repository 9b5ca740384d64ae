"""What the serving tests share: speech to transcribe and `asr serve` run as a real process."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.corpora.espeak import ESPEAK_SAMPLE_RATE, PROBE_SENTENCES
from asr.corpora.espeak import speak as espeak_speak

MODEL = "demo-synthetic-char"  # the shipped bundle: it hears words in eSpeak NG speech
KEY = "sk-test-key"
SENTENCES = list(PROBE_SENTENCES)
RATE = ESPEAK_SAMPLE_RATE  # 22050 Hz: the server resamples it, as it would any upload


def speak(texts: list[str], pause: float = 0.4) -> np.ndarray:
    """eSpeak NG saying `texts`, `pause` seconds apart: float32 at 22050 Hz (skips the test
    where no synthesizer works)."""
    try:
        return espeak_speak(texts, pause)
    except RuntimeError as err:
        pytest.skip(str(err))


def speech_files(folder: Path) -> dict[str, Path]:
    """short (one sentence) and long (about 45 s: three 20 s chunks) WAV files."""
    short = speak(SENTENCES[:1])
    long = speak(SENTENCES * 2)
    files = {name: folder / f"{name}.wav" for name in ("short", "long")}
    soundfile.write(files["short"], short, RATE, subtype="PCM_16")
    soundfile.write(files["long"], long[: round(45 * RATE)], RATE, subtype="PCM_16")
    return files


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    """Poll `condition` until it is true; fail naming `what` after `timeout` seconds (a deadline
    for a test that would otherwise hang, never a measure of speed)."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            pytest.fail(f"{what}: not so after {timeout:g} s")
        time.sleep(0.02)


@contextlib.contextmanager
def serve_process(
    folder: Path, args: list[str], env: dict[str, str] | None = None
) -> Iterator[str]:
    """`asr serve ARGS --port 0` in a subprocess; yields its URL once it answers /health."""
    import httpx

    log = folder / "server.log"
    command = [sys.executable, "-c", "import sys; from asr.cli import main; sys.exit(main())",
               "serve", *args, "--port", "0"]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})  # fmt: skip
    try:
        url = _wait_for_url(process, log)
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, f"{url}/health answers")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_url(process: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        found = re.search(r"^asr serve: (http://\S+)", log.read_text(), re.MULTILINE)
        if found:
            return found[1]
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"asr serve did not start:\n{log.read_text()}")


@contextlib.contextmanager
def app_server(workers, limits=None, **options) -> Iterator[str]:
    """`build_app(workers, limits, **options)` on a free loopback port, served by uvicorn on a
    thread of this process (it starts in a fraction of the time `asr serve` takes); yields its
    URL."""
    import threading

    import uvicorn

    from asr.cli.serve import listen
    from asr.serving.app import build_app

    sock = listen("127.0.0.1", 0)
    app = build_app(workers, limits, **options)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the server started")
    assert thread.is_alive(), "the server stopped"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
