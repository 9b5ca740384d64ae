"""Tests for asr/data.py: manifests, filtering, datasets, collate, the bucketing sampler."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.audio import audio_duration
from asr.augment import WaveAugment
from asr.config import AugmentConfig
from asr.data.dataset import AudioDataset, collate
from asr.data.hf import HFAudioDataset, HFUtterances, load_hf_utterances
from asr.data.manifest import (
    Utterance,
    ctc_min_frames,
    filter_utterances,
    read_manifest,
    write_manifest,
)
from asr.data.sampler import DurationBucketSampler
from asr.data.stream import StreamingAudioDataset, collate_stream
from asr.tokenizer import CharTokenizer

LIBRISPEECH_MINI = Path(__file__).resolve().parents[1].parent / "shared/data/librispeech-mini"
SR = 16000


def write_wav(path: Path, seconds: float, value: float | None = None) -> Path:
    """A mono 16 kHz file; a ramp (sample i = i / N) unless a constant `value` is given."""
    n = round(seconds * SR)
    samples = np.full(n, value, np.float32) if value is not None else np.arange(n) / n
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples.astype(np.float32), SR, subtype="FLOAT")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --------------------------------------------------------------------------------------------
# Manifests


def test_relative_audio_paths_resolve_to_the_manifest_folder(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    manifest = write_lines(
        folder / "train.jsonl",
        [
            '{"audio": "wav/a.flac", "text": "hi", "duration": 1.5}',
            f'{{"audio": "{tmp_path}/b.flac", "text": "yo", "duration": 2}}',
        ],
    )
    a, b = read_manifest(manifest)
    assert a.audio == str(folder / "wav" / "a.flac") and a.id == "a" and a.duration == 1.5
    assert b.audio == str(tmp_path / "b.flac") and b.duration == 2.0 and b.offset == 0.0


def test_default_id_is_the_stem_plus_the_offset(tmp_path):
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [
            '{"audio": "long.wav", "text": "a", "duration": 1, "offset": 12.5}',
            '{"audio": "long.wav", "text": "b", "duration": 1, "offset": 0}',
            '{"audio": "long.wav", "text": "c", "duration": 1, "id": "mine", "speaker": 32}',
        ],
    )
    assert [(u.id, u.offset, u.speaker) for u in read_manifest(manifest)] == [
        ("long_12.5", 12.5, None),
        ("long_0", 0.0, None),
        ("mine", 0.0, "32"),
    ]


def test_each_bad_line_is_reported_with_file_and_line_and_valid_lines_load(tmp_path, caplog):
    good = '{"audio": "ok%d.wav", "text": "fine", "duration": 1.0}'
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [
            good % 1,
            '{"audio": "x.wav", "text": "a", "duration": 1.0',  # 2: invalid JSON
            '{"audio": "x.wav", "duration": 1.0}',  # 3: missing text
            '{"audio": "x.wav", "text": 5, "duration": 1.0}',  # 4: text not a string
            '{"audio": "x.wav", "text": "a", "duration": -1}',  # 5: negative
            '{"audio": "x.wav", "text": "a", "duration": NaN}',  # 6: NaN
            '{"audio": "x.wav", "text": "a", "duration": 160000}',  # 7: milliseconds, not s
            '{"audio": "x.wav", "text": "a", "duration": "3"}',  # 8: string duration
            "",  # 9: blank lines are ignored
            '["x.wav", "a", 1.0]',  # 10: not an object
            good % 2,
            '{"audio": "ok1.wav", "text": "again", "duration": 2.0}',  # 12: duplicate id
        ],
    )
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        utts = read_manifest(manifest)
    assert [(u.id, u.text) for u in utts] == [("ok1", "fine"), ("ok2", "fine")]
    (message,) = warnings_of(caplog)
    assert "skipped 9 line(s)" in message
    for line_no, reason in [
        (2, "invalid JSON"),
        (3, "missing field 'text'"),
        (4, "'text' must be a string"),
        (5, "'duration' must be in (0, 86400] seconds, got -1.0"),
        (6, "'duration' must be finite"),
        (7, "'duration' must be in (0, 86400] seconds, got 160000.0"),
        (8, "'duration' must be a number"),
        (10, "expected a JSON object"),
        (12, "duplicate id 'ok1' (first on line 1)"),
    ]:
        assert f"{manifest}:{line_no}: {reason}" in message
    assert f"{manifest}:9:" not in message


def test_bad_line_listing_is_capped_and_counted(tmp_path, caplog):
    manifest = write_lines(tmp_path / "m.jsonl", ["not json"] * 30)
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        assert read_manifest(manifest) == []
    (message,) = warnings_of(caplog)
    assert f"{manifest}:20:" in message and f"{manifest}:21:" not in message
    assert "skipped 30 line(s)" in message and "and 10 more" in message


def test_missing_manifest_raises_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        read_manifest(tmp_path / "nowhere.jsonl")


def test_write_manifest_is_relative_inside_its_folder_and_absolute_outside(tmp_path):
    inside = Utterance("a", str(tmp_path / "m" / "wav" / "a.flac"), "x", 1.0)
    outside = Utterance("b", str(tmp_path / "elsewhere" / "b.flac"), "y", 2.0, 0.5, "s1")
    write_manifest([inside, outside], tmp_path / "m" / "train.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "m" / "train.jsonl").read_text().splitlines()]
    assert lines[0] == {"id": "a", "audio": "wav/a.flac", "text": "x", "duration": 1.0}
    assert lines[1]["audio"] == str(tmp_path / "elsewhere" / "b.flac")
    assert lines[1]["offset"] == 0.5 and lines[1]["speaker"] == "s1"
    assert read_manifest(tmp_path / "m" / "train.jsonl") == [inside, outside]


utterance_strategy = st.builds(
    lambda id_, rel, text, duration, offset, speaker: (id_, rel, text, duration, offset, speaker),
    st.text(min_size=1, max_size=12),
    st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_]{1,8}){0,2}\.(wav|flac)", fullmatch=True),
    st.text(max_size=40),
    st.floats(min_value=1e-3, max_value=86400.0, allow_nan=False),
    st.floats(min_value=0.0, max_value=3600.0, allow_nan=False),
    st.none() | st.text(min_size=1, max_size=8),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(utterance_strategy, max_size=8, unique_by=lambda u: u[0]))
def test_write_then_read_round_trips_any_valid_utterances(tmp_path, raw):
    folder = tmp_path / "prop"
    utts = [
        Utterance(i, os.path.normpath(folder / rel), text, dur, off, spk)
        for i, rel, text, dur, off, spk in raw
    ]
    write_manifest(utts, folder / "m.jsonl")
    assert read_manifest(folder / "m.jsonl") == utts


# --------------------------------------------------------------------------------------------
# Filtering


def test_ctc_min_frames_counts_a_blank_between_repeats():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([3, 4, 5]) == 3
    assert ctc_min_frames([3, 3, 3, 4, 4]) == 8


def test_filter_reports_each_reason_with_its_ids(tmp_path, caplog):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz")
    wav = str(write_wav(tmp_path / "a.wav", 0.1))

    def frames(seconds: float) -> int:  # 10 ms frames, subsampled 4x: 25 frames a second
        return int(seconds * 100) // 4

    utts = [
        Utterance("ok", wav, "hello", 1.0),
        Utterance("missing", str(tmp_path / "gone.wav"), "hello", 1.0),
        Utterance("short", wav, "hello", 0.05),
        Utterance("long", wav, "hello", 40.0),
        Utterance("empty", wav, " ?! ", 1.0),
        Utterance("unknown", wav, "naïve 42", 1.0),
        Utterance("ctc", wav, "abcdefghijklmnopqrstuvwxyz", 1.0),  # 26 tokens > 25 frames
        Utterance("repeats", wav, "a" * 14, 1.0),  # 14 tokens, but 14 + 13 repeats = 27 frames
        Utterance("fits", wav, "a" * 14, 1.08),  # 27 frames
    ]
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        kept, skipped = filter_utterances(utts, tok, frames, 0.1, 30.0)
    assert [u.id for u in kept] == ["ok", "fits"]
    assert skipped == {
        "missing audio file": ["missing"],
        "shorter than min_duration=0.1s": ["short"],
        "longer than max_duration=30.0s": ["long"],
        "empty transcript": ["empty"],
        "text has characters unknown to the tokenizer": ["unknown"],
        "audio too short for its transcript under CTC": ["ctc", "repeats"],
    }
    (message,) = warnings_of(caplog)
    assert "kept 2 of 9" in message and "under CTC: 2 (e.g. ctc, repeats)" in message
    kept, _ = filter_utterances(utts[:2], tok, frames, 0.1, 30.0, check_files=False)
    assert [u.id for u in kept] == ["ok", "missing"]


# --------------------------------------------------------------------------------------------
# Datasets and collate


def test_dataset_item_holds_wave_tokens_and_normalized_text(tmp_path):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz")
    wav = write_wav(tmp_path / "a.wav", 0.5)
    item = AudioDataset([Utterance("a", str(wav), "Hello, World", 0.5)], tok)[0]
    assert item["id"] == "a" and item["text"] == "hello world"
    assert item["wave"].shape == (8000,) and item["wave"].dtype == torch.float32
    assert item["tokens"].dtype == torch.long and item["tokens"].tolist() == tok.encode(
        "hello world"
    )


def test_dataset_reads_only_the_utterance_segment(tmp_path):
    wav = write_wav(tmp_path / "ramp.wav", 2.0)
    tok = CharTokenizer("a")
    item = AudioDataset([Utterance("s", str(wav), "a", 0.25, offset=1.0)], tok)[0]
    assert item["wave"].shape == (4000,)
    assert item["wave"][0].item() == pytest.approx(16000 / 32000)
    assert item["wave"][-1].item() == pytest.approx(19999 / 32000)


def test_dataset_returns_none_and_counts_unreadable_audio(tmp_path, caplog):
    bad = tmp_path / "corrupt.flac"
    bad.write_bytes(b"this is not audio at all" * 10)
    ok = write_wav(tmp_path / "ok.wav", 0.2)
    tok = CharTokenizer("a")
    ds = AudioDataset(
        [Utterance("bad", str(bad), "a", 1.0), Utterance("ok", str(ok), "a", 0.2)], tok
    )
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        assert ds[0] is None
    assert ds.num_failed == 1 and ds[1] is not None and ds.num_failed == 1
    (message,) = warnings_of(caplog)
    assert "corrupt.flac" in message


def test_augmentation_is_deterministic_per_seed_epoch_and_index(tmp_path):
    wav = write_wav(tmp_path / "a.wav", 0.5)
    utts = [Utterance(f"u{i}", str(wav), "a", 0.5) for i in range(8)]
    augment = WaveAugment(AugmentConfig(speed_factors=(0.8, 1.0, 1.25)))
    tok = CharTokenizer("a")

    def lengths(seed: int, epoch: int) -> list[int]:
        ds = AudioDataset(utts, tok, wave_augment=augment, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i]["wave"].shape[0] for i in range(len(ds))]

    assert lengths(0, 0) == lengths(0, 0)
    assert lengths(0, 0) != lengths(0, 1)
    assert lengths(0, 0) != lengths(1, 0)
    assert set(lengths(0, 0)) <= {6400, 8000, 10000}


def test_collate_pads_with_zeros_and_keeps_lengths():
    items = [
        {"id": "a", "wave": torch.ones(3), "tokens": torch.tensor([5, 6]), "text": "x"},
        None,
        {"id": "b", "wave": torch.full((5,), 2.0), "tokens": torch.tensor([7]), "text": "y"},
    ]
    batch = collate(items)
    assert len(batch) == 2 and batch.ids == ["a", "b"] and batch.texts == ["x", "y"]
    assert batch.waves.tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]
    assert batch.wave_lengths.tolist() == [3, 5] and batch.wave_lengths.dtype == torch.long
    assert batch.targets.tolist() == [[5, 6], [7, 0]] and batch.targets.dtype == torch.long
    assert batch.target_lengths.tolist() == [2, 1]
    moved = batch.to("cpu")
    assert torch.equal(moved.waves, batch.waves) and moved.ids == batch.ids
    assert collate([None, None]) is None


# --------------------------------------------------------------------------------------------
# DurationBucketSampler


def durations_for_tests(n: int = 203, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 16.0, size=n).round(2).tolist()


def all_batches(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_sampler_yields_every_index_once_within_the_seconds_cap():
    durs = [*durations_for_tests(), 45.0]  # one longer than the cap: it goes alone
    sampler = DurationBucketSampler(durs, max_batch_seconds=40.0, num_buckets=8)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = all_batches(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(durs)))
        for b in batches:
            assert len(b) == 1 or len(b) * max(durs[i] for i in b) <= 40.0
        assert [len(durs) - 1] in batches


def test_sampler_same_seed_same_batches_and_epochs_differ():
    durs = durations_for_tests()
    a = DurationBucketSampler(durs, 60.0, seed=3)
    b = DurationBucketSampler(durs, 60.0, seed=3)
    assert all_batches(a) == all_batches(b)
    first = all_batches(a)
    a.set_epoch(1)
    assert all_batches(a) != first
    assert all_batches(DurationBucketSampler(durs, 60.0, seed=4)) != first


def test_sampler_stopped_at_its_length_starts_over_on_the_next_pass():
    # A DataLoader takes len(sampler) batches and never resumes the generator past the last one,
    # as validation every N steps does: each pass must still see every batch.
    sampler = DurationBucketSampler(durations_for_tests(50), 30.0, shuffle=False)
    passes = []
    for _ in range(3):
        iterator = iter(sampler)
        passes.append([next(iterator) for _ in range(len(sampler))])
    assert len(passes[0]) > 1 and passes[0] == passes[1] == passes[2]


def test_sampler_without_shuffle_is_sorted_by_duration():
    durs = durations_for_tests(50)
    flat = [i for b in DurationBucketSampler(durs, 30.0, shuffle=False) for i in b]
    assert [durs[i] for i in flat] == sorted(durs)


@pytest.mark.parametrize("num_replicas", [2, 3, 4])  # 51 batches: split 1, none, 1
def test_ranks_get_equal_disjoint_batches_covering_everything(num_replicas):
    durs = durations_for_tests()
    for epoch in range(4):
        per_rank = []
        for rank in range(num_replicas):
            sampler = DurationBucketSampler(durs, 50.0, num_replicas=num_replicas, rank=rank)
            sampler.set_epoch(epoch)
            per_rank.append(all_batches(sampler))
        assert len({len(batches) for batches in per_rank}) == 1
        flat = [i for batches in per_rank for b in batches for i in b]
        assert sorted(flat) == list(range(len(durs)))


def test_drop_last_drops_surplus_batches_and_single_items_repeat():
    durs = durations_for_tests()
    total = len(DurationBucketSampler(durs, 50.0))
    dropped = [len(DurationBucketSampler(durs, 50.0, num_replicas=4, rank=r, drop_last=True))
               for r in range(4)]  # fmt: skip
    assert dropped == [total // 4] * 4
    # 5 utterances, each longer than half the cap: no batch can be split, so one repeats.
    ranks = [all_batches(DurationBucketSampler([30.0] * 5, 50.0, num_replicas=2, rank=r))
             for r in range(2)]  # fmt: skip
    assert [len(batches) for batches in ranks] == [3, 3]
    flat = sorted(i for batches in ranks for b in batches for i in b)
    assert len(flat) == 6 and set(flat) == set(range(5))


def test_resuming_mid_epoch_yields_exactly_the_remaining_batches():
    durs = durations_for_tests()
    sampler = DurationBucketSampler(durs, 50.0, seed=7, num_replicas=2, rank=1)
    sampler.set_epoch(2)
    uninterrupted = all_batches(sampler)
    sampler.set_epoch(2)
    partial = []
    for batch in sampler:
        partial.append(batch)
        if len(partial) == 5:
            break
    state = sampler.state_dict()
    assert state == {"epoch": 2, "num_yielded": 5}
    resumed = DurationBucketSampler(durs, 50.0, seed=7, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what a trainer does at the start of the resumed epoch
    assert len(resumed) == len(uninterrupted) - 5
    assert partial + all_batches(resumed) == uninterrupted
    assert all_batches(resumed) == uninterrupted  # the next pass is a whole epoch again


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_batch_seconds"):
        DurationBucketSampler([1.0], 0.0)
    with pytest.raises(ValueError, match="rank"):
        DurationBucketSampler([1.0], 10.0, num_replicas=2, rank=2)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (a tiny dataset saved locally; no network)


@pytest.fixture
def hf_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    waves = [write_wav(tmp_path / f"w{i}.wav", 0.1 * (i + 1), value=0.1 * i) for i in range(5)]
    ds = datasets.Dataset.from_dict(
        {"audio": [str(w) for w in waves], "text": [f"Row {c}!" for c in "abcde"]}
    ).cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    return tmp_path


def test_hf_dataset_items_match_audio_dataset_items(hf_folder):
    tok = CharTokenizer("abcdeorw")
    source = load_hf_utterances(str(hf_folder / "hf"), "train")
    hf = HFAudioDataset(source, tok)
    assert len(hf) == 5
    assert hf.durations() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    utts = [Utterance(f"w{i}", str(hf_folder / f"w{i}.wav"), f"Row {c}!", 0.1 * (i + 1))
            for i, c in enumerate("abcde")]  # fmt: skip
    local = AudioDataset(utts, tok)
    for i in range(5):
        a, b = hf[i], local[i]
        assert a["id"] == b["id"] and a["text"] == b["text"] == f"row {'abcde'[i]}"
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["wave"], b["wave"])
    strict = HFAudioDataset(source, CharTokenizer("abcdeor"))  # no "w": every row is unusable
    assert strict[0] is None and strict.num_failed == 1
    with pytest.raises(ValueError, match="no split 'test'"):
        load_hf_utterances(str(hf_folder / "hf"), "test")
    with pytest.raises(ValueError, match="no column 'sentence'"):
        load_hf_utterances(str(hf_folder / "hf"), "train", text_column="sentence")


@pytest.mark.parametrize("num_shards", [1, 4])  # 1: every worker but one idle; 4: shared
def test_streamed_workers_produce_each_row_once(hf_folder, num_shards):
    import datasets

    tok = CharTokenizer("abcdeorw")
    assert load_hf_utterances(str(hf_folder / "hf"), "train", streaming=True).streaming
    saved = datasets.load_from_disk(str(hf_folder / "hf"))["train"]
    source = HFUtterances(saved.to_iterable_dataset(num_shards))
    ds = StreamingAudioDataset(source, tok, 0.6, shuffle_buffer=2, num_workers=2)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, collate_fn=collate_stream
    )
    batches = [batch.ids for batch in loader]
    assert sorted(i for ids in batches for i in ids) == [f"w{i}" for i in range(5)]
    assert max(len(ids) for ids in batches) > 1  # bucketed: 0.1 s and 0.2 s rows share
    with pytest.raises(ValueError, match="several processes needs a 'duration' column"):
        StreamingAudioDataset(source, tok, 0.6, num_replicas=2, rank=0)


# --------------------------------------------------------------------------------------------
# Real LibriSpeech files


def test_librispeech_mini_loads_through_audio_dataset(tmp_path):
    if not LIBRISPEECH_MINI.is_dir():
        pytest.skip(f"LibriSpeech mini not found at {LIBRISPEECH_MINI}")
    utts = []
    for trans in sorted(LIBRISPEECH_MINI.glob("LibriSpeech/*/*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            flac = trans.parent / f"{utt_id}.flac"
            utts.append(Utterance(utt_id, str(flac), text, audio_duration(flac)))
    write_manifest(utts, tmp_path / "ls.jsonl")
    utts = read_manifest(tmp_path / "ls.jsonl")
    assert len(utts) == 76
    tok = CharTokenizer.from_texts(u.text for u in utts)
    kept, skipped = filter_utterances(utts, tok, lambda s: int(s * 25), 0.5, 40.0)
    assert skipped == {} and len(kept) == 76
    ds = AudioDataset(kept, tok)
    sampler = DurationBucketSampler(ds.durations(), max_batch_seconds=120.0, num_buckets=4)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    seen = 0
    for batch in loader:
        for j, utt_id in enumerate(batch.ids):
            utt = next(u for u in kept if u.id == utt_id)
            assert batch.wave_lengths[j].item() == round(utt.duration * SR)
            assert tok.decode(batch.targets[j, : batch.target_lengths[j]].tolist()) == (
                utt.text.lower()
            )
        assert math.isfinite(batch.waves.abs().max().item()) and batch.waves.abs().max() <= 1.0
        seen += len(batch)
    assert seen == 76 and ds.num_failed == 0


def test_resuming_at_the_end_of_an_epoch_starts_the_next_one():
    # A checkpoint saved after an epoch's last batch: an empty rest of that epoch would make
    # the trainer stop at once ("no training batches"); the next epoch is what comes next.
    durs = durations_for_tests()
    sampler = DurationBucketSampler(durs, 50.0, seed=7)
    sampler.set_epoch(3)
    epoch3 = all_batches(sampler)
    sampler.set_epoch(4)
    epoch4 = all_batches(sampler)
    resumed = DurationBucketSampler(durs, 50.0, seed=7)
    resumed.load_state_dict({"epoch": 3, "num_yielded": len(epoch3)})
    assert len(resumed) == len(epoch4) > 0
    resumed.set_epoch(3)  # a trainer may first announce the epoch it restored, then the next
    resumed.set_epoch(4)
    assert all_batches(resumed) == epoch4
