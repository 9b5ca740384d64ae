"""Untrusted files let nothing in: a model bundle or checkpoint holding a pickle that would run
code is refused with a message naming the file, and the code never runs, on every path that
loads one (`load_bundle`, `asr transcribe`, `asr evaluate`, resuming `asr train`)."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.audio import LogMelFeatures
from asr.checkpoint import BundleError, load_bundle, safe_torch_load, save_bundle
from asr.cli import main
from asr.config import EncoderConfig, FeatureConfig
from asr.data.manifest import Utterance, write_manifest
from asr.model import CtcModel
from asr.tokenizer import CharTokenizer

REPO = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def good_bundle(path: Path) -> Path:
    tokenizer = CharTokenizer("abc")
    model = CtcModel(EncoderConfig.preset("xs", num_layers=1), tokenizer.vocab_size)
    save_bundle(path, model, LogMelFeatures(FeatureConfig()), tokenizer)
    return path


def evil_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """Files that run code when unpickled, in each shape a model file can take."""
    bundle = torch.load(good_bundle(tmp_path / "good.pt"), weights_only=True)
    files = {
        # A genuine bundle with one extra entry: everything else is valid.
        "bundle.pt": {**bundle, "info": {"note": RunsCode(marker)}},
        # A Lightning-style checkpoint.
        "last.ckpt": {"state_dict": {}, "global_step": 3, "callbacks": RunsCode(marker)},
    }
    paths = {}
    for name, content in files.items():
        torch.save(content, tmp_path / name)
        paths[name] = tmp_path / name
    # The legacy (non-zip) torch format and a bare pickle, both starting with the 0x80 opcode.
    torch.save(
        {"w": RunsCode(marker)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False
    )
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"w": RunsCode(marker)}, protocol=4))
    paths["legacy.pt"], paths["pickle.pt"] = tmp_path / "legacy.pt", tmp_path / "pickle.pt"
    return paths


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code_ran"


def test_the_evil_files_really_run_code_when_loaded_unsafely(tmp_path: Path, marker: Path):
    """Without this, the refusals below could pass on files that were harmless anyway."""
    for name, path in evil_files(tmp_path, marker).items():
        if name == "pickle.pt":
            with path.open("rb") as f:
                pickle.load(f)
        else:
            torch.load(path, weights_only=False)
        assert marker.exists(), name
        marker.unlink()


def test_load_bundle_refuses_every_evil_file_naming_it(tmp_path: Path, marker: Path) -> None:
    for name, path in evil_files(tmp_path, marker).items():
        with pytest.raises(BundleError) as caught:
            load_bundle(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, name
        assert "refusing to load" in message or "not a model file" in message, message
        assert not marker.exists(), f"{name}: the pickled code ran"
    with pytest.raises(BundleError, match="refusing to load .*bundle.pt: it is not a plain tensor"):
        load_bundle(tmp_path / "bundle.pt")


def test_transcribe_cli_refuses_an_evil_model(tmp_path: Path, marker: Path, capsys) -> None:
    evil = evil_files(tmp_path, marker)["bundle.pt"]
    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.zeros(16000, np.float32), 16000)
    assert main(["transcribe", "--model", str(evil), "--device", "cpu", str(wav)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"asr: error: refusing to load {evil}:")
    assert not marker.exists()


def test_evaluate_cli_refuses_an_evil_model(tmp_path: Path, marker: Path, capsys) -> None:
    evil = evil_files(tmp_path, marker)["bundle.pt"]
    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.zeros(16000, np.float32), 16000)
    write_manifest([Utterance("a", str(wav), "abc", 1.0)], tmp_path / "test.jsonl")
    argv = ["evaluate", "--model", str(evil), "--manifest", str(tmp_path / "test.jsonl")]
    assert main([*argv, "--output-dir", str(tmp_path / "eval")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"asr: error: refusing to load {evil}:")
    assert not marker.exists()


def test_resuming_from_an_evil_last_ckpt_is_refused(
    tmp_path: Path, marker: Path, corpus: Path, capsys, monkeypatch
) -> None:
    # Lightning leaves `weights_only` to torch's default, which this variable turns off: the
    # refusal must not depend on the environment.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    torch.save(
        {"state_dict": {}, "global_step": 3, "loops": RunsCode(marker)},
        exp / "checkpoints" / "last.ckpt",
    )
    argv = [
        "train",
        "--config",
        str(REPO / "configs/tiny.yaml"),
        f"data.train_manifest={corpus}",
        f"exp_dir={exp}",
        "trainer.progress_bar=false",
        "data.num_workers=0",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"asr: error: refusing to load {exp / 'checkpoints/last.ckpt'}:")
    assert not marker.exists()
    assert not (exp / "model.pt").exists()


def test_safe_torch_load_names_files_that_are_not_model_files(tmp_path: Path) -> None:
    cases = {
        "text.pt": b"hello\n",
        "truncated.pt": None,
        "empty.pt": b"",
    }
    torch.save({"w": torch.zeros(100)}, tmp_path / "whole.pt")
    cases["truncated.pt"] = (tmp_path / "whole.pt").read_bytes()[:300]
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BundleError, match=f"cannot read {tmp_path / name}: not a model file"):
            safe_torch_load(tmp_path / name)
    with pytest.raises(BundleError, match=f"model file not found: {tmp_path / 'nowhere.pt'}"):
        safe_torch_load(tmp_path / "nowhere.pt")


def test_export_refuses_an_evil_checkpoint(tmp_path: Path, marker: Path, capsys) -> None:
    evil = evil_files(tmp_path, marker)["last.ckpt"]
    status = main(["export", "--checkpoint", str(evil), "--output", str(tmp_path / "m.pt")])
    assert not marker.exists(), "the pickled code ran"
    assert status == 2 and f"refusing to load {evil}" in capsys.readouterr().err
