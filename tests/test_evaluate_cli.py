"""`asr evaluate` end to end through the command line: scoring files and scoring a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr.cli import main

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hyp_against_ref_prints_and_writes_the_hand_computed_wer(tmp_path: Path, capsys) -> None:
    ref = write(tmp_path / "ref.txt", ["u1 the cat sat on the mat", "u2 Hello, World!"])
    hyp = write(tmp_path / "hyp.txt", ["u1 the cat sat mat", "u2 hello world"])
    out = tmp_path / "eval"
    assert main(["evaluate", "--hyp", str(hyp), "--ref", str(ref), "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # 2 deletions over 6 + 2 reference words, summed over utterances.
    assert summary["wer"] == pytest.approx(2 / 8)
    assert "25.00" in capsys.readouterr().out
    assert (out / "report.html").is_file() and (out / "utterances.jsonl").is_file()


def test_missing_hypothesis_ids_are_an_error_naming_them(tmp_path: Path, capsys) -> None:
    ref = write(tmp_path / "ref.txt", ["u1 a b", "u2 c d", "u3 e"])
    hyp = write(tmp_path / "hyp.txt", ["u1 a b"])
    assert main(["evaluate", "--hyp", str(hyp), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asr: error:") and "u2" in err and err.count("\n") == 1


def test_model_and_hyp_modes_are_exclusive(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--hyp", "h", "--model", "m.pt"]) == 2
    assert "go together" in capsys.readouterr().err


def test_validation_wer_in_training_equals_offline_evaluation(corpus: Path, tmp_path: Path):
    """Training-time validation and `asr evaluate` share decoding and normalization: same WER."""
    import csv

    exp = tmp_path / "exp"
    args = [
        f"data.train_manifest={corpus}", f"data.val_manifest={corpus}", f"exp_dir={exp}",
        "trainer.max_steps=30", "trainer.val_every_n_steps=30", "trainer.progress_bar=false",
        "trainer.average_last_k=1", "data.num_workers=0", "data.max_batch_seconds=8",
        "optim.lr=5e-3", "optim.warmup_steps=10",
    ]  # fmt: skip
    assert main(["train", "--config", str(REPO / "configs/tiny.yaml"), *args]) == 0
    rows = [r for r in csv.DictReader((exp / "logs/csv/metrics.csv").open()) if r.get("val_wer")]
    val_wer = float(rows[-1]["val_wer"])
    out = tmp_path / "eval"
    status = main(
        ["evaluate", "--model", str(exp / "model.pt"), "--manifest", str(corpus),
         "--output-dir", str(out), "--resamples", "0"]
    )  # fmt: skip
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_utterances"] == len(corpus.read_text().splitlines())
    assert 100 * summary["wer"] == pytest.approx(val_wer, abs=1e-3)
    ids = [json.loads(line)["id"] for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == summary["num_utterances"]
