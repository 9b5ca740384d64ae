"""Property-based tests (hypothesis) of the three readers of untrusted input: the manifest
reader, the text normalizer and the audio loader. Any input either works or gives the one
user error of its kind (a reported manifest line, an `AudioError`); nothing else escapes."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import string
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from asr.audio import AudioError, load_audio, load_audio_array
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.resampling import resampling_ratio
from asr.text import normalize_text

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LINE_BREAKS = "\n\r"  # what splits a manifest into lines

# --------------------------------------------------------------------------------------------
# Manifests

durations = st.floats(min_value=1e-3, max_value=86400.0, allow_nan=False)
# Audio file names with spaces, non-ASCII letters and dots, in sub-folders or outside the folder.
names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"),
    min_size=1,
    max_size=10,
).filter(lambda n: n not in (".", "..") and n.strip() == n)


@SETTINGS
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=10), names, st.booleans(), st.text(max_size=30)),
        max_size=6,
        unique_by=lambda u: u[0],
    ),
    durations,
    st.floats(min_value=0.0, max_value=3600.0),
)
def test_any_utterances_round_trip_through_a_manifest(tmp_path, raw, duration, offset) -> None:
    folder = tmp_path / "m"
    utts = [
        Utterance(i, os.path.normpath((folder if inside else tmp_path / "x") / f"{n}.wav"), t,
                  duration, offset, speaker=t or None)
        for i, n, inside, t in raw
    ]  # fmt: skip
    write_manifest(utts, folder / "m.jsonl")
    assert read_manifest(folder / "m.jsonl") == utts


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
manifest_like = st.fixed_dictionaries(
    {},
    optional={key: json_values for key in ("audio", "text", "duration", "offset", "id", "speaker")},
)
garbage_lines = st.one_of(
    st.text(max_size=40).map(lambda t: t.translate({ord(c): " " for c in LINE_BREAKS})),
    json_values.map(json.dumps),
    manifest_like.map(json.dumps),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")),
)


@SETTINGS
@given(st.lists(garbage_lines, max_size=12), st.randoms(use_true_random=False))
@example(["[" * 50_000 + "]" * 50_000, b"\xe9t\xe9", "\ufeff"], None)
def test_garbage_lines_are_reported_never_raised_and_good_lines_still_load(
    tmp_path, caplog, garbage, rng
) -> None:
    good = [
        json.dumps({"id": f"#good{i}", "audio": "a.wav", "text": "ok", "duration": 1.0})
        for i in range(3)
    ]
    lines = [*good, *garbage]
    if rng is not None:
        rng.shuffle(lines)
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(
        b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        utts = read_manifest(manifest)
    ids = [u.id for u in utts]
    assert [i for i in ids if i.startswith("#good")] == sorted(
        (i for i in ids if i.startswith("#good")), key=lambda i: lines.index(good[int(i[5:])])
    )
    assert {f"#good{i}" for i in range(3)} <= set(ids)
    reported = re.findall(r"skipped (\d+) line\(s\)", caplog.text)
    nonblank = sum(
        1 for x in lines if (x.decode("utf-8", "replace") if isinstance(x, bytes) else x).strip()
    )
    assert len(utts) + int(reported[0] if reported else 0) == nonblank
    for record in caplog.records:  # every reported line names the file and its line number
        for entry in record.getMessage().splitlines()[1:]:
            assert re.match(rf"\s+(\.\.\. and \d+ more|{re.escape(str(manifest))}:\d+: )", entry)


# --------------------------------------------------------------------------------------------
# Text normalizer

SEPARATORS = st.text(st.sampled_from(" \t" + string.punctuation.replace("'", "")), min_size=1)


@settings(max_examples=200, deadline=None)
@given(st.text())
@example("İstanbul ǅ ﬀ Σ'σ ''quoted'' _under_ don't")
def test_normalized_text_is_a_fixed_point_in_canonical_form(text: str) -> None:
    normalized = normalize_text(text)
    assert normalize_text(normalized) == normalized
    assert normalized == normalized.lower() and normalized == normalized.strip()
    assert "  " not in normalized
    for word in normalized.split(" ") if normalized else []:
        assert word and not word.startswith("'") and not word.endswith("'"), normalized
        assert re.fullmatch(r"[\w']+", word) and "_" not in word, word


@settings(max_examples=100, deadline=None)
@given(st.lists(st.from_regex(r"[a-z]+('[a-z]+)?", fullmatch=True), min_size=1, max_size=6),
       st.lists(SEPARATORS, min_size=7, max_size=7))  # fmt: skip
def test_punctuation_and_spacing_between_words_do_not_matter(words, separators) -> None:
    text = separators[0] + "".join(w.upper() + s for w, s in zip(words, separators[1:]))
    assert normalize_text(text) == " ".join(words)


# --------------------------------------------------------------------------------------------
# Audio loader

rates = st.one_of(st.sampled_from([8000, 16000, 22050, 44100, 48000]), st.integers(1000, 200_000))


@SETTINGS
@given(hnp.arrays(np.int16, st.tuples(st.integers(1, 3000), st.integers(1, 3))), rates)
def test_any_int16_audio_at_any_rate_loads_exactly_and_resamples(tmp_path, samples, rate):
    path = tmp_path / "a.wav"
    soundfile.write(path, samples, rate, subtype="PCM_16")
    native = load_audio(path, sample_rate=rate)
    np.testing.assert_allclose(native.numpy(), (samples / 32768.0).mean(axis=1), atol=1e-6)
    wave = load_audio(path)
    orig, new = resampling_ratio(rate, 16000)
    assert wave.shape == (math.ceil(len(samples) * new / orig),)
    assert wave.dtype.is_floating_point and bool(wave.isfinite().all())


@SETTINGS
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 500), st.integers(1, 2))), rates)
def test_any_float_audio_loads_finite_or_fails_with_audio_error(tmp_path, samples, rate):
    path = tmp_path / "f.wav"
    soundfile.write(path, samples, rate, subtype="FLOAT")
    try:
        wave = load_audio(path)
    except AudioError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        assert not np.isfinite(samples).all() or np.abs(samples).max() > 1e30, err
        return
    assert np.isfinite(samples).all() and bool(wave.isfinite().all())


def damaged(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` cut short and with a few bytes overwritten."""
    edits = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=6)
    return st.tuples(st.integers(0, len(data)), edits).map(
        lambda cut_edits: bytes(_apply(bytearray(data), cut_edits[1])[: cut_edits[0] or len(data)])
    )


def _apply(buffer: bytearray, edits: list[tuple[int, int]]) -> bytearray:
    for index, value in edits:
        buffer[index] = value
    return buffer


def _valid_file(suffix: str) -> bytes:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"asr_property_valid.{suffix}"
    soundfile.write(path, np.sin(np.arange(2000) / 10).astype(np.float32) * 0.5, 16000)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_damaged_or_random_files_load_or_fail_with_audio_error(tmp_path, suffix) -> None:
    @SETTINGS
    @given(st.one_of(st.binary(max_size=200), damaged(_valid_file(suffix))))
    def check(data: bytes) -> None:
        path = tmp_path / f"x.{suffix}"
        path.write_bytes(data)
        try:
            wave = load_audio(path)
        except AudioError as err:
            assert str(path) in str(err) and "\n" not in str(err)
            return
        assert wave.ndim == 1 and len(wave) > 0 and bool(wave.isfinite().all())

    check()


dtypes = st.sampled_from(
    [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.float16, np.float32,
     np.float64, np.bool_, np.complex64]
)  # fmt: skip


@SETTINGS
@given(
    dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, max_side=40))),
    st.integers(-10, 300_000),
)
def test_in_memory_arrays_of_any_kind_load_or_fail_with_audio_error(samples, rate) -> None:
    try:
        wave = load_audio_array(samples, rate, name="row-7")
    except AudioError as err:
        assert "'row-7'" in str(err) and "\n" not in str(err)
        return
    assert wave.ndim == 1 and len(wave) > 0 and bool(wave.isfinite().all())
    if rate == 16000:
        assert len(wave) == samples.shape[0]
