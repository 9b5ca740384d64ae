"""The output folder of a corpus transcription, and what keeps a rerun from mixing results.

    OUT/transcripts.jsonl     one transcript record per utterance (`asr.inference.corpus`), in
                              corpus order
    OUT/parts/rank<r>.jsonl   what rank r transcribed, a record per line, with its position
    OUT/run.json              the model and options they come from (`run_settings`)

A rerun skips every utterance already in a part (one that failed is tried again), so a killed
run loses only the step each rank was working on. A rerun never mixes results: one with another
model or other decoding or chunking options is refused, naming what differs (`check_run`),
unless it starts over (`begin_run(start_over=True)`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from asr.checkpoint import BundleError, atomic_write
from asr.inference.corpus import TRANSCRIPTS
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.interop.sources import model_file

PARTS = "parts"
RUN = "run.json"


def open_part(path: Path) -> Any:
    """Open a part for appending, first cutting a last line a killed run left unfinished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return path.open("a", encoding="utf-8")


def read_parts(out_dir: Path, ids: list[str]) -> dict[int, dict[str, Any]]:
    """Position -> its record from every part (records of another corpus, whose id at that
    position differs, are ignored); a success wins over a failure of the same utterance."""
    found: dict[int, dict[str, Any]] = {}
    for part in sorted((out_dir / PARTS).glob("*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                i = int(record.pop("index"))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a killed run
            if not (0 <= i < len(ids) and record.get("id") == ids[i]):
                continue
            if i not in found or found[i]["error"] is not None:
                found[i] = record
    return found


def merge_parts(out_dir: Path, ids: list[str]) -> Path:
    """OUT/transcripts.jsonl from the parts, in corpus order (written atomically)."""
    records = read_parts(out_dir, ids)
    missing = [i for i in range(len(ids)) if i not in records]
    if missing:  # each rank wrote its part where rank 0 cannot see it
        raise ValueError(
            f"the parts in {out_dir / PARTS} lack {len(missing)} of {len(ids)} utterance(s), "
            f"e.g. {ids[missing[0]]!r}: is --output-dir on a file system every process (every "
            f"node) shares? Rerun to transcribe what is missing"
        )
    lines = "".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in range(len(ids)))
    path = out_dir / TRANSCRIPTS
    atomic_write(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    return path


def run_settings(
    model: str | Path, options: DecodingOptions, chunking: ChunkingOptions
) -> dict[str, Any]:
    """What the transcripts depend on, as kept in OUT/run.json: the model file's sha256 (its
    weights, front end and tokenizer), the decoding options (an LM's or a lexicon's sha256 with
    its path) and the chunking. Not the batch size nor the device: they change no result (the
    engine is padding invariant), so a killed run may be resumed with a smaller batch."""
    path = model_file(model)
    if not path.is_file():
        raise BundleError(f"model file not found: {path}")
    run: dict[str, Any] = {"model": str(model), "model_sha256": _sha256(path)}
    for name, value in dataclasses.asdict(options).items():
        run[name] = value
        if name in ("lm", "lexicon"):
            run[f"{name}_sha256"] = None if value is None else _sha256(Path(value))
    run.update(chunk_seconds=chunking.chunk_seconds, chunk_overlap=chunking.chunk_overlap)
    return run


def check_run(out_dir: Path, run: dict[str, Any]) -> None:
    """Refuse (ValueError, one line) to add to `out_dir` transcripts made otherwise than `run`
    says, or by an asr that did not record how."""
    path = out_dir / RUN
    advice = "rerun with --overwrite to start over, or choose another --output-dir"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        differences = _differences(before, run)
        if differences:
            raise ValueError(f"{out_dir} holds transcripts made with other settings ({path}): "
                             f"{'; '.join(differences)}; {advice}")  # fmt: skip
    elif any((out_dir / PARTS).glob("*.jsonl")) or (out_dir / TRANSCRIPTS).exists():
        raise ValueError(f"{out_dir} holds transcripts without a record of their model and "
                         f"options ({path}); {advice}")  # fmt: skip


def begin_run(out_dir: Path, run: dict[str, Any], start_over: bool) -> None:
    """Record `run` in OUT/run.json, first removing an earlier run's files if `start_over`
    (run.json first: a start-over killed halfway leaves files no rerun mixes with its own)."""
    if start_over:
        (out_dir / RUN).unlink(missing_ok=True)
        (out_dir / TRANSCRIPTS).unlink(missing_ok=True)
        shutil.rmtree(out_dir / PARTS, ignore_errors=True)
    text = json.dumps(run, indent=1) + "\n"
    atomic_write(out_dir / RUN, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """ "key: then-value then, now-value now" for each setting that differs; a file (model, LM,
    lexicon) differs by content, shown with its path."""
    found = []
    for key in dict.fromkeys([*before, *now]):
        name = key.removesuffix("_sha256")
        if key != name:
            if before.get(key) != now.get(key):
                then, new = (_file(d.get(name), d.get(key)) for d in (before, now))
                found.append(f"{name}: {then} then, {new} now")
        elif f"{key}_sha256" not in now and before.get(key) != now.get(key):
            found.append(f"{key}: {before.get(key)} then, {now.get(key)} now")
    return found


def _file(path: str | None, digest: str | None) -> str:
    return "none" if digest is None else f"{path} (sha256 {digest[:12]})"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
