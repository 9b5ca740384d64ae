"""Packing a corpus: a manifest -> Parquet shards of Hugging Face `datasets`, audio embedded.

    DIR/data/<split>-00000-of-00012.parquet   the rows, in manifest order
    DIR/index.json                            per split: its shards (file, rows, seconds, bytes),
                                              totals, and every dropped utterance with why
    DIR/.pack/                                the plan and a record of each finished shard

A row holds `id`, `audio`, `text`, `duration`, `offset` and `speaker`. `audio` has the
`datasets.Audio` feature, stored as `{"bytes": the source file's bytes exactly as on disk,
"path": the file's path relative to the manifest}`: nothing is re-encoded, so decoding a row gives
the very samples decoding the original file gives. The shards are what `data.hf_dataset=DIR`
(map-style, or streamed with `data.hf_streaming=true`) and `asr transcribe --manifest DIR` read,
from a local folder or, uploaded, from any fsspec URL (`s3://...`, `hf://datasets/...`).

Segments: a manifest line with an `offset` (a stretch of a longer recording) embeds its whole
source file and keeps `offset` and `duration`; readers decode only the segment. A file cited by
k lines is stored k times (the index counts them under `repeated_files`): cut long recordings
into files before packing where that matters.

Resuming: shards are planned before any is written (rows in manifest order, a new shard when the
source bytes would pass `shard_size`) and the plan is kept in `.pack/`. Each shard is written
under a temporary name, renamed once complete, then recorded; a rerun keeps every recorded shard
and writes the others, so a killed run never leaves a half-written shard that looks finished.
A shard's record holds the size and modification time of each source file, taken before the
file was read: a rerun packs again every shard one of whose files has changed since (or has
appeared, or gone), with a warning line. Size and time, not a hash of the bytes: checking the
bytes would read the whole corpus again on every rerun, where a stat costs nothing; like make
and rsync, this misses only a rewrite that keeps both the size and the time to the nanosecond.

Checks: every utterance is read as training reads it (`asr.data.dataset.load_utterance`: the
file decodes, is not truncated, lasts its stated duration); what fails is dropped and listed in
the index with its reason, as are the manifest's bad lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from asr.audio import AudioError
from asr.bars import progress
from asr.checkpoint import atomic_write, partial_files
from asr.data.dataset import load_utterance
from asr.data.manifest import Utterance, problem_report, read_manifest

log = logging.getLogger(__name__)

INDEX = "index.json"
STATE_DIR = ".pack"
DATA_DIR = "data"
FORMAT = "asr-pack/1"
DEFAULT_SHARD_SIZE = "1GB"
# Rows per Parquet row group: the unit a stream shards by and seeks to (`datasets`' reshard()
# makes each row group a data source), about 20 MB of LibriSpeech FLAC.
ROW_GROUP_ROWS = 100
CHECK_RATE = 16000  # utterances are checked by decoding them as training does, at 16 kHz
_SPLIT_NAME = re.compile(r"\w+(\.\w+)*")  # what `datasets` accepts as a split name
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*")
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str | int) -> int:
    """ "1GB", "500MB", "2GiB", "1e9" or an int -> bytes (a ValueError names a bad value)."""
    if isinstance(text, int):
        size = text
    else:
        found = _SIZE.fullmatch(str(text))
        if not found:
            raise ValueError(f"--shard-size: expected a size such as 1GB or 500MB, got {text!r}")
        unit = (found[2] or "").lower()
        base = 1024 ** "bkmgt".index(unit[0]) if unit.endswith(("ib", "i")) else _UNITS[unit[:1]]
        size = int(float(found[1]) * base)
    if size <= 0:
        raise ValueError(f"--shard-size must be positive, got {text!r}")
    return size


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00003-of-00012.parquet`: the names `datasets` recognises as a split's shards."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def plan_shards(utterances: Sequence[Utterance], shard_bytes: int) -> list[tuple[int, int]]:
    """(first, count) of each shard over `utterances`, in order: a shard is closed before the
    source bytes of its next utterance would take it past `shard_bytes` (a file larger than that
    gets a shard of its own; a missing file counts 0 bytes and is dropped when packing)."""
    plan: list[tuple[int, int]] = []
    first, size = 0, 0
    for i, utt in enumerate(utterances):
        try:
            nbytes = os.path.getsize(utt.audio)
        except OSError:
            nbytes = 0
        if i > first and size + nbytes > shard_bytes:
            plan.append((first, i - first))
            first, size = i, 0
        size += nbytes
    plan.append((first, len(utterances) - first))
    return plan


def pack_manifest(
    manifest: str | Path,
    output: str | Path,
    split: str = "train",
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    num_workers: int = 1,
) -> dict[str, Any]:
    """Pack `manifest` into `output` as split `split` (see the module docstring); returns the
    split's entry of `index.json`. Shards finished by an earlier run are kept."""
    if not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"--split must be letters, digits, '_' or '.', got {split!r}")
    if num_workers < 1:
        raise ValueError(f"--processes must be >= 1, got {num_workers}")
    manifest, output, shard_bytes = Path(manifest), Path(output), parse_size(shard_size)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output-dir {output} exists and is not a folder")
    began = time.perf_counter()
    problems: list[str] = []
    utterances = read_manifest(manifest, problems)
    if not utterances:
        raise ValueError(f"no utterances in {manifest} (see the warnings above)")
    plan = _load_or_make_plan(manifest, output, split, shard_bytes, utterances)
    names = [shard_name(split, k, len(plan)) for k in range(len(plan))]
    for partial in partial_files(output / DATA_DIR) + partial_files(output / STATE_DIR):
        partial.unlink(missing_ok=True)  # left by a run killed mid-write; never read
    todo = {k for k, name in enumerate(names) if not _finished(output, name)}
    for k in sorted(set(range(len(plan))) - todo):  # finished: are their sources unchanged?
        first, count = plan[k]
        changed = _changed_sources(output, names[k], utterances[first : first + count])
        if changed:
            log.warning("%s: %s since it was packed; packing it again", names[k], changed)
            todo.add(k)
    jobs = [
        (utterances[first : first + count], output, names[k], manifest.parent.absolute())
        for k, (first, count) in enumerate(plan)
        if k in todo
    ]
    log.info("packing %s: %d shard(s), %d already done", manifest, len(plan), len(plan) - len(jobs))
    # Progress in utterances (checked and read), counted as each shard is finished.
    rows = sum(len(job[0]) for job in jobs)
    with progress(rows, f"packing {split}", "utterances", show=bool(jobs)) as advance:
        if num_workers == 1 or len(jobs) <= 1:
            for job in jobs:
                _log_shard(_pack_shard(job))
                advance(len(job[0]))
        else:
            # spawn, not fork: decoding in a forked child of a process that ran OpenMP can hang.
            context = get_context("spawn")
            with ProcessPoolExecutor(min(num_workers, len(jobs)), mp_context=context) as pool:
                for job, record in zip(jobs, pool.map(_pack_shard, jobs)):
                    _log_shard(record)
                    advance(len(job[0]))
    entry = _split_entry(manifest, output, names, shard_bytes, problems)
    entry["reused_shards"] = len(plan) - len(jobs)
    entry["pack_seconds"] = round(time.perf_counter() - began, 1)
    if jobs or (index := read_index(str(output))) is None or split not in index["splits"]:
        _update_index(output, split, entry)  # a rerun with nothing to do leaves the index be
    if entry["dropped"] or problems:
        reasons = [f"{d['id']}: {d['reason']}" for d in entry["dropped"]]
        log.warning(problem_report(
            f"{manifest}: dropped {len(entry['dropped'])} utterance(s) and {len(problems)} bad "
            f"line(s); all listed in {output / INDEX}", problems + reasons))  # fmt: skip
    return entry


def _fingerprint(manifest: Path, shard_bytes: int) -> str:
    digest = hashlib.sha256(manifest.read_bytes())
    digest.update(f"shard_bytes={shard_bytes}".encode())
    return digest.hexdigest()


def _load_or_make_plan(
    manifest: Path, output: Path, split: str, shard_bytes: int, utterances: list[Utterance]
) -> list[tuple[int, int]]:
    """The plan of an earlier run of the same manifest and shard size, else a new one (saved)."""
    path = output / STATE_DIR / f"{split}.plan.json"
    fingerprint = _fingerprint(manifest, shard_bytes)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["fingerprint"] != fingerprint:
            raise ValueError(
                f"{output} already holds split {split!r} packed from another manifest or "
                f"--shard-size (see {path}); choose another --output-dir or --split, or delete it"
            )
        return [tuple(shard) for shard in saved["shards"]]
    if any((output / DATA_DIR).glob(f"{split}-*.parquet")):
        raise ValueError(
            f"{output / DATA_DIR} holds {split} shards that no plan of {output / STATE_DIR} "
            f"describes; choose another --output-dir, or delete them"
        )
    plan = plan_shards(utterances, shard_bytes)
    record = {"fingerprint": fingerprint, "manifest": str(manifest.absolute()), "shards": plan}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record) + "\n"))
    return plan


def _finished(output: Path, name: str) -> bool:
    return (output / DATA_DIR / name).is_file() and (output / STATE_DIR / f"{name}.json").is_file()


def _source_stat(path: str) -> list[int] | None:
    """[size, modification time in ns] of a source file, None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _changed_sources(output: Path, name: str, utterances: Sequence[Utterance]) -> str:
    """Which source files of a finished shard changed since it was packed, in words ("" if
    none): each file's size and time now against its record's."""
    record = json.loads((output / STATE_DIR / f"{name}.json").read_text())
    if "sources" not in record:
        return "its source files' sizes and times were not recorded (an older asr pack)"
    recorded = record["sources"]
    files = dict.fromkeys(utt.audio for utt in utterances)
    changed = [path for path in files if _source_stat(path) != recorded.get(path)]
    if not changed:
        return ""
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"{len(changed)} source file(s) changed ({shown})"


def _pack_shard(job: tuple[list[Utterance], Path, str, Path]) -> dict[str, Any]:
    """Check and read the utterances of one shard, write it (atomically), then its record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    utterances, output, name, folder = job
    schema = packed_features().arrow_schema  # the `datasets` feature types, in the metadata
    record: dict[str, Any] = {"file": f"{DATA_DIR}/{name}", "rows": 0, "seconds": 0.0}
    record.update(source_bytes=0, dropped=[])
    sources: dict[str, list[int]] = {}  # source file -> [its bytes, rows citing it]
    # Taken before any file is read: a file changed while packing differs from it on a rerun.
    record["sources"] = {utt.audio: _source_stat(utt.audio) for utt in utterances}

    def write(tmp: Path) -> None:
        rows: list[dict[str, Any]] = []
        with pq.ParquetWriter(tmp, schema, use_dictionary=False) as writer:
            for utt in utterances:
                row = _checked_row(utt, folder, record["dropped"])
                if row is None:
                    continue
                rows.append(row)
                sources[utt.audio] = [
                    len(row["audio"]["bytes"]),
                    sources.get(utt.audio, [0, 0])[1] + 1,
                ]
                record["rows"] += 1
                record["seconds"] += utt.duration
                record["source_bytes"] += len(row["audio"]["bytes"])
                if len(rows) == ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
            if rows or record["rows"] == 0:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))

    shard = output / DATA_DIR / name
    atomic_write(shard, write)
    record["bytes"] = shard.stat().st_size
    record["seconds"] = round(record["seconds"], 3)
    record["files"] = sources  # a file cited by several rows (or shards) counts once on disk
    state = output / STATE_DIR / f"{name}.json"
    atomic_write(state, lambda tmp: tmp.write_text(json.dumps(record) + "\n"))
    return record


def _checked_row(utt: Utterance, folder: Path, dropped: list[dict[str, str]]) -> dict | None:
    """The row of `utt`, or None after noting in `dropped` why it cannot be trained on."""
    try:
        load_utterance(utt, CHECK_RATE)  # the checks of training: decodes, long enough
        data = Path(utt.audio).read_bytes()
    except (AudioError, OSError) as err:
        dropped.append({"id": utt.id, "audio": utt.audio, "reason": str(err)})
        return None
    audio = Path(utt.audio)
    path = audio.relative_to(folder) if audio.is_relative_to(folder) else audio
    return {"id": utt.id, "audio": {"bytes": data, "path": path.as_posix()}, "text": utt.text,
            "duration": utt.duration, "offset": utt.offset, "speaker": utt.speaker}  # fmt: skip


def packed_features() -> Any:
    """The `datasets.Features` of a packed row."""
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"),
        "audio": datasets.Audio(),
        "text": datasets.Value("string"),
        "duration": datasets.Value("float64"),
        "offset": datasets.Value("float64"),
        "speaker": datasets.Value("string"),
    })  # fmt: skip


def _log_shard(record: dict[str, Any]) -> None:
    # DEBUG (-v): the progress display says how far packing is; index.json keeps every shard.
    log.debug("%s: %d rows, %.0f s of audio, %d dropped", record["file"], record["rows"],
             record["seconds"], len(record["dropped"]))  # fmt: skip


def _split_entry(
    manifest: Path, output: Path, names: list[str], shard_bytes: int, problems: list[str]
) -> dict[str, Any]:
    records = [json.loads((output / STATE_DIR / f"{name}.json").read_text()) for name in names]
    files: dict[str, int] = {}
    cited: dict[str, int] = {}
    for record in records:
        for source, (nbytes, rows) in record["files"].items():
            files[source] = nbytes
            cited[source] = cited.get(source, 0) + rows
    seconds = sum(r["seconds"] for r in records)
    return {
        "manifest": str(manifest.absolute()),
        "shard_size": shard_bytes,
        "shards": [{k: r[k] for k in ("file", "rows", "seconds", "bytes")} for r in records],
        "rows": sum(r["rows"] for r in records),
        "seconds": round(seconds, 3),
        "hours": round(seconds / 3600, 3),
        "bytes": sum(r["bytes"] for r in records),
        "source_bytes": sum(files.values()),  # the distinct source files, as on disk
        "embedded_bytes": sum(r["source_bytes"] for r in records),
        "repeated_files": sum(1 for n in cited.values() if n > 1),
        "dropped": [d for r in records for d in r["dropped"]],
        "manifest_problems": problems,
    }


def _update_index(output: Path, split: str, entry: dict[str, Any]) -> None:
    path = output / INDEX
    index = json.loads(path.read_text()) if path.is_file() else {"format": FORMAT, "splits": {}}
    index["splits"][split] = entry
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(index, indent=1) + "\n"))


def read_index(url: str) -> dict[str, Any] | None:
    """The `index.json` of a packed folder (a local path or an fsspec URL), or None if absent."""
    import fsspec

    location = url.rstrip("/") + "/" + INDEX
    try:
        with fsspec.open(location, "r", encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise ValueError(f"{location} is not valid JSON ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{location} was not written by `asr pack` (format {FORMAT})")
    return index


def split_files(url: str, index: dict[str, Any], split: str) -> list[str]:
    """The shard URLs of `split` in a packed folder, in order."""
    splits = index["splits"]
    if split not in splits:
        raise ValueError(f"packed dataset {url} has no split {split!r}; has {sorted(splits)}")
    return [url.rstrip("/") + "/" + shard["file"] for shard in splits[split]["shards"]]
