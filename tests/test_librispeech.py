"""asr.corpora.librispeech and recipes/librispeech on the real LibriSpeech sample (librispeech-mini);
the official LM files (OpenSLR SLR11) stood in for by small ones served on 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import math
import os
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
import soundfile

from asr.checkpoint import load_bundle
from asr.corpora import librispeech
from asr.corpora.download import DownloadError
from asr.corpora.librispeech import (
    download_librispeech,
    download_lm,
    gunzip,
    lexicon_words,
    lm_mirror,
    part_utterances,
    prepare_manifests,
    read_transcripts,
    write_hf_part,
)
from asr.data.manifest import read_manifest
from asr.inference.lexicon import read_lexicon, spell_word
from asr.inference.lm import BOS, EOS, UNK, NgramLM, arpa_words, train_ngram
from asr.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
NO_SERVER = "http://127.0.0.1:9"  # the discard port: any download attempt would fail
MINI_PARTS = {"train-clean-5": 70, "dev-clean": 1, "test-clean": 5}


def load_recipe(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"recipe_{name}", REPO / "recipes" / name / "run.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trans_txt_without_final_newline_keeps_its_last_line(librispeech_mini: Path):
    path = librispeech_mini / "test-clean/1089/134686/1089-134686.trans.txt"
    assert not path.read_bytes().endswith(b"\n")
    pairs = read_transcripts(path)
    assert [utt_id for utt_id, _ in pairs] == ["1089-134686-0000", "1089-134686-0001"]
    assert pairs[1][1] == "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM"


def test_malformed_transcript_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "1-2.trans.txt"
    path.write_text("1-2-0000 HELLO THERE\nnot-an-id SOMETHING\n")
    with pytest.raises(ValueError, match=r"1-2.trans.txt:2: expected"):
        read_transcripts(path)


def test_manifests_hold_every_utterance_with_header_durations(librispeech_mini, tmp_path):
    paths = prepare_manifests(librispeech_mini, tmp_path, list(MINI_PARTS), num_workers=2)
    for part, count in MINI_PARTS.items():
        utterances = read_manifest(paths[part])
        assert len(utterances) == count
        for utt in utterances:
            speaker, chapter, _ = utt.id.split("-")
            assert speaker == utt.speaker
            assert Path(utt.audio) == librispeech_mini / part / speaker / chapter / f"{utt.id}.flac"
            assert math.isclose(utt.duration, soundfile.info(utt.audio).duration, abs_tol=1e-6)
            assert utt.text == utt.text.upper() and utt.text.strip()
    test = {u.id: u.text for u in read_manifest(paths["test-clean"])}
    assert test["1089-134686-0001"] == "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM"


def test_parts_already_extracted_are_not_downloaded(librispeech_mini: Path):
    parts = list(MINI_PARTS)  # train-clean-5 is not on OpenSLR resource 12: never fetched here
    assert download_librispeech(librispeech_mini.parent, parts, NO_SERVER) == librispeech_mini
    assert download_librispeech(librispeech_mini, parts, NO_SERVER) == librispeech_mini


def test_unknown_part_to_download_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown LibriSpeech part 'train-clean-5'"):
        download_librispeech(tmp_path, ["train-clean-5"], NO_SERVER)


def test_hugging_face_rows_written_back_give_the_same_utterances(librispeech_mini, tmp_path):
    datasets = pytest.importorskip("datasets")
    original = part_utterances(librispeech_mini / "test-clean")
    rows = datasets.Dataset.from_dict(
        {
            "id": [u.id for u in original],
            "text": [u.text for u in original],
            "audio": [{"bytes": Path(u.audio).read_bytes(), "path": None} for u in original],
        }
    ).cast_column("audio", datasets.Audio(decode=False))
    part_dir = write_hf_part(rows, tmp_path / "LibriSpeech", "test-clean")
    copied = part_utterances(part_dir)
    assert [(u.id, u.text, u.duration, u.speaker) for u in copied] == [
        (u.id, u.text, u.duration, u.speaker) for u in original
    ]
    assert all(Path(a.audio).read_bytes() == Path(b.audio).read_bytes()
               for a, b in zip(copied, original))  # fmt: skip
    assert not (part_dir / ".hf-incomplete").exists()


# --------------------------------------------------------------------------------------------
# The LM resources of OpenSLR SLR11, served from a local folder

LM_NAME = "3-gram.pruned.1e-7"
UNSPELLABLE = "NAÏVETÉ"  # characters no tokenizer trained on LibriSpeech text has


def uppercase_lm(lm: NgramLM) -> NgramLM:
    """The model with its words in capitals, as the official ARPA files write them."""

    def upper(gram: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(w if w in (BOS, EOS, UNK) else w.upper() for w in gram)

    return NgramLM(lm.order, {upper(g): p for g, p in lm.logprobs.items()},
                   {upper(g): b for g, b in lm.backoffs.items()})  # fmt: skip


def write_slr11(folder: Path, corpus: Path) -> dict[str, bytes]:
    """A gzipped 3-gram of the train-clean-5 transcripts and a lexicon of their words with
    made-up phonemes (two pronunciations for one word, TAB or space separated); name -> bytes."""
    texts = [t for trans in sorted((corpus / "train-clean-5").glob("*/*/*.trans.txt"))
             for _, t in read_transcripts(trans)]  # fmt: skip
    arpa = uppercase_lm(train_ngram(texts, order=3)).write_arpa(folder / "lm.arpa").read_bytes()
    words = sorted({w for t in texts for w in t.split()})
    lines = [f"{w}\t{' '.join(w[:3])}" for w in words] + [f"{words[0]} X Y", f"{UNSPELLABLE} N"]
    files = {f"{LM_NAME}.arpa.gz": gzip.compress(arpa), librispeech.LEXICON_NAME:
             ("\n".join(lines) + "\n").encode()}  # fmt: skip
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {**files, "arpa": arpa}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slr11(librispeech_mini: Path, tmp_path: Path, monkeypatch) -> Iterator[tuple[str, dict]]:
    """(URL, files) of a local SLR11 folder; the MD5 table holds the sums of these files."""
    served = tmp_path / "slr11"
    served.mkdir()
    files = write_slr11(served, librispeech_mini)
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    monkeypatch.setitem(librispeech.LM_ARPAS, LM_NAME, md5[f"{LM_NAME}.arpa.gz"])
    monkeypatch.setattr(librispeech, "LEXICON_MD5", md5[librispeech.LEXICON_NAME])
    handler = functools.partial(QuietHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


def test_lm_download_decompresses_the_arpa_and_keeps_both_files(slr11, tmp_path: Path):
    url, files = slr11
    arpa, lexicon = download_lm(tmp_path / "lm", LM_NAME, url)
    assert arpa == tmp_path / "lm" / f"{LM_NAME}.arpa" and arpa.read_bytes() == files["arpa"]
    assert lexicon.read_bytes() == files[librispeech.LEXICON_NAME]
    words = arpa_words(arpa)
    assert "ABOUT" in words and all(w == w.upper() for w in words)  # capitals, as served
    assert (tmp_path / "lm" / f"{LM_NAME}.arpa.gz.md5").is_file()  # checked against LM_ARPAS
    assert not list((tmp_path / "lm").glob("*.part"))
    stamp = arpa.stat().st_mtime_ns
    assert download_lm(tmp_path / "lm", LM_NAME, NO_SERVER) == (arpa, lexicon)  # no fetch
    assert arpa.stat().st_mtime_ns == stamp


def test_lm_download_with_another_md5_stops_and_keeps_the_file_aside(slr11, tmp_path, monkeypatch):
    monkeypatch.setitem(librispeech.LM_ARPAS, LM_NAME, "0" * 32)
    with pytest.raises(DownloadError, match=f"MD5 mismatch for {LM_NAME}.arpa.gz"):
        download_lm(tmp_path, LM_NAME, slr11[0])
    assert (tmp_path / f"{LM_NAME}.arpa.gz.bad").is_file()
    assert not (tmp_path / f"{LM_NAME}.arpa").exists()


def test_unknown_lm_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown LibriSpeech LM '5-gram'"):
        download_lm(tmp_path, "5-gram", NO_SERVER)


def test_gunzip_of_a_cut_archive_leaves_no_file(tmp_path: Path):
    archive = tmp_path / "lm.arpa.gz"
    archive.write_bytes(gzip.compress(b"\\data\\\n" * 1000)[:-20])
    with pytest.raises(ValueError, match="cannot decompress"):
        gunzip(archive, tmp_path / "lm.arpa")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.arpa.gz"]


def test_lexicon_words_are_the_first_column_once_each(tmp_path: Path):
    path = tmp_path / "lexicon.txt"
    path.write_text("A\tAH0\nA\tEY1\nABBE  AE1 B IY0\n\nZOO Z UW1\n")
    assert lexicon_words(path) == ["A", "ABBE", "ZOO"]


@pytest.mark.parametrize(
    "mirror, expected",
    [
        ("openslr", "https://www.openslr.org/resources/11"),
        ("eu", "https://openslr.elda.org/resources/11"),
        ("https://example.org/resources/12/", "https://example.org/resources/11"),
        ("http://127.0.0.1:8000/slr", "http://127.0.0.1:8000/slr"),
    ],
)
def test_lm_files_come_from_the_corpus_mirror_host(mirror: str, expected: str):
    assert lm_mirror(mirror) == expected


TINY = [
    "model=xs",
    "trainer.max_steps=2",
    "trainer.val_every_n_steps=1",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.progress_bar=false",
    "data.num_workers=0",
    "data.max_batch_seconds=20",
    "tokenizer.vocab_size=64",
]


def test_recipe_runs_every_stage_after_download_and_reruns_as_a_no_op(
    librispeech_mini, slr11, tmp_path, capsys
):
    recipe = load_recipe("librispeech")
    work, (url, _) = tmp_path / "work", slr11
    argv = ["--work-dir", str(work), "--data-dir", str(librispeech_mini.parent), "--mirror",
            url, "--train-parts", "train-clean-5", "--dev-parts", "dev-clean",
            "--test-parts", "test-clean", "--nj", "2", "--device", "cpu", *TINY]  # fmt: skip
    assert recipe.main(argv) == 0  # the corpus parts are there: only the LM files are fetched

    manifests = work / "manifests"
    assert len(read_manifest(manifests / "train.jsonl")) == 70
    assert len(read_manifest(manifests / "dev.jsonl")) == 1
    tokenizer = load_tokenizer(work / "tokenizer_unigram64.json")
    assert tokenizer.kind == "unigram" and tokenizer.vocab_size == 64
    exp = work / "exp_s"
    assert (exp / "model.pt").is_file() and (exp / "model_best2.pt").is_file()

    # stage 6: the official words (not their phonemes) spelled with the model's word pieces
    arpa, lexicon = work / "lm" / f"{LM_NAME}.arpa", exp / "lm" / "lexicon.txt"
    model_tokenizer = load_bundle(exp / "model.pt").tokenizer
    words = lexicon_words(work / "lm" / librispeech.LEXICON_NAME)
    spellings = read_lexicon(lexicon, model_tokenizer)
    assert UNSPELLABLE in words and UNSPELLABLE not in spellings
    assert spellings == {w: [spell_word(w, model_tokenizer)] for w in words if w != UNSPELLABLE}

    # stage 7: every model on every part, greedy and with the LM at the weights chosen on dev
    # for that model (greedy where the LM does not beat it there)
    printed = capsys.readouterr().out
    results = json.loads((exp / "RESULTS.json").read_text())
    table = (exp / "RESULTS.md").read_text()
    known = {w.lower() for w in words}
    dev = manifests / "dev.jsonl"
    for model in ("model", "model_best2"):
        tuned_file = exp / "lm" / f"{model}.tuned.json"
        tuned = json.loads(tuned_file.read_text())
        assert results[f"{model}.pt"]["tuned"]["decoding"] == tuned["decoding"]
        lm_test = exp / "eval" / model / LM_NAME / "test-clean"
        assert (f"{lm_test} --device cpu --lm {arpa} --lexicon {lexicon} --tune-lm {dev} "
                f"--tune-lm-output {tuned_file}") in printed  # fmt: skip
        for part, count in (("dev-clean", 1), ("test-clean", 5)):
            for decoding, out in (("greedy", exp / "eval" / model / part),
                                  (LM_NAME, exp / "eval" / model / LM_NAME / part)):  # fmt: skip
                summary = json.loads((out / "summary.json").read_text())
                assert summary["num_utterances"] == count
                assert summary["words"]["ref_words"] > 0 and 0.0 <= summary["wer"] < 10.0
                assert results[f"{model}.pt"][decoding][part] == 100 * summary["wer"]
            hypotheses = exp / "eval" / model / LM_NAME / part / "transcripts.jsonl"
            words_out = {w for h in hypotheses.read_text().splitlines()
                         for w in json.loads(h)["text"].split()}  # fmt: skip
            if tuned["decoding"] == "lm":
                assert words_out <= known
            else:  # the LM lost on dev: every part decoded greedily, as the greedy rows
                assert (
                    results[f"{model}.pt"][LM_NAME][part] == results[f"{model}.pt"]["greedy"][part]
                )
        assert tuned["greedy_val_wer"] * 100 == pytest.approx(
            results[f"{model}.pt"]["greedy"]["dev-clean"]
        )  # dev.jsonl is dev-clean here: the search's greedy pass is the evaluation's
        for decoding in ("greedy", LM_NAME):
            wers = results[f"{model}.pt"][decoding]
            cells = f"| {wers['dev-clean']:.2f} | {wers['test-clean']:.2f} |"
            assert any(line.startswith(f"| {model}.pt | {decoding}") and line.endswith(cells)
                       for line in table.splitlines())  # fmt: skip
        # the configs train chunk-aware models: each test part also scored live, decoded as
        # reported for that model (the LM's flags only where it won on dev)
        live_dir = exp / "eval" / model / "live" / "test-clean"
        live = json.loads((live_dir / "summary.json").read_text())
        assert live["num_utterances"] == 5
        assert results[f"{model}.pt"]["live"] == {"test-clean": 100 * live["wer"]}
        command = next(line for line in printed.splitlines() if f"--output-dir {live_dir} " in line)
        assert "--streaming" in command and ("--lm" in command) == (tuned["decoding"] == "lm")
        assert (f"| {model}.pt | live (480 + 160 ms chunks, decoded as reported) | - | "
                f"{100 * live['wer']:.2f} |") in table  # fmt: skip

    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    assert recipe.main(argv) == 0  # every stage finds its output and reuses it
    changed = sorted(p.name for p in stamps if p.stat().st_mtime_ns != stamps[p])
    assert changed == ["RESULTS.json", "RESULTS.md"]


def test_recipe_refuses_stage_numbers_out_of_range(tmp_path: Path):
    recipe = load_recipe("librispeech")
    with pytest.raises(SystemExit, match="--stop-stage"):
        recipe.main(["--work-dir", str(tmp_path), "--stage", "3", "--stop-stage", "8"])
    assert not os.listdir(tmp_path)
