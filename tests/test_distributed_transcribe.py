"""`asr transcribe --manifest`: a corpus transcribed by Lightning's `Trainer.predict` on two
DDP processes (gloo, CPU) gives exactly what one process gives, in manifest order; a rerun
transcribes only what is left; a packed folder transcribes like its manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tone_corpus
from test_transcribe import make_bundle

from asr.checkpoint import load_bundle, save_bundle
from asr.cli import main
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.data.pack import pack_manifest
from asr.inference.options import DEFAULT_CHUNK_SECONDS

ASR = Path(sys.executable).parent / "asr"  # the console script: Lightning's launcher reruns it


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(a manifest of 9 tone utterances, one of them a missing file; a model bundle)."""
    folder = tmp_path_factory.mktemp("corpus")
    utterances = read_manifest(tone_corpus(folder, 8, seed=3))
    utterances.insert(5, Utterance("lost", str(folder / "lost.wav"), "go", 1.0))
    write_manifest(utterances, folder / "big.jsonl")
    return folder / "big.jsonl", Path(make_bundle(folder / "model.pt"))


def transcribe(manifest: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["transcribe", "--manifest", str(manifest), "--model", str(model),
            "--output-dir", str(out), "--device", "cpu", *extra]  # fmt: skip


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]


def test_two_processes_transcribe_exactly_what_one_process_does(corpus, tmp_path, capsys):
    manifest, model = corpus
    assert main(transcribe(manifest, model, tmp_path / "one")) == 1  # "lost" failed
    assert "8 of 9 utterances transcribed" in capsys.readouterr().err
    # What another model left in "two" goes: --overwrite starts over, on every rank.
    assert main(transcribe(manifest, other_model(model, tmp_path), tmp_path / "two")) == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [str(ASR), *transcribe(manifest, model, tmp_path / "two", "--devices", "2", "--overwrite")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    assert "8 of 9 utterances transcribed" in run.stderr and "on 2 process(es)" in run.stderr
    parts = sorted(p.name for p in (tmp_path / "two/parts").iterdir())
    assert parts == ["rank0.jsonl", "rank1.jsonl"]
    lines = [len((tmp_path / "two/parts" / p).read_text().splitlines()) for p in parts]
    assert lines in ([5, 4], [4, 5])  # shared out, every utterance on one rank only
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert (tmp_path / "one/transcripts.jsonl").read_bytes() == (
        tmp_path / "two/transcripts.jsonl"
    ).read_bytes()
    assert [r["id"] for r in one] == [u.id for u in read_manifest(manifest)]  # manifest order
    assert one[5]["error"].endswith("no such file") and one[5]["text"] == ""
    assert all(r["text"] and r["words"] for i, r in enumerate(two) if i != 5)


def test_a_rerun_transcribes_only_what_a_killed_run_left(corpus, tmp_path, capsys):
    manifest, model = corpus
    out = tmp_path / "out"
    main(transcribe(manifest, model, out))
    complete = (out / "transcripts.jsonl").read_text()
    part = out / "parts" / "rank0.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:20])  # killed while writing line 4
    (out / "transcripts.jsonl").unlink()
    capsys.readouterr()
    assert main(transcribe(manifest, model, out)) == 1
    assert "(3 by an earlier run)" in capsys.readouterr().err
    assert (out / "transcripts.jsonl").read_text() == complete
    redone = part.read_text().splitlines()
    assert redone[:3] == [line.rstrip("\n") for line in lines[:3]] and len(redone) == 3 + 6
    capsys.readouterr()
    assert main(transcribe(manifest, model, out)) == 1  # only "lost" is tried again
    assert "(8 by an earlier run)" in capsys.readouterr().err


def test_a_packed_folder_transcribes_like_its_manifest(corpus, tmp_path):
    manifest, model = corpus
    packed = tmp_path / "packed"
    entry = pack_manifest(manifest, packed, shard_size="100KB")
    assert [d["id"] for d in entry["dropped"]] == ["lost"]
    main(transcribe(manifest, model, tmp_path / "from_manifest"))
    assert main(transcribe(packed, model, tmp_path / "from_shards")) == 0
    expected = [r for r in records(tmp_path / "from_manifest") if r["error"] is None]
    got = records(tmp_path / "from_shards")
    for a, b in zip(expected, got, strict=True):
        assert (a["id"], a["text"], a["words"], a["duration"]) == (
            b["id"], b["text"], b["words"], b["duration"],
        )  # fmt: skip
        assert b["path"] == Path(a["path"]).name  # relative to the packed manifest's folder


def test_corpus_mode_errors_name_the_culprit(corpus, tmp_path, capsys):
    manifest, model = corpus
    argv = ["transcribe", "--model", str(model), "--device", "cpu"]
    assert main([*argv, "--devices", "2", "a.wav"]) == 2
    assert capsys.readouterr().err.strip() == (
        "asr: error: --devices and --num-nodes need --manifest (a corpus: a manifest, a folder "
        "of audio, a packed folder or a dataset)"
    )
    assert main([*argv, "--manifest", str(manifest)]) == 2
    assert "asr: error: --manifest needs --output-dir" in capsys.readouterr().err
    gpu = ["transcribe", "--model", str(model), "--device", "cuda:1", "--manifest", str(manifest)]
    assert main([*gpu, "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        "asr: error: --device cuda:1: with --manifest, --devices says how many GPUs each machine "
        "uses; give --device cuda"
    )
    bad = tmp_path / "folder"
    bad.mkdir()
    assert main([*argv, "--manifest", str(bad), "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"asr: error: {bad}: no corpus there: not a manifest file, a folder written by `asr "
        "pack`, a Hugging Face dataset, nor a folder of audio files"
    )


def other_model(model: Path, folder: Path) -> Path:
    """The bundle `model` with one weight changed: another model, same everything else."""
    bundle = load_bundle(model)
    with torch.no_grad():
        next(bundle.model.parameters()).add_(0.5)
    save_bundle(folder / "other.pt", bundle.model, bundle.frontend, bundle.tokenizer, bundle.info)
    return folder / "other.pt"


def test_a_rerun_with_another_model_or_options_is_refused_naming_what_differs(
    corpus, tmp_path, capsys
):
    """The transcripts of a folder all come from one model and one set of options: a rerun that
    differs is refused (the folder untouched) unless --overwrite starts over."""
    manifest, model = corpus
    out, other = tmp_path / "out", other_model(model, tmp_path)
    assert main(transcribe(manifest, model, out)) == 1
    first = (out / "transcripts.jsonl").read_bytes()
    capsys.readouterr()
    for extra, named in [
        (["--model", str(other)], "model"),
        (["--beam-size", "4"], "beam_size: 1 then, 4 now"),
        (["--chunk-seconds", "5"], f"chunk_seconds: {DEFAULT_CHUNK_SECONDS} then, 5.0 now"),
    ]:
        argv = transcribe(manifest, model, out, *extra)
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"asr: error: {out} holds transcripts made with other settings")
        assert named in err and "--overwrite" in err and err.count("\n") == 1, err
        assert (out / "transcripts.jsonl").read_bytes() == first
    # A batch size changes no result (padding invariance): resuming with another is fine.
    assert main(transcribe(manifest, model, out, "--batch-seconds", "7")) == 1
    assert "(8 by an earlier run)" in capsys.readouterr().err
    # --overwrite starts over: what a fresh run with the other model gives, nothing of the first.
    assert main(transcribe(manifest, other, out, "--overwrite")) == 1
    assert "(0 by an earlier run)" in capsys.readouterr().err
    assert main(transcribe(manifest, other, tmp_path / "fresh")) == 1
    assert (
        (out / "transcripts.jsonl").read_bytes()
        == (tmp_path / "fresh" / "transcripts.jsonl").read_bytes()
        != first
    )


def test_parts_rank_0_cannot_see_are_one_line_naming_the_output_dir(
    corpus, tmp_path, capsys, monkeypatch
):
    """Each rank writing its part where the merging rank cannot read it (a folder local to each
    node, not shared) is a user error: one line, status 2, no traceback."""
    from asr.jobs import outputs
    from asr.jobs import transcribe as job

    manifest, model = corpus
    elsewhere = tmp_path / "node-local"
    monkeypatch.setattr(job, "open_part",
                        lambda path: outputs.open_part(elsewhere / path.name))  # fmt: skip
    assert main(transcribe(manifest, model, tmp_path / "out")) == 2
    # stderr also holds what Lightning logs; ours is one line (and main returned: no traceback)
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("asr")]
    assert line.startswith(f"asr: error: the parts in {tmp_path / 'out' / 'parts'} lack 9 of 9")
    assert "shares" in line


def test_a_folder_of_audio_is_a_corpus_and_evaluate_writes_the_same_records(
    corpus, tmp_path, capsys
):
    """One corpus reader, one transcript schema: a folder of the manifest's audio files
    transcribes to the records of the manifest (ids from the file names), and `asr evaluate
    --model` writes exactly the records `asr transcribe --manifest` writes."""
    import shutil

    manifest, model = corpus
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows = [r for r in rows if (manifest.parent / r["audio"]).is_file()]  # one is missing
    folder = tmp_path / "audio"
    folder.mkdir()
    for row in rows:
        shutil.copy(manifest.parent / row["audio"], folder / f"{row['id']}.wav")
    assert main(transcribe(folder, model, tmp_path / "from-folder")) == 0
    assert main(transcribe(manifest, model, tmp_path / "from-manifest")) == 1  # the missing one
    from_folder = read_records(tmp_path / "from-folder")
    from_manifest = read_records(tmp_path / "from-manifest")
    key = sorted(rows, key=lambda r: r["id"])
    assert [r["id"] for r in from_folder] == [r["id"] for r in key]
    strip = [{k: v for k, v in r.items() if k != "path"} for r in from_folder]
    by_id = {r["id"]: {k: v for k, v in r.items() if k != "path"} for r in from_manifest}
    assert strip == [by_id[r["id"]] for r in key]
    evaluated = tmp_path / "evaluated"
    argv = ["evaluate", "--model", str(model), "--manifest", str(manifest), "--device", "cpu"]
    assert main([*argv, "--output-dir", str(evaluated)]) == 0  # the missing one: all deletions
    assert (evaluated / "transcripts.jsonl").read_bytes() == (
        tmp_path / "from-manifest" / "transcripts.jsonl"
    ).read_bytes()


def read_records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
