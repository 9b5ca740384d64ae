"""Interrupted work loses nothing: atomic checkpoint files, SIGKILL during a save then an exact
resume, and non-finite losses that skip their batch instead of poisoning the weights."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tone_corpus

from asr.checkpoint import atomic_torch_save, partial_files, safe_torch_load
from asr.cli import main
from asr.config import load_config
from asr.data.dataset import Batch
from asr.tokenizer import CharTokenizer
from asr.training.checkpoint_io import AtomicCheckpointIO
from asr.training.system import MAX_CONSECUTIVE_BAD_STEPS, AsrSystem, NonFiniteLossError
from asr.training.train import build_trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


# --------------------------------------------------------------------------------------------
# Atomic files


class Unpicklable:
    """Fails halfway through `torch.save`, after part of the file has been written."""

    def __reduce__(self):
        raise RuntimeError("disk full (simulated by an object that cannot be pickled)")


def test_a_failed_save_leaves_the_previous_file_and_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"weights": torch.zeros(1000), "later": Unpicklable()}, path)
    assert int(safe_torch_load(path)["step"]) == 1
    assert partial_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_saved_files_get_the_usual_permissions_not_those_of_a_temp_file(tmp_path: Path) -> None:
    atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "m.pt")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o666 & ~mask


def test_the_trainer_writes_and_reads_checkpoints_with_atomic_checkpoint_io(tmp_path: Path):
    config = load_config(TINY, [f"exp_dir={tmp_path}", "trainer.progress_bar=false"])
    stale = tmp_path / "checkpoints" / ".last.ckpt.abc123.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    trainer, _, _ = build_trainer(config, tmp_path)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert not stale.exists(), "a partial file of an interrupted save was left behind"
    io = trainer.strategy.checkpoint_io
    io.save_checkpoint({"global_step": 3, "w": torch.ones(2)}, tmp_path / "c.ckpt")
    assert io.load_checkpoint(tmp_path / "c.ckpt", weights_only=False)["global_step"] == 3
    io.remove_checkpoint(tmp_path / "c.ckpt")
    io.remove_checkpoint(tmp_path / "c.ckpt")  # already gone: not an error
    assert not (tmp_path / "c.ckpt").exists()


# --------------------------------------------------------------------------------------------
# SIGKILL during a save, then resume

# Runs `asr train` with torch.save slowed down for one file: the save of last.ckpt after step 2
# serializes the real checkpoint, writes the first half of its bytes to the temporary file,
# syncs them, tells the test and hangs there until it is killed.
KILLED_TRAINING = """
import io, os, sys, time
from pathlib import Path
import torch

real_save, ready = torch.save, Path(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))

def save_half_then_hang(obj, f, *args, **kwargs):
    name = Path(f).name if isinstance(f, str | os.PathLike) else ""
    if name.startswith(".last.ckpt.") and isinstance(obj, dict) and obj.get("global_step") == 2:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
        ready.write_text(f"{f}\\n{len(data)}")
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_half_then_hang
from asr.cli import main
sys.exit(main(sys.argv[3:]))
"""


def train_args(corpus: Path, exp_dir: Path) -> list[str]:
    return [
        "train",
        "--config",
        str(TINY),
        f"data.train_manifest={corpus}",
        f"data.val_manifest={corpus.with_name('val.jsonl')}",
        f"exp_dir={exp_dir}",
        "trainer.max_steps=3",
        "trainer.val_every_n_steps=1",
        "trainer.progress_bar=false",
        "data.num_workers=0",
        "data.max_batch_seconds=5",
    ]


def kill_during_save(script: Path, ready: Path, args: list[str]) -> tuple[Path, int]:
    """Start the training, SIGKILL it while it is inside the save; (partial file, full size)."""
    command = [sys.executable, str(script), str(ready), str(torch.get_num_threads()), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ready.exists():
        process.kill()
        output = process.communicate()[0].decode(errors="replace")
        pytest.fail(f"training never reached the save of step 2:\n{output[-3000:]}")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    partial, size = ready.read_text().splitlines()
    return Path(partial), int(size)


def test_sigkill_during_a_save_keeps_the_last_checkpoint_and_resume_is_exact(tmp_path, caplog):
    (tmp_path / "tones").mkdir()
    corpus = tone_corpus(tmp_path / "tones", 6)
    # Validation runs after every step: two utterances keep it quick.
    corpus.with_name("val.jsonl").write_text("".join(corpus.read_text().splitlines(True)[:2]))
    script = tmp_path / "killed_training.py"
    script.write_text(textwrap.dedent(KILLED_TRAINING))
    killed = tmp_path / "killed"
    partial, full_size = kill_during_save(script, tmp_path / "ready", train_args(corpus, killed))

    # The interrupted save left only its half-written temporary file; last.ckpt is step 1, whole.
    assert partial.parent == killed / "checkpoints" and partial.exists()
    assert 0 < partial.stat().st_size < full_size
    last = safe_torch_load(killed / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 1
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )

    # Running the same command again resumes from step 1 and finishes like a run never killed.
    with caplog.at_level(logging.INFO):
        assert main(train_args(corpus, killed)) == 0
    restored = f"Restoring states from the checkpoint path at {killed / 'checkpoints/last.ckpt'}"
    assert restored in caplog.text
    assert not partial.exists()
    assert main(train_args(corpus, tmp_path / "straight")) == 0
    resumed = safe_torch_load(killed / "checkpoints" / "last.ckpt")
    straight = safe_torch_load(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 3
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)


# --------------------------------------------------------------------------------------------
# Non-finite losses


def make_batch(seed: int, nan: bool = False) -> Batch:
    """Two utterances of noise (1 s and 0.75 s) with short transcripts; `nan`: one NaN sample."""
    waves = torch.randn(2, 16000, generator=torch.Generator().manual_seed(seed)) * 0.1  # (B, N)
    waves[1, 12000:] = 0.0
    if nan:
        waves[0, 100] = float("nan")
    targets = torch.tensor([[2, 3, 4], [3, 4, 0]])  # (B, S)
    lengths = (torch.tensor([16000, 12000]), torch.tensor([3, 2]))
    return Batch(waves, lengths[0], targets, lengths[1], ["abc", "bc"], [f"s{seed}a", f"s{seed}b"])


def fit_on(batches: list[Batch], seed: int = 0) -> AsrSystem:
    config = load_config(TINY, ["optim.warmup_steps=1", "trainer.progress_bar=false"])
    torch.manual_seed(seed)
    system = AsrSystem(config, CharTokenizer("abc"))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    trainer = L.Trainer(
        max_steps=len(batches),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(system, train_dataloaders=loader)
    return system


def test_a_nan_batch_is_skipped_with_a_warning_and_a_count(caplog) -> None:
    torch.manual_seed(0)
    untrained = AsrSystem(
        load_config(TINY, ["trainer.progress_bar=false"]), CharTokenizer("abc")
    ).state_dict()
    with caplog.at_level(logging.WARNING, logger="asr.training.system"):
        system = fit_on([make_batch(1), make_batch(2, nan=True), make_batch(3)])
    assert system.skipped_steps == 1 and system.bad_steps == 0
    (warning,) = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert "s2a, s2b" in warning and "1 skipped so far" in warning
    params = dict(system.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    # The good batches were trained on: the weights moved.
    assert any(not torch.equal(p, untrained[name]) for name, p in params.items())


def test_a_skipped_nan_batch_leaves_no_nan_in_the_running_statistics() -> None:
    system = fit_on([make_batch(1), make_batch(2, nan=True)])
    assert system.skipped_steps == 1
    buffers = {k: v for k, v in system.state_dict().items() if v.is_floating_point()}
    bad = [k for k, v in buffers.items() if not torch.isfinite(v).all()]
    assert bad == []


def test_a_loss_that_stays_nan_stops_training_with_a_clear_error() -> None:
    batches = [make_batch(i, nan=True) for i in range(MAX_CONSECUTIVE_BAD_STEPS + 5)]
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite for 20 steps in a row") as err:
        fit_on(batches)
    assert "optim.lr" in str(err.value)
