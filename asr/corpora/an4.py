"""AN4 (CMU census database, Acero 1990): download, layout, manifests with a speaker-held-out
validation split.

About 950 training and 130 test utterances of spelled letters, digits and words ("R U B O U T",
"ENTER SIX TWO"), 16 kHz, from 74 + 10 speakers. The corpus on disk:

    an4/etc/an4_{train,test}.fileids          an4_clstk/fash/an251-fash-b   (speaker folder)
    an4/etc/an4_{train,test}.transcription    <s> YES </s> (an251-fash-b)   (<s> </s> optional)
    an4/wav/<fileid>.sph                      NIST SPHERE (public mirrors hold .wav instead)

Here: `download_an4`, `parse_transcription_line`, `read_transcription`, `split_utterances`
(one split's utterances, audio `.sph` or `.wav`), `hold_out_speakers` (validation speakers
taken from the training speakers, never from the test set) and `prepare_an4` (the three
manifests).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import soundfile

from asr.corpora.download import download, safe_extract
from asr.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

# The official tarball. CMU publishes no checksum for it, so none is checked unless one is given
# (`download_an4(md5=...)`, `recipes/an4/run.py --md5`); its listing gives the size as "64M".
AN4_URL = "http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz"
AN4_MD5: str | None = None
SPLITS = ("train", "test")
AUDIO_SUFFIXES = (".sph", ".wav")

_LINE = re.compile(r"^(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()\s]+)\)\s*$")


def find_an4_dir(path: str | Path) -> Path:
    """The `an4/` folder (the one holding `etc/` and `wav/`) given itself or its parent."""
    path = Path(path)
    return path if (path / "etc").is_dir() else path / "an4"


def download_an4(data_dir: str | Path, url: str = AN4_URL, md5: str | None = AN4_MD5) -> Path:
    """`an4_sphere.tar.gz` fetched into `data_dir` and extracted; returns `data_dir/an4`.

    An `an4/` folder already there (and not left half-extracted), or `data_dir` itself when it
    is one, is used as it is.
    """
    data_dir = Path(data_dir)
    archive = data_dir / Path(url).name
    marker = data_dir / f".{archive.name}.extracted"
    corpus = find_an4_dir(data_dir)
    if (corpus / "etc").is_dir() and (marker.is_file() or not archive.exists()):
        log.info("AN4: using %s", corpus)
        return corpus
    log.info("AN4: downloading %s", url)
    download(url, archive, md5=md5)
    safe_extract(archive, data_dir)
    if not (corpus / "etc").is_dir():
        raise ValueError(f"{archive} did not hold an an4/etc/ folder; is it the AN4 tarball?")
    return corpus


def parse_transcription_line(line: str) -> tuple[str, str]:
    """`"<s> R U B O U T </s> (an251-fash-b)"` -> `("an251-fash-b", "R U B O U T")`."""
    match = _LINE.match(line.strip())
    if not match:
        raise ValueError(f"expected 'TEXT (utterance-id)', got {line.strip()!r}")
    text = match.group("text").replace("<s>", " ").replace("</s>", " ")
    return match.group("id"), " ".join(text.split())


def read_transcription(path: str | Path) -> dict[str, str]:
    """utterance id -> text of an `an4_*.transcription` file; errors name the file and line."""
    path = Path(path)
    texts: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            utt_id, text = parse_transcription_line(line)
        except ValueError as err:
            raise ValueError(f"{path}:{line_no}: {err}") from None
        if utt_id in texts:
            raise ValueError(f"{path}:{line_no}: utterance id {utt_id!r} appears twice")
        texts[utt_id] = text
    return texts


def split_utterances(an4_dir: str | Path, split: str) -> list[Utterance]:
    """The utterances of `split` ("train" or "test"), in `.fileids` order.

    Every file id needs a transcription line and an audio file (`wav/<fileid>.sph` or `.wav`),
    and every transcription a file id: a mismatch raises ValueError naming the ids.
    """
    if split not in SPLITS:
        raise ValueError(f"AN4 split must be one of {SPLITS}, got {split!r}")
    an4_dir = find_an4_dir(an4_dir)
    etc = an4_dir / "etc"
    fileids_path, trans_path = etc / f"an4_{split}.fileids", etc / f"an4_{split}.transcription"
    for path in (fileids_path, trans_path):
        if not path.is_file():
            raise FileNotFoundError(f"AN4 file not found: {path}")
    fileids = [line.strip() for line in fileids_path.read_text().splitlines() if line.strip()]
    texts = read_transcription(trans_path)
    by_id = {Path(fileid).name: fileid for fileid in fileids}
    _check_same_ids(by_id, texts, fileids_path, trans_path)
    utterances = []
    for fileid in fileids:
        audio = _audio_path(an4_dir, fileid)
        utt_id = Path(fileid).name
        duration = soundfile.info(str(audio)).duration
        speaker = Path(fileid).parent.name
        utterances.append(Utterance(utt_id, str(audio.absolute()), texts[utt_id], duration, 0.0,
                                    speaker))  # fmt: skip
    return utterances


def _check_same_ids(
    by_id: dict[str, str], texts: dict[str, str], fileids: Path, trans: Path
) -> None:
    no_text = sorted(set(by_id) - set(texts))
    no_audio = sorted(set(texts) - set(by_id))
    if no_text or no_audio:
        raise ValueError(
            f"{fileids} and {trans} disagree: {len(no_text)} file id(s) without a transcription "
            f"{no_text[:3]}, {len(no_audio)} transcription(s) without a file id {no_audio[:3]}"
        )


def _audio_path(an4_dir: Path, fileid: str) -> Path:
    candidates = [an4_dir / "wav" / f"{fileid}{suffix}" for suffix in AUDIO_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"AN4 audio for {fileid!r} not found: tried {[str(p) for p in candidates]}"
    )


def hold_out_speakers(
    utterances: list[Utterance], fraction: float = 0.1, seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """(train, val): whole speakers, drawn with `seed`, moved to val until it holds at least
    `fraction` of the utterances; at least one speaker stays on each side."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    speakers = sorted({u.speaker for u in utterances if u.speaker is not None})
    if len(speakers) < 2:
        raise ValueError(f"need at least 2 training speakers to hold one out, got {speakers}")
    random.Random(seed).shuffle(speakers)
    counts = {s: sum(u.speaker == s for u in utterances) for s in speakers}
    held: set[str] = set()
    for speaker in speakers[:-1]:
        if sum(counts[s] for s in held) >= fraction * len(utterances):
            break
        held.add(speaker)
    train = [u for u in utterances if u.speaker not in held]
    val = [u for u in utterances if u.speaker in held]
    return train, val


def prepare_an4(
    an4_dir: str | Path, out_dir: str | Path, val_fraction: float = 0.1, seed: int = 0
) -> dict[str, Path]:
    """`train.jsonl`, `val.jsonl` (held-out training speakers) and `test.jsonl` in `out_dir`.

    Existing manifests are kept (delete them to prepare again); returns name -> path.
    """
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.jsonl" for name in ("train", "val", "test")}
    if all(path.is_file() for path in paths.values()):
        return paths
    train, val = hold_out_speakers(split_utterances(an4_dir, "train"), val_fraction, seed)
    test = split_utterances(an4_dir, "test")
    for name, utterances in (("train", train), ("val", val), ("test", test)):
        write_manifest(utterances, paths[name])
        speakers = len({u.speaker for u in utterances})
        minutes = sum(u.duration for u in utterances) / 60
        log.info("AN4 %s: %d utterances, %d speakers, %.1f min -> %s", name, len(utterances),
                 speakers, minutes, paths[name])  # fmt: skip
    return paths
