"""A skipped batch never hangs DDP: when one rank's batch is empty (every utterance unreadable)
and another's loss is NaN at the same step, or one rank alone has a NaN loss, every rank still
runs its backward (so DDP's gradient all-reduce completes), no rank's optimizer moves the
weights, and each such step is counted once.
The same skip on one process: counted, logged, and invisible to the optimizer."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import torch

from asr.config import load_config
from asr.data.dataset import Batch
from asr.tokenizer import CharTokenizer
from asr.training.system import AsrSystem

REPO = Path(__file__).resolve().parents[1]
STEPS = 5
# step -> the batch of (rank 0, rank 1): both bad at once, then one rank alone
BAD = {1: ("empty", "nan"), 3: ("nan", "good")}
HANG = 300  # seconds: two tiny CPU processes take well under a minute; a hang waits forever

DDP_SCRIPT = """
import json, sys
from pathlib import Path

import lightning as L
import torch

from asr.config import load_config
from asr.data.dataset import Batch
from asr.tokenizer import CharTokenizer
from asr.training.system import AsrSystem
from asr.training.train import build_trainer

STEPS, BAD = {steps}, {bad}
OUT = Path(sys.argv[2])


def make_batch(seed, kind):
    if kind == "empty":  # what asr.data.stream yields when every utterance is unreadable
        return Batch(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long),
                     torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long), [], [])
    waves = torch.randn(2, 16000, generator=torch.Generator().manual_seed(seed)) * 0.1
    waves[1, 12000:] = 0.0
    if kind == "nan":
        waves[0, 100] = float("nan")
    return Batch(waves, torch.tensor([16000, 12000]), torch.tensor([[2, 3, 4], [3, 4, 0]]),
                 torch.tensor([3, 2]), ["abc", "bc"], [f"s{{seed}}a", f"s{{seed}}b"])


class Batches(L.LightningDataModule):
    def train_dataloader(self):
        rank = self.trainer.global_rank
        kinds = [BAD[step][rank] if step in BAD else "good" for step in range(STEPS)]
        batches = [make_batch(10 * step + rank, kind) for step, kind in enumerate(kinds)]
        return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


class Record(L.Callback):
    rows = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = {{n: p.detach().clone() for n, p in module.named_parameters()}}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        moved = [n for n, p in module.named_parameters() if not torch.equal(p, self.before[n])]
        self.rows.append({{"step": trainer.global_step - 1, "moved": len(moved),
                          "skipped_steps": module.skipped_steps}})

    def on_train_end(self, trainer, module):
        adam = trainer.optimizers[0].state
        torch.save({{"params": {{n: p.detach() for n, p in module.named_parameters()}},
                    "rows": self.rows,
                    "adam_steps": sorted({{int(s["step"]) for s in adam.values()}})}},
                   OUT / f"rank{{trainer.global_rank}}.pt")


if __name__ == "__main__":
    config = load_config(sys.argv[1], json.loads(sys.argv[3]))
    torch.manual_seed(0)
    system = AsrSystem(config, CharTokenizer("abc"))
    trainer, _, _ = build_trainer(config, Path(config.exp_dir))
    trainer.callbacks.append(Record())
    trainer.fit(system, datamodule=Batches())
"""


def run_ddp(tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    """The script on two CPU processes (gloo), killed with its whole process group on a hang."""
    script = tmp_path / "ddp_skip.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(steps=STEPS, bad=BAD)))
    overrides = [
        f"exp_dir={tmp_path / 'exp'}",
        f"trainer.max_steps={STEPS}",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "optim.warmup_steps=1",
    ]
    args = [sys.executable, str(script), str(REPO / "configs/tiny.yaml"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [*args, json.dumps(overrides)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # rank 1 is rank 0's child: a timeout must kill both
    )
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"DDP hung: no exit after {HANG} s\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err), time.monotonic() - started


def skipped_so_far(step: int) -> int:
    return sum(bad <= step for bad in BAD)


def test_an_empty_batch_and_a_nan_loss_on_different_ranks_skip_the_same_step(tmp_path: Path):
    run, seconds = run_ddp(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rank in ranks:
        # The skipped steps moved no weight; every other step moved the weights.
        moved = {row["step"]: row["moved"] for row in rank["rows"]}
        assert sorted(moved) == list(range(STEPS))
        assert {s for s in moved if moved[s] == 0} == set(BAD), moved
        counts = {row["step"]: row["skipped_steps"] for row in rank["rows"]}
        assert counts == {s: skipped_so_far(s) for s in range(STEPS)}
        # The optimizer left those steps out: no moment update, no weight decay.
        assert rank["adam_steps"] == [STEPS - len(BAD)]
    # Both ranks took the same steps, also when one rank alone had a NaN loss: identical weights.
    for name, value in ranks[0]["params"].items():
        assert torch.equal(ranks[1]["params"][name], value), name
    # The count reaches the logs (rank 0 writes them), once per skipped step.
    with open(tmp_path / "exp" / "logs" / "csv" / "metrics.csv") as f:
        logged = {
            int(row["step"]): float(row["skipped_steps"])
            for row in csv.DictReader(f)
            if row.get("skipped_steps")
        }
    assert logged == {s: float(skipped_so_far(s)) for s in range(STEPS)}
    # Each rank said why it skipped.
    for message in [
        "empty batch at step 1 (every utterance failed to load): step skipped on all 2 ranks",
        "non-finite loss at step 1 (utterances s11a, s11b): step skipped on all 2 ranks",
        "non-finite loss at step 3 (utterances s30a, s30b): step skipped on all 2 ranks",
        "at step 3, 0 of 2 ranks had an empty batch and 1 a non-finite loss: step skipped",
    ]:
        assert message in run.stderr
    print(f"2-process DDP run: {seconds:.1f} s")


def empty_batch() -> Batch:
    """What asr.data.stream yields when every utterance of a batch is unreadable."""
    none = torch.zeros(0, dtype=torch.long)
    return Batch(torch.zeros(0, 0), none, torch.zeros(0, 0, dtype=torch.long), none, [], [])


def noise_batch(seed: int, nan: bool = False) -> Batch:
    waves = torch.randn(2, 16000, generator=torch.Generator().manual_seed(seed)) * 0.1  # (B, N)
    if nan:
        waves[0, 100] = float("nan")
    targets = torch.tensor([[2, 3, 4], [3, 4, 0]])  # (B, S)
    lengths = torch.tensor([16000, 16000]), torch.tensor([3, 2])
    return Batch(waves, lengths[0], targets, lengths[1], ["abc", "bc"], [f"s{seed}a", f"s{seed}b"])


class WeightsPerStep(L.Callback):
    """How many parameters each step changed."""

    def __init__(self) -> None:
        self.moved: list[int] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before = [p.detach().clone() for p in module.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        after = list(module.parameters())
        self.moved.append(sum(not torch.equal(a, b) for a, b in zip(after, self.before)))


def test_on_one_process_empty_and_nan_batches_are_skipped_counted_and_leave_no_trace(caplog):
    batches = [noise_batch(1), empty_batch(), noise_batch(2, nan=True), noise_batch(3)]
    config = load_config(REPO / "configs/tiny.yaml", ["optim.warmup_steps=1"])
    torch.manual_seed(0)
    system, record = AsrSystem(config, CharTokenizer("abc")), WeightsPerStep()
    trainer = L.Trainer(
        max_steps=len(batches),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    with caplog.at_level("WARNING", logger="asr.training.system"):
        trainer.fit(system, train_dataloaders=loader)
    assert trainer.global_step == len(batches)
    assert record.moved[1] == record.moved[2] == 0
    assert record.moved[0] > 0 and record.moved[3] > 0
    assert system.skipped_steps == 2 and system.bad_steps == 0
    assert trainer.callback_metrics["skipped_steps"] == 2
    # AdamW counted only the two steps it took: no moment or weight-decay update on the others.
    assert {int(s["step"]) for s in trainer.optimizers[0].state.values()} == {2}
    warnings = [r.getMessage() for r in caplog.records if r.name == "asr.training.system"]
    assert warnings == [
        "empty batch at step 1 (every utterance failed to load): batch skipped (1 skipped so far)",
        "non-finite loss at step 2 (utterances s2a, s2b): batch skipped (2 skipped so far)",
    ]
