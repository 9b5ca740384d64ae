"""`asr pack`: shards whose audio decodes bit-identical to the source files, a resumable packing
that never leaves a half-written shard behind, dropped files reported with their reason, and
the shards read back by `data.hf_dataset` (map-style, streamed, through an fsspec URL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import LIBRISPEECH_MINI, tone_corpus

from asr.cli import main
from asr.data import pack as pack_module
from asr.data.dataset import AudioDataset
from asr.data.hf import HFAudioDataset, load_hf_utterances
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.data.pack import pack_manifest, parse_size, plan_shards
from asr.tokenizer import CharTokenizer

pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """Map-style loading builds an Arrow cache: keep it in the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def mixed_corpus(folder: Path) -> Path:
    """Tone WAVs, real LibriSpeech FLACs (when the sample is there) and two segments of one
    file (an offset into it): the manifest forms `asr pack` must keep sample for sample."""
    manifest = tone_corpus(folder, 6)
    utterances = read_manifest(manifest)
    flacs = sorted(LIBRISPEECH_MINI.glob("LibriSpeech/*/*/*/*.flac"))[:3]
    if not flacs:  # no real sample: a FLAC of our own
        sf.write(folder / "own.flac", 0.1 * np.sin(np.arange(24000) / 9.0), 16000, "PCM_16")
        flacs = [folder / "own.flac"]
    utterances += [Utterance(f.stem, str(f), "go", sf.info(f).duration) for f in flacs]
    whole = utterances[0]
    utterances += [
        Utterance("seg-a", whole.audio, "up", 0.5, offset=0.25),
        Utterance("seg-b", whole.audio, "no", 0.4, offset=0.6),
    ]
    write_manifest(utterances, folder / "mixed.jsonl")
    return folder / "mixed.jsonl"


def test_packed_audio_decodes_bit_identical_to_the_source_files(tmp_path: Path) -> None:
    manifest = mixed_corpus(tmp_path)
    utterances = {u.id: u for u in read_manifest(manifest)}
    entry = pack_manifest(manifest, tmp_path / "packed", shard_size="100KB")
    assert entry["rows"] == len(utterances) and entry["dropped"] == []
    assert len(entry["shards"]) > 1 and entry["repeated_files"] == 1  # seg-a, seg-b, utt000
    source = load_hf_utterances(str(tmp_path / "packed"), "train")
    assert len(source) == len(utterances)
    for i in range(len(source)):
        row = source.dataset[i]
        utt = utterances[row["id"]]
        assert row["audio"]["bytes"] == Path(utt.audio).read_bytes()  # the file, unchanged
        assert (row["offset"], row["duration"], row["text"]) == (utt.offset, utt.duration, utt.text)
        with sf.SoundFile(utt.audio) as f:  # the original file, read on its own
            f.seek(round(utt.offset * f.samplerate))
            original = f.read(round(utt.duration * f.samplerate), dtype="float32", always_2d=True)
        decoded = source.decode(row, i)["array"]
        assert decoded.dtype == original.dtype and np.array_equal(decoded, original), utt.id
    # Training items from the shards equal those from the manifest, wave for wave.
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz")
    local = AudioDataset(list(utterances.values()), tokenizer)
    packed = HFAudioDataset(source, tokenizer)
    assert packed.durations() == [u.duration for u in utterances.values()]
    for i in range(len(local)):
        a, b = local[i], packed[i]
        assert a["id"] == b["id"] and torch.equal(a["wave"], b["wave"])
        assert torch.equal(a["tokens"], b["tokens"])


def test_a_rerun_keeps_finished_shards_and_rewrites_the_unfinished(
    tmp_path: Path, monkeypatch
) -> None:
    manifest = tone_corpus(tmp_path, 12)
    out = tmp_path / "packed"
    plan = plan_shards(read_manifest(manifest), 100_000)
    n = len(plan)
    assert n >= 4
    names = [f"train-{k:05d}-of-{n:05d}.parquet" for k in range(n)]
    real_checked_row = pack_module._checked_row
    calls = []

    def killed_in_shard_3(utt, folder, dropped):  # the run dies on shard 3's second utterance
        calls.append(utt.id)
        if len(calls) == plan[3][0] + 2:
            raise KeyboardInterrupt
        return real_checked_row(utt, folder, dropped)

    monkeypatch.setattr(pack_module, "_checked_row", killed_in_shard_3)
    with pytest.raises(KeyboardInterrupt):
        pack_manifest(manifest, out, shard_size=100_000)
    monkeypatch.setattr(pack_module, "_checked_row", real_checked_row)
    assert sorted(p.name for p in (out / "data").iterdir()) == names[:3]  # nothing of shard 3
    (out / "data" / f".{names[4]}.x1y2.tmp").write_bytes(b"PAR1 half")  # a SIGKILLed write
    (out / ".pack" / f"{names[2]}.json").unlink()  # died between the rename and the record
    before = {name: (out / "data" / name).stat() for name in names[:3]}

    entry = pack_manifest(manifest, out, shard_size=100_000)
    assert entry["reused_shards"] == 2 and entry["rows"] == 12
    assert sorted(p.name for p in (out / "data").iterdir()) == names  # the temp file is gone
    for name in names[:2]:
        now = (out / "data" / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)
    assert (out / "data" / names[2]).stat().st_ino != before[names[2]].st_ino  # written again
    straight = pack_manifest(manifest, tmp_path / "straight", shard_size=100_000, num_workers=2)
    assert entry["shards"] == straight["shards"]  # same rows, seconds and bytes per shard
    for name in names:
        assert (out / "data" / name).read_bytes() == (
            tmp_path / "straight/data" / name
        ).read_bytes()
    with pytest.raises(ValueError, match="packed from another manifest or --shard-size"):
        pack_manifest(manifest, out, shard_size="200KB")


def test_dropped_files_are_reported_with_their_reason(tmp_path: Path, capsys) -> None:
    manifest = tone_corpus(tmp_path, 4)
    good = read_manifest(manifest)
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "cut.wav", np.zeros(8000, dtype=np.float32), 16000)
    truncated = tmp_path / "truncated.wav"
    sf.write(truncated, np.zeros(32000, dtype=np.float32), 16000, "PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:30000])
    bad = [
        Utterance("missing", str(tmp_path / "nowhere.wav"), "go", 1.0),
        Utterance("empty", str(tmp_path / "empty.wav"), "go", 1.0),
        Utterance("cut", str(tmp_path / "cut.wav"), "go", 2.0),  # the file holds 0.5 s
        Utterance("truncated", str(truncated), "go", 2.0),
    ]
    write_manifest(good[:2] + bad + good[2:], tmp_path / "bad.jsonl")
    with (tmp_path / "bad.jsonl").open("a") as f:
        f.write('{"audio": "x.wav", "text": "go"}\n')  # no duration: a bad line
    out = tmp_path / "packed"
    assert main(["pack", "--manifest", str(tmp_path / "bad.jsonl"), "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert "4 utterances" in err and "5 dropped, listed in" in err
    entry = json.loads((out / "index.json").read_text())["splits"]["train"]
    reasons = {d["id"]: d["reason"] for d in entry["dropped"]}
    assert reasons.pop("truncated").startswith(
        f"cannot read audio file '{truncated}': truncated: its header promises 2.000 s"
    )
    assert reasons == {
        "missing": f"cannot read audio file '{tmp_path / 'nowhere.wav'}': no such file",
        "empty": f"cannot read audio file '{tmp_path / 'empty.wav'}': file is empty",
        "cut": f"'{tmp_path / 'cut.wav'}' ends 0.500 s after offset 0 s, but the manifest says "
        "2 s (a truncated file, or a wrong duration in the manifest)",
    }
    assert entry["manifest_problems"] == [f"{tmp_path / 'bad.jsonl'}:9: missing field 'duration'"]
    source = load_hf_utterances(str(out), "train")
    assert [source.dataset[i]["id"] for i in range(len(source))] == [u.id for u in good]


def test_shards_stream_and_load_through_an_fsspec_url(tmp_path: Path) -> None:
    manifest = tone_corpus(tmp_path, 8)
    pack_manifest(manifest, tmp_path / "packed", shard_size="150KB")
    pack_manifest(manifest, tmp_path / "packed", split="validation", shard_size="1GB")
    url = (tmp_path / "packed").as_uri()  # file:///...: the code path of s3:// and hf://
    mapped = load_hf_utterances(str(tmp_path / "packed"), "train")
    streamed = load_hf_utterances(url, "train", streaming=True)
    assert streamed.streaming and streamed.dataset.num_shards == 3
    rows = list(streamed)  # decoded items, in manifest order
    assert [r["id"] for r in rows] == [u.id for u in read_manifest(manifest)]
    for i, row in enumerate(rows):
        assert np.array_equal(row["array"], mapped[i]["array"])
    assert len(load_hf_utterances(url, "validation")) == 8
    with pytest.raises(ValueError, match=r"has no split 'test'; has \['train', 'validation'\]"):
        load_hf_utterances(url, "test")


def test_shard_sizes_parse_and_plans_cut_at_the_size(tmp_path: Path) -> None:
    assert parse_size("1GB") == 10**9 and parse_size("500 MB") == 5 * 10**8
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("1e6") == 10**6
    for bad in ("1XB", "", "-1GB", "0"):
        with pytest.raises(ValueError, match="--shard-size"):
            parse_size(bad)
    sizes = [40, 40, 40, 100, 10, 10]
    utts = []
    for i, size in enumerate(sizes):
        (tmp_path / f"{i}.wav").write_bytes(b"x" * size)
        utts.append(Utterance(str(i), str(tmp_path / f"{i}.wav"), "a", 1.0))
    utts.insert(2, Utterance("gone", str(tmp_path / "gone.wav"), "a", 1.0))
    assert plan_shards(utts, 100) == [(0, 3), (3, 1), (4, 1), (5, 2)]


def test_pack_cli_names_the_culprit_of_a_user_error(tmp_path: Path, capsys) -> None:
    manifest = tone_corpus(tmp_path, 2)
    argv = ["pack", "--manifest", str(manifest), "--output-dir", str(tmp_path / "p")]
    assert main([*argv, "--shard-size", "1XB"]) == 2
    assert capsys.readouterr().err.strip() == (
        "asr: error: --shard-size: expected a size such as 1GB or 500MB, got '1XB'"
    )
    assert main(["pack", "--manifest", str(tmp_path / "no.jsonl"), "--output-dir", "p"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"asr: error: manifest file not found: {tmp_path / 'no.jsonl'}"
    )
    assert main([*argv, "--split", "dev-clean"]) == 2
    assert "--split must be letters, digits" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "p" / "index.json")


def test_librispeech_recipe_packs_shards_and_trains_from_them(librispeech_mini, tmp_path):
    from test_librispeech import TINY, load_recipe

    from asr.checkpoint import load_bundle
    from asr.config import load_config

    recipe = load_recipe("librispeech")
    work = tmp_path / "work"
    argv = ["--work-dir", str(work), "--data-dir", str(librispeech_mini.parent),
            "--train-parts", "train-clean-5", "--dev-parts", "dev-clean", "--test-parts",
            "test-clean", "--nj", "1", "--device", "cpu", "--shards", "--shard-size", "4MB",
            "--stage", "2", "--stop-stage", "4", *TINY]  # fmt: skip
    assert recipe.main(argv) == 0
    splits = json.loads((work / "shards" / "index.json").read_text())["splits"]
    assert splits["train"]["rows"] == 70 and splits["validation"]["rows"] == 1
    assert len(splits["train"]["shards"]) > 1 and splits["train"]["dropped"] == []
    config = load_config(work / "exp_s" / "config.yaml")
    assert config.data.hf_dataset == str(work / "shards") and config.data.hf_streaming
    assert load_bundle(work / "exp_s" / "model.pt").info["trained_steps"] == 2


def test_a_rerun_repacks_the_shards_whose_source_files_changed(tmp_path: Path, caplog) -> None:
    """A source file rewritten since its shard was packed (another size or modification time)
    makes a rerun pack that shard again, saying so in one line; the others are kept."""
    manifest = tone_corpus(tmp_path, 12)
    out = tmp_path / "packed"
    first = pack_manifest(manifest, out, shard_size=100_000)
    names = [Path(shard["file"]).name for shard in first["shards"]]
    changed = read_manifest(manifest)[plan_shards(read_manifest(manifest), 100_000)[2][0]]
    wave, rate = sf.read(changed.audio, dtype="int16")
    sf.write(changed.audio, -wave, rate, subtype="PCM_16")  # same length, other samples
    before = {name: (out / "data" / name).stat().st_ino for name in names}
    with caplog.at_level("WARNING", logger="asr.data.pack"):
        again = pack_manifest(manifest, out, shard_size=100_000)
    assert again["reused_shards"] == len(names) - 1
    (line,) = [r.getMessage() for r in caplog.records if "changed" in r.getMessage()]
    assert names[2] in line and changed.audio in line and "\n" not in line
    kept = [name for name in names if (out / "data" / name).stat().st_ino == before[name]]
    assert kept == names[:2] + names[3:]
    fresh = pack_manifest(manifest, tmp_path / "fresh", shard_size=100_000)
    assert again["shards"] == fresh["shards"]
    for name in names:
        assert (out / "data" / name).read_bytes() == (tmp_path / "fresh/data" / name).read_bytes()


def test_running_normalization_takes_its_prior_from_shards_without_a_manifest(tmp_path: Path):
    """`features.normalize: running` (the recipes' default) trained from shards alone: the
    training set's statistics come from the first rows of the packed data, read as a stream,
    and equal those of the manifest it was packed from (the same utterances, decoded alike)."""
    from asr.audio import LogMelFeatures
    from asr.config import load_config
    from asr.training.train import estimate_global_stats

    manifest = mixed_corpus(tmp_path)
    pack_manifest(manifest, tmp_path / "packed", shard_size="100KB")
    stats = []
    for data in ([f"data.train_manifest={manifest}"],
                 [f"data.hf_dataset={tmp_path / 'packed'}", "data.hf_streaming=true"]):  # fmt: skip
        config = load_config(None, ["features.normalize=running", *data])
        frontend = LogMelFeatures(config.features)
        estimate_global_stats(config, frontend)
        stats.append((frontend.global_mean.clone(), frontend.global_std.clone()))
    (mean, std), (packed_mean, packed_std) = stats
    assert torch.allclose(mean, packed_mean, atol=1e-5) and torch.allclose(std, packed_std)
    assert not torch.equal(mean, torch.zeros_like(mean))
    nothing = load_config(None, ["features.normalize=running"])
    with pytest.raises(ValueError, match="data.train_manifest or data.hf_dataset"):
        estimate_global_stats(nothing, LogMelFeatures(nothing.features))
