"""LibriSpeech (Panayotov et al., ICASSP 2015; OpenSLR SLR12): download, layout, manifests, LMs.

The corpus on disk, as the OpenSLR tarballs extract it:

    LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   "ID TEXT" lines

Here: the seven parts with their OpenSLR MD5 sums (`PARTS`), `download_librispeech` (resumable,
verified, safely extracted: `asr.corpora.download`), `read_transcripts`, `part_utterances` and
`prepare_manifests` (one JSONL manifest per part, durations from the FLAC headers), and the
Hugging Face route (`download_librispeech_hf`: the `openslr/librispeech_asr` rows written back
into the same layout, so every later step is the same whichever way the corpus arrived).

The corpus's language-model resources (OpenSLR SLR11): `download_lm` fetches one of the official
word n-gram ARPA models (`LM_ARPAS`, gzipped; decompressed once by `gunzip`) and the official
pronunciation lexicon, whose words `lexicon_words` reads (its phonemes are of no use to a CTC
model over characters or word pieces; `asr.inference.lexicon.write_lexicon` spells the words
with a model's tokenizer instead).
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import soundfile

from asr.corpora.download import download, safe_extract
from asr.data.manifest import Utterance, read_manifest, write_manifest

log = logging.getLogger(__name__)

OPENSLR_URL = "https://www.openslr.org/resources/12"
MIRRORS = {
    "openslr": OPENSLR_URL,
    "us": "https://us.openslr.org/resources/12",
    "eu": "https://openslr.elda.org/resources/12",
}
# MD5 of each <part>.tar.gz as OpenSLR publishes them (resources/12/md5sum.txt; the same table
# is in Kaldi's, lhotse's and torchaudio's LibriSpeech preparation).
PARTS = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
}
TRAIN_PARTS = ("train-clean-100", "train-clean-360", "train-other-500")
DEV_PARTS = ("dev-clean", "dev-other")
TEST_PARTS = ("test-clean", "test-other")

# OpenSLR SLR11, on the same hosts as the corpus: the name of each `MIRRORS` entry works for both.
LM_URL = "https://www.openslr.org/resources/11"
# MD5 of the SLR11 files as published in resources/11/md5sum.txt. Taken from the table in
# sdrobert/pytorch-database-prep (`librispeech.py`, FILE2MD5), which checks its downloads
# against it and whose resource-12 entries are exactly the `PARTS` sums above. A mismatch stops
# the download and keeps the file aside as `<name>.bad` (asr.corpora.download).
# Sizes of the .gz files as Kaldi's egs/librispeech/s5/local/download_lm.sh lists them.
LM_ARPAS = {  # name -> MD5 of <name>.arpa.gz
    "3-gram.pruned.1e-7": "9a0f1325bcaf3a0f7b7be4be10823c2a",  # 34 MB
    "3-gram.pruned.3e-7": "8f67ec741827742eee05799ab7605b50",  # 14 MB
    "3-gram": "74cbb837e582378c26c602e1c8cbcb9c",  # 760 MB
    "4-gram": "6abdcd5b055bd482e4f9defe91d40408",  # 1.36 GB
}
LEXICON_NAME = "librispeech-lexicon.txt"  # about 200 000 words: "WORD<TAB>PHONEMES" lines
LEXICON_MD5 = "28f72663f6bfed7cd346283c064c315b"

# The same parts on the Hugging Face hub: part -> (config, split) of `openslr/librispeech_asr`.
HF_DATASET = "openslr/librispeech_asr"
HF_SPLITS = {
    "train-clean-100": ("clean", "train.100"),
    "train-clean-360": ("clean", "train.360"),
    "train-other-500": ("other", "train.500"),
    "dev-clean": ("clean", "validation"),
    "dev-other": ("other", "validation"),
    "test-clean": ("clean", "test"),
    "test-other": ("other", "test"),
}

HF_INCOMPLETE = ".hf-incomplete"  # in a part folder while write_hf_part is filling it

_UTT_ID = re.compile(r"\d+-\d+-\d+")


def find_librispeech_dir(path: str | Path) -> Path:
    """The `LibriSpeech/` folder given either itself or the folder holding it."""
    path = Path(path)
    if (path / "LibriSpeech").is_dir():
        return path / "LibriSpeech"
    return path


def download_librispeech(
    data_dir: str | Path,
    parts: Sequence[str],
    mirror: str = OPENSLR_URL,
    keep_archives: bool = True,
) -> Path:
    """Each part's tarball fetched into `data_dir` and extracted; returns `data_dir/LibriSpeech`.

    A part whose folder is already there and was not left half-extracted (its archive beside it
    without the extraction marker) is not downloaded: a `data_dir` holding a `LibriSpeech/`
    folder extracted by other means, or that folder itself, is used as it is.
    """
    data_dir = Path(data_dir)
    if data_dir.name == "LibriSpeech" and not (data_dir / "LibriSpeech").is_dir():
        data_dir = data_dir.parent  # given the corpus folder itself
    corpus = data_dir / "LibriSpeech"
    for part in parts:
        archive = data_dir / f"{part}.tar.gz"
        marker = data_dir / f".{archive.name}.extracted"
        if (corpus / part).is_dir() and (marker.is_file() or not archive.exists()):
            log.info("LibriSpeech %s: using %s", part, corpus / part)
            continue
        if part not in PARTS:
            raise ValueError(f"unknown LibriSpeech part {part!r}; OpenSLR has {sorted(PARTS)}")
        log.info("LibriSpeech %s: downloading from %s", part, mirror)
        download(f"{mirror.rstrip('/')}/{archive.name}", archive, md5=PARTS[part])
        safe_extract(archive, data_dir)
        if not keep_archives:
            archive.unlink()
    return corpus


def read_transcripts(path: str | Path) -> list[tuple[str, str]]:
    """(utterance id, text) of a `trans.txt` file; the last line may lack its newline."""
    path = Path(path)
    pairs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ")
        if not _UTT_ID.fullmatch(utt_id) or not text.strip():
            raise ValueError(f"{path}:{line_no}: expected 'SPEAKER-CHAPTER-UTT TEXT', got {line!r}")
        pairs.append((utt_id, " ".join(text.split())))
    return pairs


def part_utterances(part_dir: str | Path, num_workers: int = 4) -> list[Utterance]:
    """Every transcribed utterance of one part, in id order; durations from the FLAC headers.

    An id listed in a `trans.txt` without its `.flac` beside it is skipped with a warning.
    """
    part_dir = Path(part_dir)
    if not part_dir.is_dir():
        raise FileNotFoundError(f"LibriSpeech part folder not found: {part_dir}")
    listed: list[tuple[str, str, Path]] = []
    missing: list[str] = []
    for trans in sorted(part_dir.glob("*/*/*.trans.txt")):
        for utt_id, text in read_transcripts(trans):
            audio = trans.parent / f"{utt_id}.flac"
            if audio.is_file():
                listed.append((utt_id, text, audio))
            else:
                missing.append(str(audio))
    if missing:
        log.warning("%s: %d transcribed utterance(s) have no audio, e.g. %s", part_dir,
                    len(missing), missing[:3])  # fmt: skip
    with ThreadPoolExecutor(max(1, num_workers)) as pool:  # libsndfile releases the GIL
        durations = list(pool.map(lambda item: soundfile.info(str(item[2])).duration, listed))
    utterances = [
        Utterance(utt_id, str(audio.absolute()), text, duration, speaker=utt_id.split("-")[0])
        for (utt_id, text, audio), duration in zip(listed, durations)
    ]
    return sorted(utterances, key=lambda u: u.id)


def prepare_manifests(
    corpus_dir: str | Path, out_dir: str | Path, parts: Iterable[str], num_workers: int = 4
) -> dict[str, Path]:
    """`out_dir/<part>.jsonl` for each part (an existing manifest is kept); part -> path."""
    corpus_dir, out_dir = find_librispeech_dir(corpus_dir), Path(out_dir)
    manifests = {}
    for part in parts:
        path = out_dir / f"{part}.jsonl"
        if not path.is_file():
            utterances = part_utterances(corpus_dir / part, num_workers)
            if not utterances:
                raise ValueError(f"no transcribed audio found in {corpus_dir / part}")
            write_manifest(utterances, path)
            hours = sum(u.duration for u in utterances) / 3600
            log.info("%s: %d utterances, %.2f h -> %s", part, len(utterances), hours, path)
        manifests[part] = path
    return manifests


def merge_manifests(inputs: Sequence[str | Path], output: str | Path) -> Path:
    """One manifest holding the utterances of all `inputs` (e.g. the 960 h of training)."""
    output = Path(output)
    if not output.is_file():
        write_manifest([u for path in inputs for u in read_manifest(path)], output)
    return output


# --------------------------------------------------------------------------------------------
# Language models (OpenSLR SLR11)


def lm_mirror(mirror: str) -> str:
    """Where the SLR11 files are, given the corpus's `mirror`: a `MIRRORS` name or a URL.

    A URL ending in `resources/12` gives its sibling `resources/11`; any other URL (a local
    mirror) is taken to hold the LM files beside the corpus tarballs.
    """
    url = MIRRORS.get(mirror, mirror).rstrip("/")
    head, _, last = url.rpartition("/")
    return f"{head}/11" if last == "12" and head.endswith("/resources") else url


def download_lm(
    lm_dir: str | Path, arpa: str = "3-gram.pruned.1e-7", mirror: str = LM_URL
) -> tuple[Path, Path]:
    """The official `<arpa>.arpa` (decompressed) and `librispeech-lexicon.txt`, in `lm_dir`.

    Both are fetched with `asr.corpora.download.download` (resumed, MD5-checked). The gzipped
    model stays beside its decompressed copy; a model already decompressed is not fetched again.
    Returns (ARPA path, lexicon path).
    """
    if arpa not in LM_ARPAS:
        raise ValueError(f"unknown LibriSpeech LM {arpa!r}; OpenSLR has {sorted(LM_ARPAS)}")
    lm_dir, mirror = Path(lm_dir), mirror.rstrip("/")
    model = lm_dir / f"{arpa}.arpa"
    if not model.is_file():
        archive = lm_dir / f"{arpa}.arpa.gz"
        log.info("LibriSpeech LM %s: downloading from %s", arpa, mirror)
        gunzip(download(f"{mirror}/{archive.name}", archive, md5=LM_ARPAS[arpa]), model)
    lexicon = download(f"{mirror}/{LEXICON_NAME}", lm_dir / LEXICON_NAME, md5=LEXICON_MD5)
    return model, lexicon


def gunzip(archive: str | Path, dest: str | Path) -> Path:
    """Decompress `archive` into `dest`, streaming (an ARPA model can be gigabytes).

    The bytes go to `dest.part`, renamed to `dest` once complete, so `dest` is only ever a whole
    file; an existing `dest` is kept as it is. Returns `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        with gzip.open(archive, "rb") as source, open(part, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a cut file, EOFError
        part.unlink(missing_ok=True)
        raise ValueError(f"cannot decompress {archive}: {err}") from None
    os.replace(part, dest)
    return dest


def lexicon_words(path: str | Path) -> list[str]:
    """The words of a pronunciation lexicon (`WORD<TAB or space>PHONEMES` lines), each once, in
    file order: a word with several pronunciations has several lines."""
    words: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split(maxsplit=1)
            if fields:
                words.setdefault(fields[0])
    return list(words)


# --------------------------------------------------------------------------------------------
# Hugging Face route


def download_librispeech_hf(
    data_dir: str | Path, parts: Sequence[str], dataset: str = HF_DATASET
) -> Path:
    """`download_librispeech` through the Hugging Face hub: each part's rows streamed and
    written to `data_dir/LibriSpeech/<part>` (`write_hf_part`); parts already there are kept."""
    corpus = find_librispeech_dir(data_dir)
    if corpus.name != "LibriSpeech":
        corpus = corpus / "LibriSpeech"
    for part in parts:
        part_dir = corpus / part
        if part_dir.is_dir() and not (part_dir / HF_INCOMPLETE).exists():
            log.info("LibriSpeech %s: using %s", part, part_dir)
            continue
        log.info("LibriSpeech %s: streaming %s from the Hugging Face hub", part, dataset)
        write_hf_part(hf_part_rows(part, dataset), corpus, part)
    return corpus


def hf_part_rows(part: str, dataset: str = HF_DATASET) -> Iterable[dict[str, Any]]:
    """The rows of one part from the hub, streamed (only that part's files are fetched)."""
    import datasets

    if part not in HF_SPLITS:
        raise ValueError(f"unknown LibriSpeech part {part!r}; the hub has {sorted(HF_SPLITS)}")
    config, split = HF_SPLITS[part]
    rows = datasets.load_dataset(dataset, config, split=split, streaming=True)
    return rows.cast_column("audio", datasets.Audio(decode=False))


def write_hf_part(rows: Iterable[dict[str, Any]], corpus_dir: str | Path, part: str) -> Path:
    """Write `openslr/librispeech_asr`-style rows (id, text, audio bytes) as the OpenSLR layout.

    FLAC bytes are written unchanged; other audio is decoded and written as FLAC. The part
    folder holds the file `.hf-incomplete` until every row and `trans.txt` is written, so an
    interrupted run is recognised and written again.
    """
    part_dir = Path(corpus_dir) / part
    part_dir.mkdir(parents=True, exist_ok=True)
    (part_dir / HF_INCOMPLETE).write_text("")
    transcripts: dict[Path, list[str]] = {}
    for index, row in enumerate(rows):
        utt_id = str(row.get("id", ""))
        if not _UTT_ID.fullmatch(utt_id):
            raise ValueError(f"row {index} of {part}: id {utt_id!r} is not SPEAKER-CHAPTER-UTT")
        speaker, chapter, _ = utt_id.split("-")
        folder = part_dir / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        _write_flac(row["audio"], folder / f"{utt_id}.flac", f"row {index} ({utt_id}) of {part}")
        transcripts.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(
            f"{utt_id} {' '.join(str(row['text']).split())}"
        )
    if not transcripts:
        raise ValueError(f"the Hugging Face dataset gave no rows for {part}")
    for path, lines in transcripts.items():
        path.write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    (part_dir / HF_INCOMPLETE).unlink()
    return part_dir


def _write_flac(audio: Any, path: Path, where: str) -> None:
    import io

    data = audio.get("bytes") if isinstance(audio, dict) else None
    if not data and isinstance(audio, dict) and audio.get("path"):
        data = Path(audio["path"]).read_bytes()
    if not data:
        raise ValueError(f"{where}: no audio bytes or path")
    if data[:4] == b"fLaC":
        path.write_bytes(data)
        return
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    soundfile.write(path, samples, rate, format="FLAC")
