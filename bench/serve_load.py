"""`asr serve` under load over loopback: concurrent clients sending 10 s files.

Two phases, each against a fresh `asr serve` process with the shipped `demo-synthetic-char`
model (greedy decoding, word timings):

1. below the queue limit: workers + queue size >= clients, so every request is admitted and
   every one must succeed. Measured: throughput (seconds of audio transcribed per second of
   wall time), latency p50/p95/p99 (upload to full answer), the server's peak resident memory.
2. above it: the same clients against a server with a small queue. Every answer must be a 200
   or a clean 503 (Retry-After and OpenAI's error JSON); anything else is a failure.

During both, a prober asks GET /health every 0.2 s and records its slowest answer and every
failure. Bounded in count and time: each client sends `--requests` requests one after the
other, each request has a timeout, a phase has a deadline, and only 127.0.0.1 is contacted.

    .venv/bin/python bench/serve_load.py --output bench/results/serve_load.json

About 1-2 minutes on 2 cores. Needs the serve and demo extras (eSpeak NG speaks the files).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ServeProcess, machine, write_json

MODEL = "demo-synthetic-char"


def make_audio(path: Path, seconds: float = 10.0) -> float:
    """eSpeak NG speech, padded or cut to `seconds`, as a 16 kHz 16-bit WAV file."""
    import torch
    import torchaudio

    from asr.corpora.espeak import ESPEAK_SAMPLE_RATE, PROBE_SENTENCES, speak

    wave = torch.from_numpy(speak(PROBE_SENTENCES[:5], pause_seconds=1 / 3))
    wave = torchaudio.functional.resample(wave, ESPEAK_SAMPLE_RATE, 16000).numpy()
    wave = np.resize(wave, round(seconds * 16000))
    sf.write(path, wave, 16000, subtype="PCM_16")
    return len(wave) / 16000


def start_server(folder: Path, workers: int, queue_size: int, threads: int) -> ServeProcess:
    """`asr serve` with `workers` workers and a queue of `queue_size` on a free loopback port."""
    return ServeProcess(MODEL, ["--workers", str(workers), "--queue-size", str(queue_size),
                                "--threads", str(threads)], folder / f"server-w{workers}-q{queue_size}.log")  # fmt: skip


async def client(http: httpx.AsyncClient, audio: bytes, requests: int, out: list) -> None:
    """Send `requests` transcriptions one after the other; record (status, seconds, detail)."""
    for _ in range(requests):
        began = time.perf_counter()
        try:
            response = await http.post("/v1/audio/transcriptions",
                                       files={"file": ("speech.wav", audio, "audio/wav")},
                                       data={"model": MODEL})  # fmt: skip
            out.append((response.status_code, time.perf_counter() - began, _detail(response)))
        except httpx.HTTPError as err:
            out.append((0, time.perf_counter() - began, f"{type(err).__name__}: {err}"))


def _detail(response: httpx.Response) -> str:
    """'' for a success or a clean 503; otherwise what was wrong with the answer."""
    if response.status_code == 200:
        return "" if response.json().get("text") else "200 without text"
    if response.status_code == 503:
        error = response.json().get("error", {})
        clean = response.headers.get("retry-after", "").isdigit() and error.get("message")
        return "" if clean else f"503 without Retry-After or error JSON: {response.text[:200]}"
    return f"{response.status_code}: {response.text[:200]}"


async def probe_health(url: str, stop: asyncio.Event, out: list) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                ok = (await http.get("/health")).status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((ok, time.perf_counter() - began))
            await asyncio.sleep(0.2)


async def run_phase(url: str, audio: bytes, clients: int, requests: int, deadline: float) -> dict:
    results: list = []
    health: list = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, timeout=deadline, limits=limits) as http:
        prober = asyncio.create_task(probe_health(url, stop, health))
        began = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(client(http, audio, requests, results) for _ in range(clients))),
            deadline,
        )
        wall = time.perf_counter() - began
        stop.set()
        await prober
    return {"results": results, "health": health, "wall_s": wall}


def summarize(phase: dict, audio_seconds: float) -> dict:
    results, health = phase["results"], phase["health"]
    ok = [seconds for status, seconds, _ in results if status == 200]
    latencies = sorted(ok)

    def percentile(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, round(p / 100 * (len(latencies) - 1)))], 3)

    failures = [detail or str(status) for status, _, detail in results
                if detail or status not in (200, 503)]  # fmt: skip
    return {
        "requests": len(results),
        "ok": len(ok),
        "refused_503": sum(status == 503 for status, _, _ in results),
        "failed": len(failures),
        "failures": failures[:5],
        "wall_s": round(phase["wall_s"], 2),
        "audio_s_per_s": round(len(ok) * audio_seconds / phase["wall_s"], 1),
        "latency_s": {"p50": percentile(50), "p95": percentile(95), "p99": percentile(99),
                      "mean": round(statistics.mean(latencies), 3)} if latencies else None,
        "health": {"probes": len(health), "failed": sum(not ok for ok, _ in health),
                   "slowest_s": round(max((s for _, s in health), default=0), 3)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=4, help="per client, one after another")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--small-queue", type=int, default=8, help="queue size of phase 2")
    parser.add_argument("--deadline", type=float, default=300, help="seconds a phase may take")
    parser.add_argument("--output", default="bench/results/serve_load.json")
    args = parser.parse_args()
    report = {"machine": machine(), "args": vars(args), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        audio_seconds = make_audio(folder / "speech.wav")
        audio = (folder / "speech.wav").read_bytes()
        report["audio_s"] = audio_seconds
        phases = {"below_queue_limit": args.clients, "above_queue_limit": args.small_queue}
        for name, queue_size in phases.items():
            server = start_server(folder, args.workers, queue_size, args.threads)
            try:
                idle_mb = server.peak_rss_mb()
                phase = asyncio.run(run_phase(server.url, audio, args.clients, args.requests,
                                              args.deadline))  # fmt: skip
                summary = summarize(phase, audio_seconds)
                summary.update(queue_size=queue_size, workers=args.workers,
                               rss_idle_mb=round(idle_mb), rss_peak_mb=round(server.peak_rss_mb()))  # fmt: skip
            finally:
                server.stop()
            report[name] = summary
            print(name, json.dumps(summary, indent=1), flush=True)
    write_json(args.output, report)
    below, above = report["below_queue_limit"], report["above_queue_limit"]
    ok = below["failed"] == 0 and below["refused_503"] == 0 and above["failed"] == 0
    ok = ok and below["health"]["failed"] == 0 and above["health"]["failed"] == 0
    print("PASS" if ok else "FAIL: see the failures above")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
