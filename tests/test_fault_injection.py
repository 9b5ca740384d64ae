"""SIGKILL at a random point of each long job that writes files, then the same command again:
the result equals an uninterrupted run's, nothing lost and nothing duplicated.

The jobs: `asr pack`, `asr transcribe --manifest --devices 2` and `asr train` from packed
shards. Each runs as its own process group, killed whole (as a scheduler or a lost machine
kills a job). The point is drawn from a seeded RNG in units of the job's own progress, never a
fixed sleep: wait until the job has made k units of visible progress (k drawn), then sleep a
drawn fraction of the average time a unit took so far in this very run, then kill. At least two
units are left at k, so the kill lands inside the job whatever the machine's speed (in its last
phase, after the last unit, when the units left ran faster than the average); a job that ended
first fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tone_corpus
from test_transcribe import make_bundle

from asr.checkpoint import partial_files, safe_torch_load
from asr.cli import main
from asr.config import TokenizerConfig
from asr.data.manifest import read_manifest, write_manifest
from asr.data.pack import pack_manifest
from asr.tokenizer import train_tokenizer

ASR = Path(sys.executable).parent / "asr"  # the console script (Lightning's launcher reruns it)
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
DEADLINE = 300.0  # seconds a job may take to show progress on a slow, shared machine
# Each test's kill point is drawn with its own seed, shifted by this (to try other points).
SEED = int(os.environ.get("ASR_FAULT_SEED", "0"))


def kill_at_random_point(
    argv: list[str], progress: Callable[[], int], units: int, seed: int, cwd: Path
) -> dict:
    """Run `asr ARGV`; wait for k units of `progress` (k drawn from [2, units - 2]), sleep a
    drawn fraction of the mean time per unit since the first, SIGKILL the process group."""
    rng = np.random.default_rng(SEED + seed)
    k = int(rng.integers(2, units - 1))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    log = (cwd / "killed.log").open("wb")
    process = subprocess.Popen([str(ASR), *argv], stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                               env=env, start_new_session=True)  # fmt: skip
    began, first = time.monotonic(), None
    try:
        while (done := progress()) < k:
            now = time.monotonic()
            if first is None and done >= 1:
                first = now
            if process.poll() is not None or now - began > DEADLINE:
                pytest.fail(f"the job ended or stalled at {done} of {k} units:\n"
                            f"{(cwd / 'killed.log').read_text()[-3000:]}")  # fmt: skip
            time.sleep(0.005)
        first = first or time.monotonic()  # all k units came at once: no time to spread
        unit = (time.monotonic() - first) / (k - 1)
        delay = float(rng.uniform(0, unit))
        time.sleep(delay)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        log.close()
    assert process.returncode == -signal.SIGKILL, "the job had finished before the kill"
    return {"k": k, "delay": delay, "progress": progress()}


# --------------------------------------------------------------------------------------------
# asr pack


def test_pack_killed_at_a_random_point_then_rerun_equals_an_uninterrupted_pack(tmp_path):
    manifest = tone_corpus(tmp_path, 24)
    argv = ["pack", "--manifest", str(manifest), "--shard-size", "100KB"]
    straight = pack_manifest(manifest, tmp_path / "straight", shard_size="100KB")
    shards = len(straight["shards"])
    assert shards >= 6
    out = tmp_path / "killed"
    records = lambda: len(list((out / ".pack").glob("*.parquet.json")))  # noqa: E731
    point = kill_at_random_point([*argv, "--output-dir", str(out)], records, shards, 1, tmp_path)
    assert point["progress"] >= 2  # all shards done: killed while writing the index

    assert main([*argv, "--output-dir", str(out)]) == 0
    assert partial_files(out / "data") == partial_files(out / ".pack") == []
    for folder in ("data", ".pack"):
        names = sorted(p.name for p in (out / folder).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "straight" / folder).iterdir())
        for name in names:
            assert (out / folder / name).read_bytes() == (
                tmp_path / "straight" / folder / name
            ).read_bytes(), name
    index, expected = (
        json.loads((d / "index.json").read_text()) for d in (out, tmp_path / "straight")
    )
    for entry in (index["splits"]["train"], expected["splits"]["train"]):
        del entry["pack_seconds"], entry["reused_shards"]
    assert index == expected
    ids = [i for f in sorted((out / "data").iterdir()) for i in pq.read_table(f)["id"].to_pylist()]
    assert ids == [u.id for u in read_manifest(manifest)]  # each once, in manifest order


# --------------------------------------------------------------------------------------------
# asr transcribe --manifest on two processes


def test_distributed_transcription_killed_at_a_random_point_then_rerun_loses_and_repeats_nothing(
    tmp_path,
):
    """160 utterances on two ranks: 3 steps of up to 32 each per rank, every step one flush
    of a part (the progress seen). The reference is an uninterrupted run of the same command
    on two ranks: one rank would batch the utterances differently, and padding invariance holds
    to float rounding, not to the last printed digit of a confidence on every CPU."""
    manifest = tone_corpus(tmp_path, 160, seed=5)
    model = make_bundle(tmp_path / "model.pt")
    argv = ["transcribe", "--manifest", str(manifest), "--model", model, "--device", "cpu"]
    ranks = ["--devices", "2"]
    straight = subprocess.run([str(ASR), *argv, "--output-dir", str(tmp_path / "straight"), *ranks],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "killed"
    flushes = FlushCounter(out / "parts")
    point = kill_at_random_point([*argv, "--output-dir", str(out), *ranks], flushes, 6, 2, tmp_path)
    assert point["progress"] >= 2  # the ranks run side by side: maybe all flushed, not merged

    run = subprocess.run([str(ASR), *argv, "--output-dir", str(out), *ranks],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "transcripts.jsonl").read_bytes() == (
        tmp_path / "straight" / "transcripts.jsonl"
    ).read_bytes()
    done = [
        json.loads(line)["index"]
        for part in (out / "parts").glob("*.jsonl")
        for line in part.read_text().splitlines()
    ]
    assert sorted(done) == list(range(160))  # each utterance transcribed once, by one run


class FlushCounter:
    """Progress of a transcription: how many times a part's line count grew, over the parts
    (one flush per step of each rank; counted per part, so two ranks flushing at once count
    twice)."""

    def __init__(self, parts: Path) -> None:
        self.parts, self.lines, self.count = parts, {}, 0

    def __call__(self) -> int:
        for part in self.parts.glob("*.jsonl"):
            lines = part.read_bytes().count(b"\n")
            if lines > self.lines.get(part, 0):
                self.lines[part], self.count = lines, self.count + 1
        return self.count


# --------------------------------------------------------------------------------------------
# asr train from packed shards


def test_training_from_shards_killed_at_a_random_point_then_resumed_equals_a_straight_run(
    tmp_path,
):
    """Streamed Parquet shards, a checkpoint after every step (the progress seen): the resumed
    run ends with the weights, step count and data position of an uninterrupted one."""
    manifest = tone_corpus(tmp_path, 12, seed=7)
    utterances = read_manifest(manifest)
    write_manifest(utterances[:2], tmp_path / "val.jsonl")
    shards = tmp_path / "shards"
    pack_manifest(manifest, shards, "train", shard_size="100KB")
    pack_manifest(tmp_path / "val.jsonl", shards, "validation")
    tokenizer = tmp_path / "tokenizer.json"
    train_tokenizer([u.text for u in utterances], TokenizerConfig(kind="char")).save(tokenizer)
    steps = 8

    def train(exp_dir: Path) -> list[str]:
        return ["train", "--config", str(TINY), f"data.hf_dataset={shards}",
                "data.hf_streaming=true", f"tokenizer.path={tokenizer}", f"exp_dir={exp_dir}",
                f"trainer.max_steps={steps}", "trainer.val_every_n_steps=1",
                "trainer.progress_bar=false", "data.num_workers=0", "data.max_batch_seconds=5",
                "optim.warmup_steps=2"]  # fmt: skip

    killed = tmp_path / "killed"
    point = kill_at_random_point(
        train(killed), lambda: steps_saved(killed / "checkpoints"), steps, 3, tmp_path
    )
    assert point["progress"] >= 2  # all steps done: killed while exporting model.pt
    assert main(train(killed)) == 0
    assert main(train(tmp_path / "straight")) == 0
    final = f"step-step={steps}.ckpt"  # the every-step checkpoint of the last step
    resumed = safe_torch_load(killed / "checkpoints" / final)
    straight = safe_torch_load(tmp_path / "straight" / "checkpoints" / final)
    assert resumed["global_step"] == straight["global_step"] == steps
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    data = [key for key in straight if "DataModule" in key]  # where the data stopped
    assert data and [resumed[key] for key in data] == [straight[key] for key in data]
    bundles = [safe_torch_load(d / "model.pt") for d in (killed, tmp_path / "straight")]
    for key, value in bundles[1]["model_state"].items():
        torch.testing.assert_close(bundles[0]["model_state"][key], value, rtol=0, atol=0, msg=key)


def steps_saved(checkpoints: Path) -> int:
    """Progress of a training: the last step saved (`step-step=N.ckpt`, written every step)."""
    found = [int(p.stem.split("=")[-1]) for p in checkpoints.glob("step-step=*.ckpt")]
    return max(found, default=0)
