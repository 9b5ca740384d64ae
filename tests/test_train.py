"""The training pipeline end to end: `asr train` writes a loadable model.pt, resuming after k
steps equals training straight through, DDP ranks see different data, LR schedules."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import soundfile as sf
import torch

from asr.checkpoint import load_bundle
from asr.cli import main
from asr.config import load_config
from asr.data.manifest import Utterance, write_manifest
from asr.training.system import lr_lambda
from asr.training.train import average_checkpoints, train

REPO = Path(__file__).resolve().parents[1]


def overrides(corpus: Path, exp_dir: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"data.train_manifest={corpus}",
        f"data.val_manifest={corpus}",
        f"exp_dir={exp_dir}",
        f"trainer.max_steps={steps}",
        "trainer.val_every_n_steps=2",
        "trainer.progress_bar=false",
        "data.num_workers=0",
        "data.max_batch_seconds=8",
        "augment.speed_factors=[0.9, 1.0, 1.1]",
        *extra,
    ]


def test_asr_train_cli_writes_a_self_contained_model(corpus: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    status = main(
        ["train", "--config", str(REPO / "configs/tiny.yaml"), *overrides(corpus, exp, 2)]
    )
    assert status == 0
    assert {"config.yaml", "tokenizer.json", "model.pt"} <= {p.name for p in exp.iterdir()}
    assert (exp / "checkpoints" / "last.ckpt").is_file()
    assert list((exp / "logs" / "csv").glob("metrics.csv"))
    bundle = load_bundle(exp / "model.pt")
    assert bundle.tokenizer.vocab_size == bundle.model.vocab_size
    assert bundle.info["trained_steps"] == 2
    assert load_config(exp / "config.yaml").trainer.max_steps == 2


def test_dual_mode_training_logs_both_passes_and_the_distillation(
    corpus: Path, tmp_path: Path
) -> None:  # (tests/test_streaming.py: what the objective computes)
    exp = tmp_path / "exp"
    live = ["encoder.chunk_conv=true", "encoder.dynamic_chunk_training=true",
            "optim.dual_mode=true", "optim.distill_weight=0.5", "trainer.log_every_n_steps=1"]  # fmt: skip
    status = main(["train", "--config", str(REPO / "configs/tiny.yaml"),
                   *overrides(corpus, exp, 2, *live)])  # fmt: skip
    assert status == 0
    (metrics,) = (exp / "logs" / "csv").glob("**/metrics.csv")
    rows = [line.split(",") for line in metrics.read_text().splitlines()]
    logged = {name: [r[i] for r in rows[1:] if r[i]] for i, name in enumerate(rows[0])}
    for name in ("train_loss", "train_ctc", "train_ctc_chunk", "train_distill"):
        assert logged.get(name) and all(math.isfinite(float(v)) for v in logged[name]), name
    assert all(float(v) > 0 for v in logged["train_distill"])


def test_last_checkpoint_is_the_latest_step_whatever_the_validation_wer(
    corpus: Path, tmp_path: Path
) -> None:
    """A rerun resumes from last.ckpt: it must be the newest step saved, not the step of the
    best validation WER (a killed run would otherwise redo the steps since)."""
    exp = tmp_path / "exp"
    config = load_config(REPO / "configs/tiny.yaml", overrides(corpus, exp, 8))
    train(config)
    last = torch.load(exp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8


def test_progress_bar_counts_steps_across_epochs_to_max_steps(
    corpus: Path, tmp_path: Path, capsys
) -> None:
    # 24 utterances in batches of <= 30 s: about 3 batches per epoch, so 7 steps span epochs.
    args = overrides(corpus, tmp_path / "exp", 7, "trainer.progress_bar=true")
    args += ["data.max_batch_seconds=30", "trainer.val_every_n_steps=3"]
    assert main(["train", "--config", str(REPO / "configs/tiny.yaml"), *args]) == 0
    out = capsys.readouterr().out
    assert "7/7 steps" in out
    assert "step 3: val WER" in out and "step 6: val WER" in out


def test_unknown_config_key_fails_before_any_work(corpus: Path, tmp_path: Path, capsys) -> None:
    exp = tmp_path / "exp"
    args = overrides(corpus, exp, 2, "optim.weight_decy=0.1")
    assert main(["train", "--config", str(REPO / "configs/tiny.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "asr: error: unknown config key 'optim.weight_decy'; did you mean 'optim.weight_decay'?"
    )
    assert not exp.exists()


def test_resuming_after_k_steps_gives_the_same_weights(corpus: Path, tmp_path: Path) -> None:
    config = REPO / "configs/tiny.yaml"
    straight = train(load_config(config, overrides(corpus, tmp_path / "a", 6)))
    first = load_config(config, overrides(corpus, tmp_path / "b", 2))
    train(first)  # stops after 2 steps (mid-epoch), leaving checkpoints/last.ckpt
    resumed = train(load_config(config, overrides(corpus, tmp_path / "b", 6)))
    a = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    # The optimizer moments agree too, so training would go on identically.
    moments_a = a["optimizer_states"][0]["state"]
    moments_b = b["optimizer_states"][0]["state"]
    for key in moments_a:
        torch.testing.assert_close(moments_b[key]["exp_avg"], moments_a[key]["exp_avg"])
    assert straight.is_file() and resumed.is_file()


DDP_SCRIPT = """
import json, sys
import lightning as L
from asr.config import load_config
from asr.training.datamodule import AsrDataModule
from asr.training.system import AsrSystem
from asr.training.train import build_trainer, prepare_tokenizer

class RecordIds(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        with open(f"{sys.argv[2]}/rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(batch.ids) + "\\n")

if __name__ == "__main__":
    config = load_config(None, json.loads(sys.argv[1]))
    tokenizer = prepare_tokenizer(config, __import__("pathlib").Path(sys.argv[2]))
    system = AsrSystem(config, tokenizer)
    frames = lambda s: int(system.model.output_lengths(
        __import__("torch").tensor(system.frontend.num_frames(int(s * 16000)))))
    trainer, _, _ = build_trainer(config, __import__("pathlib").Path(sys.argv[2]))
    trainer.callbacks.append(RecordIds())
    trainer.fit(system, datamodule=AsrDataModule(config, tokenizer, frames))
"""


def test_ddp_on_two_cpu_processes_gives_each_rank_different_data(corpus: Path, tmp_path: Path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    args = overrides(corpus, tmp_path / "exp", 2)
    args += ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    run = subprocess.run(
        [sys.executable, str(script), json.dumps(args), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = [
        [
            i
            for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()
            for i in json.loads(line)
        ]
        for r in (0, 1)
    ]
    assert len(seen[0]) > 0 and len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1]), "both ranks trained on the same utterances"


def test_checkpoint_averaging_is_the_elementwise_mean(tmp_path: Path) -> None:
    paths = []
    for i, value in enumerate([1.0, 2.0, 6.0]):
        state = {"w": torch.full((2,), value), "count": torch.tensor(i)}
        torch.save({"state_dict": state}, tmp_path / f"{i}.ckpt")
        paths.append(tmp_path / f"{i}.ckpt")
    averaged = average_checkpoints(paths)
    torch.testing.assert_close(averaged["w"], torch.full((2,), 3.0))
    assert int(averaged["count"]) == 2


def test_asr_export_of_several_checkpoints_equals_the_averaged_model_of_training(
    corpus: Path, tmp_path: Path
) -> None:
    exp = tmp_path / "exp"
    args = overrides(corpus, exp, 4, "trainer.average_last_k=2")
    assert main(["train", "--config", str(REPO / "configs/tiny.yaml"), *args]) == 0
    steps = [exp / "checkpoints" / f"step-step={n}.ckpt" for n in (2, 4)]
    exported = tmp_path / "exported.pt"
    assert main(["export", "--checkpoint", *map(str, steps), "--output", str(exported)]) == 0
    trained = load_bundle(exp / "model.pt").model.state_dict()
    single = tmp_path / "single.pt"
    assert main(["export", "--checkpoint", str(steps[1]), "--output", str(single)]) == 0
    averaged = load_bundle(exported).model.state_dict()
    assert trained.keys() == averaged.keys()
    assert all(torch.equal(trained[k], averaged[k]) for k in trained)
    last = load_bundle(single).model.state_dict()
    assert any(not torch.equal(last[k], averaged[k]) for k in last)


@pytest.mark.parametrize("schedule", ["noam", "cosine"])
def test_lr_warms_up_linearly_then_decays(schedule: str) -> None:
    lrs = [lr_lambda(s, 10, schedule, 100, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    if schedule == "noam":
        assert lrs[39] == pytest.approx(math.sqrt(10 / 40))
    else:
        assert lrs[-1] == pytest.approx(0.01, abs=1e-3)


def test_real_librispeech_trains_and_exports(librispeech_mini: Path, tmp_path: Path) -> None:
    utterances = []
    for trans in sorted(librispeech_mini.glob("train-clean-5/*/*/*.trans.txt"))[:1]:
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            audio = trans.parent / f"{uid}.flac"
            utterances.append(Utterance(uid, str(audio), text, sf.info(audio).duration))
    write_manifest(utterances[:8], tmp_path / "train.jsonl")
    write_manifest(utterances[8:10], tmp_path / "val.jsonl")
    args = [
        f"data.train_manifest={tmp_path / 'train.jsonl'}",
        f"data.val_manifest={tmp_path / 'val.jsonl'}",
        f"exp_dir={tmp_path / 'exp'}",
        "trainer.max_steps=2",
        "trainer.progress_bar=false",
        "data.num_workers=0",
        "data.max_duration=40",
    ]
    assert main(["train", "--config", str(REPO / "configs/tiny.yaml"), *args]) == 0
    assert load_bundle(tmp_path / "exp" / "model.pt").model.vocab_size > 20
