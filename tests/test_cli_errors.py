"""Every command, bad input after bad input: exit status 2 and one line `asr: error: ...` on
stderr naming the culprit, never a traceback; a bug (any other exception) still shows one.

The commands run in this process (`asr.cli.main`), the Hugging Face Hub switched off, the
microphone library absent (or faked), and nothing slow started before its inputs are checked:
the demo never synthesizes a corpus, training never creates its exp_dir.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.audio import LogMelFeatures
from asr.checkpoint import save_bundle
from asr.cli import main
from asr.config import EncoderConfig, FeatureConfig
from asr.data.manifest import Utterance, write_manifest
from asr.model import CtcModel
from asr.tokenizer import CharTokenizer

REPO = Path(__file__).resolve().parents[1]
LETTERS = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Paths the cases below name, good and bad ({name} in their argv)."""
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = CtcModel(EncoderConfig.preset("xs", num_layers=1), LETTERS.vocab_size)
    save_bundle(d / "model.pt", model, LogMelFeatures(FeatureConfig()), LETTERS)
    causal = EncoderConfig.preset("xs", num_layers=1, causal_conv=True)
    save_bundle(d / "streaming.pt", CtcModel(causal, LETTERS.vocab_size),
                LogMelFeatures(FeatureConfig(normalize="none")), LETTERS)  # fmt: skip
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    soundfile.write(d / "a.wav", wave.astype(np.float32), 16000)
    write_manifest([Utterance("a", str(d / "a.wav"), "up", 1.0)], d / "manifest.jsonl")
    (d / "garbage.wav").write_text("not audio, a transcript\n" * 20)
    (d / "garbage.pt").write_text("not a model\n")
    (d / "garbage.nemo").write_bytes(b"not a tar archive at all\n" * 40)
    (d / "empty.jsonl").write_text("")
    (d / "broken.yaml").write_text("optim:\n  lr: [1, 2\n")
    names = {p.stem.replace(".", "_"): str(p) for p in d.iterdir()}
    return {
        **names,
        "garbage_wav": str(d / "garbage.wav"),
        "garbage_pt": str(d / "garbage.pt"),
        "garbage_nemo": str(d / "garbage.nemo"),
        "missing": str(d / "missing"),
        "out": str(d / "out"),
        "tiny": str(REPO / "configs" / "tiny.yaml"),
    }


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No Hub (as HF_HUB_OFFLINE=1 does, also in this process), no saved token, no sounddevice,
    and the demo's corpus synthesis refused: a case must fail before any work."""
    from huggingface_hub import constants

    import asr.demo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # `import sounddevice` fails

    def no_corpus(*args, **kwargs):
        raise AssertionError("the demo started synthesizing before checking its inputs")

    monkeypatch.setattr(asr.demo, "make_demo_corpus", no_corpus)


def fake_sounddevice() -> types.ModuleType:
    """A `sounddevice` with no input device of the name asked for."""
    module = types.ModuleType("sounddevice")
    module.PortAudioError = type("PortAudioError", (Exception,), {})

    def query_devices(device=None, kind=None):
        raise ValueError(f"No input device matching {device!r}")

    module.query_devices = query_devices
    return module


# (command, case, argv, what the message must name); {name} is a path of `files`.
# fmt: off
CASES = [
    ("transcribe", "missing file", "--model {model} {missing}.wav", "{missing}.wav"),
    ("transcribe", "corrupt file", "--model {model} {garbage_wav}", "{garbage_wav}"),
    ("transcribe", "nonexistent model", "--model {missing}.pt {a}", "{missing}.pt"),
    ("transcribe", "uncached hub model", "--model hf://nobody/nothing {a}", "hf://nobody/nothing"),
    ("transcribe", "bad --format", "--model {model} --format xml {a}", "--format 'xml'"),
    ("transcribe", "bad --batch-seconds", "--model {model} --batch-seconds -1 {a}",
     "batch_seconds"),
    ("transcribe", "bad --device", "--model {model} --device tpu {a}", "--device"),
    ("transcribe", "missing manifest",
     "--model {model} --manifest {missing}.jsonl --output-dir {out}", "{missing}.jsonl"),
    ("transcribe", "manifest on a missing GPU",
     "--model {model} --manifest {manifest} --output-dir {out}/t --device cuda", "--device cuda"),
    ("evaluate", "missing manifest", "--model {model} --manifest {missing}.jsonl",
     "{missing}.jsonl"),
    ("evaluate", "nonexistent model", "--model {missing}.pt --manifest {manifest}", "{missing}.pt"),
    ("evaluate", "--model without --manifest", "--model {model}", "--manifest"),
    ("evaluate", "missing hypotheses", "--hyp {missing}.txt --ref {manifest}", "{missing}.txt"),
    ("evaluate", "bad --beam-size", "--model {model} --manifest {manifest} --beam-size 0",
     "beam_size"),
    ("train", "missing config", "--config {missing}.yaml", "{missing}.yaml"),
    ("train", "wrong config key", "--config {tiny} optim.weight_decy=1", "optim.weight_decy"),
    ("train", "broken YAML, every line kept", "--config {broken}", "expected ',' or ']'"),
    ("train", "missing manifest",
     "--config {tiny} data.train_manifest={missing}.jsonl exp_dir={out}/train", "{missing}.jsonl"),
    ("train", "Lightning: devices=0",
     "--config {tiny} data.train_manifest={manifest} trainer.devices=0 exp_dir={out}/train",
     "trainer.devices"),
    ("train", "Lightning: devices=abc",
     "--config {tiny} data.train_manifest={manifest} trainer.devices=abc exp_dir={out}/train",
     "trainer.devices"),
    ("train", "Lightning: no such accelerator",
     "--config {tiny} data.train_manifest={manifest} trainer.accelerator=mps exp_dir={out}/train",
     "trainer.accelerator"),
    ("export", "missing checkpoint", "--checkpoint {missing}.ckpt --output {out}/m.pt",
     "{missing}.ckpt"),
    ("export", "corrupt checkpoint", "--checkpoint {garbage_pt} --output {out}/m.pt",
     "{garbage_pt}"),
    ("export", "--quantize without onnx", "--checkpoint {model} --quantize int8 --output {out}/m",
     "--quantize"),
    ("export", "onnx without --model", "--format onnx --output {out}/m.onnx", "--model"),
    ("export", "onnx of a missing model", "--model {missing}.pt --format onnx --output {out}/m",
     "{missing}.pt"),
    ("import-nemo", "missing file", "{missing}.nemo --output {out}/n.pt", "{missing}.nemo"),
    ("import-nemo", "not a .nemo archive", "{garbage_nemo} --output {out}/n.pt", "{garbage_nemo}"),
    ("import-nemo", "output over a .nemo", "{garbage_nemo} --output {out}/n.nemo", "--output"),
    ("pack", "missing manifest", "--manifest {missing}.jsonl --output-dir {out}/p",
     "{missing}.jsonl"),
    ("pack", "empty manifest", "--manifest {empty} --output-dir {out}/p", "{empty}"),
    ("pack", "bad --shard-size", "--manifest {manifest} --output-dir {out}/p --shard-size huge",
     "--shard-size"),
    ("pack", "bad --processes", "--manifest {manifest} --output-dir {out}/p --processes 0",
     "--processes"),
    ("pack", "output dir is a file", "--manifest {manifest} --output-dir {a}", "{a}"),
    ("pack", "no --output-dir", "--manifest {manifest}", "--output-dir"),
    ("serve", "nonexistent model", "--model {missing}.pt --port 0", "{missing}.pt"),
    ("serve", "bad --workers", "--model {model} --workers 0 --port 0", "--workers"),
    ("serve", "bad --port", "--model {model} --port http", "--port"),
    ("serve", "bad --model spec", "--model =x --port 0", "--model '=x'"),
    ("serve", "two models of one name", "--model m={model} --model m={model} --port 0", "'m'"),
    ("push-to-hub", "nonexistent model", "{missing}.pt me/model", "{missing}.pt"),
    ("push-to-hub", "bad repository name", "{model} no-owner", "no-owner"),
    ("push-to-hub", "a .nemo file", "{garbage_nemo} me/model", "{garbage_nemo}"),
    ("push-to-hub", "offline", "{model} me/model --token hf_x", "HF_HUB_OFFLINE"),
    ("listen", "without the live extra", "--model {streaming}", "pip install 'asr[live]'"),
    ("listen", "nonexistent model", "--model {missing}.pt", "{missing}.pt"),
    ("listen", "a model that cannot stream", "--model {model}", "causal_conv"),
    ("listen", "bad --chunk-ms", "--model {streaming} --chunk-ms -5", "chunk_ms"),
    ("listen", "bad --input-device", "--model {streaming} --input-device nope",
     "--input-device nope"),
    ("listen", "a microphone index as --device", "--model {streaming} --device 3",
     "--input-device"),
    ("demo", "work dir is a file", "--quick --work-dir {a}", "{a}"),
    ("demo", "unknown config key", "--quick --work-dir {out}/demo encoder.nope=1", "encoder.nope"),
    ("demo", "bad config value", "--quick --work-dir {out}/demo trainer.max_steps=many",
     "trainer.max_steps"),
    ("demo", "bad --seed", "--quick --seed abc --work-dir {out}/demo", "--seed"),
    ("demo", "Lightning: devices=0", "--quick --work-dir {out}/demo trainer.devices=0",
     "trainer.devices"),
]
# fmt: on


def test_every_command_has_at_least_three_bad_input_cases() -> None:
    from asr.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    wanted = {"transcribe", "evaluate", "train", "export", "import-nemo", "pack", "serve",
              "push-to-hub", "listen", "demo"}  # fmt: skip
    assert wanted <= set(commands)
    counts = {command: sum(case[0] == command for case in CASES) for command in wanted}
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize(
    "command, case, argv, culprit", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES]
)
def test_a_user_error_is_one_line_naming_the_culprit_and_status_2(
    files, capsys, monkeypatch, command, case, argv, culprit
) -> None:
    if command == "listen" and case == "bad --input-device":
        monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice())
    if "accelerator=mps" in argv and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    if "--device cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status = main([command, *argv.format(**files).split()])
    assert status == 2  # returned, not raised: no traceback
    # Ours is one line; a library may log too (Lightning, a warning), on lines of its own.
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("asr")] or [err]
    assert line.startswith("asr: error: ") and culprit.format(**files) in line, err
    if command in ("train", "demo"):  # checked before any work: nothing was written
        assert not Path(files["out"], command).exists()


def test_a_failing_onnx_export_check_is_a_user_error(files, tmp_path, capsys, monkeypatch):
    """The export's own check (ONNX Runtime vs PyTorch) failing is one line, not a traceback;
    forced here with a tolerance no export can meet."""
    pytest.importorskip("onnxruntime")
    import asr.export.onnx

    monkeypatch.setattr(asr.export.onnx, "CHECK_TOLERANCE", -1.0)
    argv = [
        "export",
        "--model",
        files["model"],
        "--format",
        "onnx",
        "--output",
        str(tmp_path / "m.onnx"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("asr: error: ONNX export check failed: ") and err.count("\n") == 1, err
    assert not (tmp_path / "m.onnx").exists()


def test_transcribe_with_every_input_failing_is_a_user_error_and_with_some_status_1(
    files, capsys
) -> None:
    """Decided: status 2 when nothing could be transcribed (as for any user error), 1 when some
    inputs failed and the others were transcribed (each failure one line, then the summary)."""
    argv = ["transcribe", "--model", files["model"]]
    assert main([*argv, files["garbage_wav"], files["missing"] + ".wav"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[:2] for line in err] == [["asr", " error"]] * 2, err
    assert main([*argv, files["a"], files["garbage_wav"]]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(files["a"] + "\t")
    first, summary = err.splitlines()
    assert first.startswith(f"asr: error: cannot read audio file '{files['garbage_wav']}'")
    assert summary.startswith("asr transcribe: 1 of 2 inputs")


def test_a_bug_still_shows_its_traceback(monkeypatch) -> None:
    """Only user errors become one line: any other exception propagates (a traceback)."""
    import asr.cli.pack

    def broken(args):
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setattr(asr.cli.pack, "pack_command", broken)
    with pytest.raises(RuntimeError, match="an internal invariant broke"):
        main(["pack", "--manifest", "m.jsonl", "--output-dir", "o"])


def test_multi_line_messages_are_joined_into_one_line_never_cut() -> None:
    from asr.cli.errors import one_line

    yaml_error = (
        "config file x.yaml is not valid YAML: while parsing a flow sequence\n"
        '  in "<unicode string>", line 2, column 7:\n      lr: [1, 2\n          ^\n'
        "expected ',' or ']', but got '<stream end>'\n"
    )
    assert one_line(yaml_error) == (
        "config file x.yaml is not valid YAML: while parsing a flow sequence; "
        "in \"<unicode string>\", line 2, column 7: lr: [1, 2; expected ',' or ']', but got "
        "'<stream end>'"
    )
    assert one_line("  \n") == ""
    assert one_line("a\n\n  b  \n") == "a; b"
