"""Live captions through `asr serve` under load: N microphones at once, latency per word.

    python bench/live_load.py --model /tmp/real-speech/s10-stream-running/exp/model.pt \\
        [--streams 1 2 4 8 12 16] [--chunks-ms 320 640 1280] [--threads T] [--audio a.flac ...]

Per chunk size (`asr serve --chunk-ms`) a fresh `asr serve` (a subprocess on a free loopback
port, `--max-live-streams` above the largest N, `--threads` as given, else the server's own
default for one worker: all CPU cores) gets one untimed warm-up session, then for each N in
`--streams`, N concurrent WebSocket sessions (`GET /v1/realtime?intent=transcription`, the
OpenAI Realtime transcription events, `asr.serving.live`). Session i plays the recordings
(`--audio`, or librispeech-mini's test-clean) one after another, starting at recording i mod R,
`--items` of them (default: all R): each recording is one item, sent as `input_audio_buffer.append`
events of `--piece-ms` of 16-bit PCM at the model's rate, paced in real time as a microphone
delivers them, then `input_audio_buffer.commit`, and the next recording follows at once. Session i
starts `i / N` of a chunk after session 0, so that the sessions' chunks are not all due at the same
instant (a microphone does not start on a chunk boundary).

Times are the client's wall clock (`time.perf_counter`). An item's audio sample s is "spoken" at
t0 + s / rate: the piece holding samples [a, b) is sent at t0 + b / rate, the moment a microphone
would have it (the 0 to `--piece-ms` ms of buffering a real client has is in every latency).
Word times come from the model's own offline transcription of each recording (`Transcriber.
transcribe`, word times by forced alignment), matched in order to the words of the server's
final transcript (words the two do not share are left out of word latencies).

Measured per item, and reported per chunk size and N as median and p90 over all items (words):
  first_partial_ms  arrival of the item's first delta with text - (t0 + the first word's start)
  final_ms          arrival of the item's `completed` event - the moment its last piece (and the
                    commit) was sent
  word_ms           per word: arrival of the first delta after which the partial text shows the
                    word complete at its place - (t0 + the word's end); words only the final
                    delta brings count too (their latency includes the end of the item)
  growth_ms_per_s   slope of word latency against the session's time (least squares over all
                    words): a server that keeps up has latencies that do not grow, about 0
  same_text         share of items whose final transcript equals an in-process `Stream`'s final
                    text for the same samples (same chunk and left context)
  kept_up           same_text is 1, no session failed and growth < 20 ms per second (a
                    lag growing by 0.6 s over a 30 s session; the slope's noise is a few ms/s)
  send_lag_ms       the largest delay of a piece behind its schedule (the client's own lateness)
The summary gives per chunk size the largest N whose p90 word latency is under 1 s, with kept_up.
About (server start + warm-up + the longest session, ~30 s for test-clean) per N and chunk size:
11 minutes for the defaults. Needs the serve extra (fastapi, uvicorn, websockets).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ServeProcess, first_shown, machine, percentiles, word_ends, write_json

import asr
from asr.audio import load_audio

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = REPO.parent / "shared/data/librispeech-mini/LibriSpeech/test-clean"
GROWTH_LIMIT = 0.020  # seconds of latency per second of session: "kept up" below it


class Recording(NamedTuple):
    """One recording as the clients send it (int16 at the model's rate) and what it should give:
    the model's offline word times and, per chunk size, an in-process `Stream`'s final text."""

    name: str
    pcm: np.ndarray
    rate: int
    words: list[Any]
    stream_text: dict[float, str]  # filled in per chunk size

    @property
    def onset(self) -> float | None:
        return self.words[0].start if self.words else None


def prepare(args: argparse.Namespace, paths: list[str]) -> list[Recording]:
    """The recordings, their offline word times and their in-process streams' final texts."""
    transcriber = asr.load_model(args.model)
    rate = transcriber.sample_rate
    recordings = []
    for path in paths:
        wave = load_audio(path, rate, duration=args.max_seconds).numpy()
        pcm = np.clip(np.round(wave * 32768), -32768, 32767).astype("<i2")
        offline = transcriber.transcribe((pcm, rate))[0]
        if offline.error:
            sys.exit(f"{path}: {offline.error}")
        recordings.append(Recording(Path(path).name, pcm, rate, offline.words, {}))
    for chunk_ms in args.chunks_ms:
        for recording in recordings:
            try:
                stream = transcriber.stream(chunk_ms, args.left_seconds,
                                            lookahead_ms=args.lookahead_ms)  # fmt: skip
            except ValueError as err:
                sys.exit(f"--model {args.model} cannot stream: {err}")
            stream.accept(recording.pcm, rate)
            recording.stream_text[chunk_ms] = stream.finish().text
    return recordings


def start_server(
    folder: Path, args: argparse.Namespace, chunk_ms: float
) -> tuple[ServeProcess, str]:
    """`asr serve --model MODEL --chunk-ms C` on a free loopback port; (server, its ws:// URL)."""
    server = ServeProcess(args.model, [
        "--threads", str(args.threads), "--chunk-ms", str(chunk_ms),
        "--lookahead-ms", str(args.lookahead_ms), "--left-seconds", str(args.left_seconds),
        "--max-live-streams", str(max(args.streams) + 1),
        "--live-idle-seconds", "120"], folder / f"server-{chunk_ms:g}ms.log")  # fmt: skip
    return server, server.url.replace("http://", "ws://") + "/v1/realtime"


class Sent:
    """One item as sent: its recording, t0 (when its sample 0 was "spoken"), when its last piece
    and the commit went out, and the largest lateness of a piece behind its schedule. (Not a
    dataclass: tests/test_benchmarks_doc.py imports the bench scripts outside sys.modules.)"""

    def __init__(self, recording: Recording, t0: float) -> None:
        self.recording, self.t0 = recording, t0
        self.last_sent = self.lag = 0.0


async def session(url: str, program: list[Recording], start: float, piece_s: float) -> dict:
    """One live session: each recording of `program` as an item, paced in real time from
    `start` (a perf_counter time). Returns what was sent and every event with its arrival."""
    from websockets.asyncio.client import connect

    events: list[tuple[float, dict]] = []
    sent: list[Sent] = []
    rate = program[0].rate
    async with connect(f"{url}?intent=transcription", max_size=None) as ws:
        events.append((time.perf_counter(), json.loads(await ws.recv())))
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": {"type": "audio/pcm", "rate": rate}}}))  # fmt: skip
        receiver = asyncio.create_task(_receive(ws, events, len(program)))
        t0 = start
        for recording in program:
            item = Sent(recording, t0)
            await _send_item(ws, item, piece_s)
            sent.append(item)
            t0 += len(recording.pcm) / rate
        await receiver
    return {"sent": sent, "events": events}


async def _send_item(ws: Any, item: Sent, piece_s: float) -> None:
    pcm, rate = item.recording.pcm, item.recording.rate
    piece = max(1, round(piece_s * rate))
    for a in range(0, len(pcm), piece):
        b = min(a + piece, len(pcm))
        due = item.t0 + b / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        item.lag = max(item.lag, time.perf_counter() - due)
        audio = base64.b64encode(pcm[a:b].tobytes()).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
    item.last_sent = time.perf_counter()
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))


async def _receive(ws: Any, events: list, items: int) -> None:
    """Every event with its arrival time, until `items` items are completed."""
    done = 0
    while done < items:
        event = json.loads(await ws.recv())
        events.append((time.perf_counter(), event))
        if event["type"] == "error":
            raise RuntimeError(f"the server sent an error: {event['error']}")
        done += event["type"] == "conversation.item.input_audio_transcription.completed"


async def run_streams(url: str, programs: list[list[Recording]], args: argparse.Namespace,
                      chunk_ms: float) -> list[dict | BaseException]:  # fmt: skip
    """len(programs) sessions at once, session i starting i/N of a chunk after session 0."""
    n = len(programs)
    start = time.perf_counter() + 0.5  # time to connect before the first piece is due
    longest = max(sum(len(r.pcm) / r.rate for r in p) for p in programs)
    tasks = [session(url, program, start + i / n * chunk_ms / 1000, args.piece_ms / 1000)
             for i, program in enumerate(programs)]  # fmt: skip
    gathered = asyncio.gather(*tasks, return_exceptions=True)
    return await asyncio.wait_for(gathered, longest + chunk_ms / 1000 + 120)


def item_metrics(sent: Sent, events: list[tuple[float, dict]], chunk_ms: float) -> dict:
    """The latencies of one item from its events (deltas and completed, in arrival order)."""
    recording = sent.recording
    deltas = [(at, e["delta"]) for at, e in events if e["type"].endswith("transcription.delta")]
    completed_at, completed = next(
        (at, e) for at, e in events if e["type"].endswith("transcription.completed")
    )
    final_words = completed["transcript"].split()
    partials, text = [], ""
    for at, delta in deltas:
        text += delta
        partials.append((at, text))
    first = next((at for at, t in partials if t.strip()), None)
    shown = first_shown(partials, final_words)
    ends = word_ends(recording.words, final_words)
    words = [(shown[k] - (sent.t0 + end), sent.t0 + end) for k, end in ends.items()
             if shown[k] is not None]  # fmt: skip
    onset = recording.onset
    return {
        "recording": recording.name,
        "first_partial_s": None if first is None or onset is None else first - (sent.t0 + onset),
        "final_s": completed_at - sent.last_sent,
        "words": words,  # (latency, wall time the word ended)
        "same_text": completed["transcript"] == recording.stream_text[chunk_ms],
        "lag_s": sent.lag,
    }


def session_items(result: dict, chunk_ms: float) -> list[dict]:
    """Per item of a session its metrics: events are split by item_id, in commit order."""
    order = [
        e["item_id"] for _, e in result["events"] if e["type"] == "input_audio_buffer.committed"
    ]
    by_item: dict[str, list] = {item: [] for item in order}
    for at, event in result["events"]:
        if event.get("item_id") in by_item:
            by_item[event["item_id"]].append((at, event))
    return [item_metrics(sent, by_item[item], chunk_ms)
            for sent, item in zip(result["sent"], order)]  # fmt: skip


def summarize(results: list[dict | BaseException], chunk_ms: float, n: int) -> dict:
    """One row: the latencies of every item of every session of one run."""
    failures = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    items = [{**m, "session": i} for i, r in enumerate(results)
             if not isinstance(r, BaseException) for m in session_items(r, chunk_ms)]  # fmt: skip
    session_start = min((s.t0 for r in results if not isinstance(r, BaseException)
                         for s in r["sent"][:1]), default=0.0)  # fmt: skip
    words = [w for m in items for w in m["words"]]
    growth = None
    if len(words) >= 2:
        latency, ended = np.array(words).T
        growth = float(np.polyfit(ended - session_start, latency, 1)[0])
    same = [m["same_text"] for m in items]
    same_text = round(sum(same) / len(same), 3) if same else 0.0
    kept_up = not failures and same_text == 1.0 and growth is not None and growth < GROWTH_LIMIT
    first = [m["first_partial_s"] for m in items if m["first_partial_s"] is not None]
    return {
        "chunk_ms": chunk_ms,
        "streams": n,
        "items": len(items),
        "words": len(words),
        "first_partial_ms": percentiles(first),
        "final_ms": percentiles([m["final_s"] for m in items]),
        "word_ms": percentiles([w[0] for w in words]),
        "growth_ms_per_s": None if growth is None else round(1000 * growth, 2),
        "same_text": same_text,
        "kept_up": kept_up,
        "send_lag_ms": round(1000 * max((m["lag_s"] for m in items), default=0.0), 1),
        "failures": failures[:5],
        "per_item": [_item_row(m) for m in items],
    }


def _item_row(m: dict) -> dict:
    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(1000 * seconds, 1)

    return {"session": m["session"], "recording": m["recording"],
            "first_partial_ms": ms(m["first_partial_s"]), "final_ms": ms(m["final_s"]),
            "word_ms": percentiles([w[0] for w in m["words"]]), "same_text": m["same_text"]}  # fmt: skip


def programs_for(recordings: list[Recording], n: int, items: int) -> list[list[Recording]]:
    """Session i's recordings: `items` of them, from recording i mod R on, in turn."""
    count = len(recordings)
    return [[recordings[(i + k) % count] for k in range(items)] for i in range(n)]


def measure(args: argparse.Namespace, recordings: list[Recording], folder: Path) -> list[dict]:
    rows = []
    for chunk_ms in args.chunks_ms:
        server, url = start_server(folder, args, chunk_ms)
        try:
            warm = asyncio.run(run_streams(url, [recordings[:1]], args, chunk_ms))
            if isinstance(warm[0], BaseException):
                raise SystemExit(f"the warm-up session failed: {warm[0]}\n"
                                 f"{server.log.read_text()[-3000:]}")  # fmt: skip
            for n in args.streams:
                programs = programs_for(recordings, n, args.items or len(recordings))
                row = summarize(asyncio.run(run_streams(url, programs, args, chunk_ms)),
                                chunk_ms, n)  # fmt: skip
                rows.append(row)
                print(_line(row), flush=True)
        finally:
            server.stop()
    return rows


def _line(row: dict) -> str:
    def pair(key: str) -> str:
        return f"{row[key]['median']} / {row[key]['p90']}"

    return (f"| {row['chunk_ms']:g} | {row['streams']} | {pair('first_partial_ms')} | "
            f"{pair('final_ms')} | {pair('word_ms')} | {row['growth_ms_per_s']} | "
            f"{row['same_text']} | {'yes' if row['kept_up'] else 'no'} | {row['send_lag_ms']} |")  # fmt: skip


def largest_n(rows: list[dict]) -> dict[str, int | None]:
    """Per chunk size the largest N whose p90 word latency is under 1 s and that kept up."""
    best: dict[str, int | None] = {}
    for row in rows:
        p90 = row["word_ms"]["p90"]
        ok = row["kept_up"] and p90 is not None and p90 < 1000
        key = f"{row['chunk_ms']:g}"
        best.setdefault(key, None)
        if ok and (best[key] is None or row["streams"] > best[key]):
            best[key] = row["streams"]
    return best


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model.pt or .onnx that can stream")
    parser.add_argument("--audio", nargs="+", help="recordings (default: librispeech-mini)")
    parser.add_argument("--limit", type=int, default=20, help="recordings from the default set")
    parser.add_argument("--max-seconds", type=float, help="only the first seconds of each")
    parser.add_argument("--items", type=int, help="recordings per session (default: all)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16])
    parser.add_argument("--chunks-ms", type=float, nargs="+", default=[320.0, 640.0, 1280.0])
    parser.add_argument("--left-seconds", type=float, default=10.0)
    parser.add_argument("--lookahead-ms", type=float, default=0.0,
                        help="look-ahead after each chunk, for every chunk size")  # fmt: skip
    parser.add_argument("--piece-ms", type=float, default=100.0, help="audio per append event")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="the server's torch threads (default: all cores, as asr serve "
                        "with one worker)")  # fmt: skip
    parser.add_argument("--output", default=str(REPO / "bench/results/live_load.json"))
    args = parser.parse_args()
    paths = args.audio or [str(p) for p in sorted(LIBRISPEECH.rglob("*.flac"))[: args.limit]]
    if not paths:
        sys.exit(f"no recordings: give --audio (nothing under {LIBRISPEECH})")
    recordings = prepare(args, paths)
    with tempfile.TemporaryDirectory() as tmp:
        info = machine()
        info.update(threads=args.threads)  # the server's torch threads
        print(f"{info['date']}  CPU {info['cpu']} (bf16 ISA: {info['bf16_isa']}, "
              f"{info['cores']} cores)  server threads {args.threads}  model {args.model}\n")  # fmt: skip
        print("| chunk ms | streams | first partial ms (median / p90) | final ms | word ms | "
              "growth ms/s | same text | kept up | send lag ms |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
        rows = measure(args, recordings, Path(tmp))
    best = largest_n(rows)
    print(f"\nlargest N with p90 word latency < 1 s (and kept up), per chunk ms: {best}")
    write_json(args.output, {
        "command": " ".join(sys.argv),
        "machine": info,
        "model": args.model,
        "recordings": [{"name": r.name, "seconds": round(len(r.pcm) / r.rate, 2),
                        "onset_s": r.onset} for r in recordings],
        "piece_ms": args.piece_ms,
        "left_seconds": args.left_seconds,
        "lookahead_ms": args.lookahead_ms,
        "results": rows,
        "largest_streams_p90_word_under_1s": best,
    })  # fmt: skip


if __name__ == "__main__":
    main()
