"""Reading transcripts to score: `{id: text}` from Kaldi-style `id text` lines or JSONL.

Both hypothesis files (any system's output) and references (a manifest) go through
`read_transcripts`, so ids are matched one way only.
"""

from __future__ import annotations

import json
from pathlib import Path

_AUDIO_KEYS = ("audio_filepath", "audio", "audio_path", "path")


def read_transcripts(path: str | Path) -> dict[str, str]:
    """Read `{id: text}` from Kaldi `id text` lines or a JSONL manifest, detected by content.

    JSONL: id is the "id" field, else the stem of the audio path ("audio_filepath", "audio",
    "audio_path" or "path"); text is the "text" field. Kaldi: text may be empty. Blank lines are
    skipped; a duplicate id is a ValueError naming the file, the id and both line numbers.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    parse = _parse_jsonl_line if first.startswith("{") else _parse_kaldi_line
    texts: dict[str, str] = {}
    seen_at: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        utt_id, text = parse(line, path, number)
        if utt_id in seen_at:
            first = seen_at[utt_id]
            raise ValueError(
                f"{path}:{number}: duplicate utterance id {utt_id!r} (first: line {first})"
            )
        seen_at[utt_id] = number
        texts[utt_id] = text
    return texts


def _parse_kaldi_line(line: str, path: Path, number: int) -> tuple[str, str]:
    parts = line.strip().split(maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _parse_jsonl_line(line: str, path: Path, number: int) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}): {line[:80]!r}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object, got {line[:80]!r}")
    if not isinstance(record.get("text"), str):
        raise ValueError(f'{path}:{number}: missing or non-string "text" field')
    if record.get("id") is not None:
        return str(record["id"]), record["text"]
    audio = next((record[k] for k in _AUDIO_KEYS if isinstance(record.get(k), str)), None)
    if audio is None:
        raise ValueError(f'{path}:{number}: no "id" field and no audio path {_AUDIO_KEYS}')
    return Path(audio).stem, record["text"]
