"""`open_corpus`: every kind of corpus gives the same ids, texts, durations and inputs, and a
corpus that is not there is named in one line."""

from __future__ import annotations

import shutil

import pytest
import soundfile
from conftest import tone_corpus

from asr.audio import AudioError, AudioSegment
from asr.data.corpus import open_corpus
from asr.data.manifest import read_manifest


def test_a_manifest_gives_its_utterances_in_order(tmp_path):
    manifest = tone_corpus(tmp_path, 5)
    corpus = open_corpus(manifest)
    utts = read_manifest(manifest)
    assert corpus.ids == [u.id for u in utts] and corpus.texts == [u.text for u in utts]
    assert corpus.durations == [u.duration for u in utts]
    segment, path = corpus.item(2)
    assert segment == AudioSegment(utts[2].audio, utts[2].offset, utts[2].duration, id=utts[2].id)
    assert path == utts[2].audio


def test_a_folder_of_audio_is_a_corpus_without_texts_named_by_relative_path(tmp_path):
    (tmp_path / "src").mkdir()
    manifest = tone_corpus(tmp_path / "src", 3)
    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    utts = read_manifest(manifest)
    shutil.copy(utts[0].audio, folder / "a.wav")
    shutil.copy(utts[1].audio, folder / "sub" / "b.wav")
    (folder / "notes.txt").write_text("not audio")
    corpus = open_corpus(folder)
    assert corpus.ids == ["a", "sub/b"] and corpus.texts == [None, None]
    assert corpus.durations == pytest.approx([utts[0].duration, utts[1].duration], abs=1e-3)
    assert corpus.item(1)[1] == str(folder / "sub" / "b.wav")
    assert soundfile.info(corpus.item(0)[0].path).frames > 0


def test_a_row_that_cannot_be_read_comes_back_as_its_error(tmp_path):
    manifest = tone_corpus(tmp_path, 2)
    corpus = open_corpus(manifest)
    corpus._items = lambda i: (_ for _ in ()).throw(AudioError("row 1: damaged"))
    error, path = corpus.item(1)
    assert isinstance(error, AudioError) and str(error) == "row 1: damaged" and path is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.jsonl", "corpus not found: {tmp}/missing.jsonl (no such file or folder)"),
        ("missing-folder/", "corpus not found: {tmp}/missing-folder (no such file or folder)"),
        ("empty", "{tmp}/empty: no corpus there: not a manifest file, a folder written by "
                  "`asr pack`, a Hugging Face dataset, nor a folder of audio files"),
    ],
)  # fmt: skip
def test_a_corpus_that_is_not_there_is_named_in_one_line(tmp_path, name, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as raised:
        open_corpus(tmp_path / name)
    assert str(raised.value) == message.format(tmp=tmp_path)
