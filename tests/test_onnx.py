"""ONNX export and the ONNX Runtime backend: the export formulation of the relative shift equals
the training one; exported fp32 log-probs equal PyTorch's (1e-4) on padded batches of 1 s to
30 s; transcripts, word timings, chunking and `asr evaluate` are the same through both backends;
int8 shrinks the file and keeps the greedy output close, and an int8 export whose greedy tokens
disagree with PyTorch's is refused; bad files give one clear line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile
import torch

import asr
import asr.export.onnx as onnx_export
import asr.modules.attention as attention
import asr.modules.subsampling as subsampling
from asr.checkpoint import BundleError, load_bundle
from asr.cli import main as cli_main
from asr.data.manifest import Utterance, write_manifest
from asr.export.onnx import export_onnx
from asr.inference.onnx import METADATA_KEY, load_onnx_bundle
from asr.modules.attention import (
    RelativePositionalEncoding,
    relative_position_bias,
    relative_shift,
    relative_shift_gather,
)

RATE = 16000
SHIPPED = "demo-synthetic-char"  # d_model 96, 6 blocks, intermediate + self-conditioned CTC
LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared/data/librispeech-mini/LibriSpeech"


def noise(seconds: float, seed: int) -> np.ndarray:
    """Noise under an envelope that changes every 0.1 s: frames that differ."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    envelope = np.repeat(rng.uniform(0, 1, n // 1600 + 1), 1600)[:n]
    return (0.3 * envelope * rng.standard_normal(n)).astype(np.float32)


# --- the export formulation -------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 7, 64, 65, 200])
def test_padded_relative_shift_equals_strided_view(t):
    scores = torch.randn(2, 3, t, 2 * t - 1)
    assert torch.equal(relative_shift_gather(scores), relative_shift(scores))
    # and both mean what they claim: [i, j] is the score of distance i - j (column T-1-i+j)
    i, j = t // 2, t - 1
    assert relative_shift_gather(scores)[1, 2, i, j] == scores[1, 2, i, t - 1 - i + j]


@pytest.mark.parametrize("t", [5, 64, 150])
def test_export_position_term_equals_training_one(t, monkeypatch):
    q_v, p = torch.randn(2, 4, t, 8), torch.randn(4, 8, 2 * t - 1)
    pad = torch.zeros(2, 1, 1, t)
    pad[1, ..., t // 2 :] = -1e30
    encodings = RelativePositionalEncoding(16)
    want = relative_position_bias(q_v, p, pad), encodings(t)
    monkeypatch.setattr(attention, "exporting", lambda: True)
    got = relative_position_bias(q_v, p, pad), RelativePositionalEncoding(16)(t)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1])


def test_whole_model_in_export_mode_equals_eager(monkeypatch):
    bundle = load_bundle(SHIPPED)
    feats, lengths = torch.randn(3, 420, 80), torch.tensor([420, 77, 300])
    with torch.inference_mode():
        want, want_lengths = bundle.model(feats, lengths)
        for module in (attention, subsampling):
            monkeypatch.setattr(module, "exporting", lambda: True)
        got, got_lengths = bundle.model(feats, lengths)
    assert torch.equal(got_lengths, want_lengths)
    for b, n in enumerate(want_lengths.tolist()):
        torch.testing.assert_close(got[b, :n], want[b, :n], rtol=0, atol=1e-5)


# --- exported files ---------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(SHIPPED, folder / "model.onnx")
    records, logger = _Records(), logging.getLogger(onnx_export.__name__)
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        int8 = export_onnx(SHIPPED, folder / "model.int8.onnx", quantize="int8")
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return {"pt": load_bundle(SHIPPED), "fp32": fp32, "int8": int8, "folder": folder,
            "int8_log": records.messages}  # fmt: skip


def frontend_batch(bundle, seconds: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    waves = [torch.from_numpy(noise(s, seed)) for seed, s in enumerate(seconds)]
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.inference_mode():
        return bundle.frontend(padded, torch.tensor([len(w) for w in waves]))


@pytest.mark.parametrize("seconds", [[30.0], [1.0, 4.5, 30.0, 11.2, 17.0]])
def test_fp32_log_probs_equal_pytorch(exported, seconds):
    pt, onnx_bundle = exported["pt"], load_onnx_bundle(exported["fp32"])
    feats, feat_lengths = frontend_batch(pt, seconds)
    with torch.inference_mode():
        want, want_lengths = pt.model(feats, feat_lengths)
    got, got_lengths = onnx_bundle.model(feats, feat_lengths)
    assert got.shape == want.shape and torch.equal(got_lengths, want_lengths)
    for b, n in enumerate(want_lengths.tolist()):
        torch.testing.assert_close(got[b, :n], want[b, :n], rtol=0, atol=1e-4)
        assert torch.equal(got[b, :n].argmax(-1), want[b, :n].argmax(-1))


def test_metadata_makes_the_file_self_contained(exported):
    pt, onnx_bundle = exported["pt"], load_onnx_bundle(exported["fp32"])
    assert onnx_bundle.tokenizer.to_dict() == pt.tokenizer.to_dict()
    assert onnx_bundle.model.config == pt.model.config
    assert onnx_bundle.frontend.config == pt.frontend.config
    for name, value in pt.frontend.state_dict().items():  # stats and filterbank, bit for bit
        assert torch.equal(onnx_bundle.frontend.state_dict()[name], value), name
    props = {p.key: p.value for p in onnx.load(str(exported["fp32"])).metadata_props}
    assert props["vocab_size"] == str(pt.model.vocab_size)
    assert props["subsampling_factor"] == "4" and props["blank_id"] == "0"
    assert json.loads(props[METADATA_KEY])["quantization"] == "none"


def test_transcripts_timings_and_chunking_equal_pytorch(exported, tmp_path):
    files = []
    for i, seconds in enumerate([2.0, 47.0]):  # 47 s: three overlapping 20 s chunks
        path = tmp_path / f"noise{i}.wav"
        soundfile.write(path, noise(seconds, 10 + i), RATE)
        files.append(path)
    if LIBRISPEECH.is_dir():  # real speech where the shared data is; noise alone elsewhere
        files += sorted(LIBRISPEECH.rglob("*.flac"))[:6]
    want = asr.load_model(SHIPPED).transcribe(files)
    got = asr.load_model(exported["fp32"]).transcribe(files)
    for a, b in zip(got, want):
        assert a.error is None and a.text == b.text
        assert [w.word for w in a.words] == [w.word for w in b.words]
        for wa, wb in zip(a.words, b.words):
            assert abs(wa.start - wb.start) < 1e-6 and abs(wa.end - wb.end) < 1e-6
            assert abs(wa.confidence - wb.confidence) < 1e-3


def test_int8_is_smaller_and_close(exported):
    fp32, int8 = exported["fp32"], exported["int8"]
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert props["quantization"] == "int8"
    graph_ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert graph_ops & {"MatMulInteger", "DynamicQuantizeLinear"}, graph_ops
    pt = exported["pt"]
    feats, feat_lengths = frontend_batch(pt, [6.0, 9.0])
    want, lengths = load_onnx_bundle(fp32).model(feats, feat_lengths)
    got, _ = load_onnx_bundle(int8).model(feats, feat_lengths)
    agree = [
        (got[b, :n].argmax(-1) == want[b, :n].argmax(-1)).float().mean().item()
        for b, n in enumerate(lengths.tolist())
    ]
    assert min(agree) > 0.9, agree  # WER on real speech: bench/onnx_speed.py, BENCHMARKS.md


def test_int8_export_is_checked_for_frame_agreement_and_reports_it(exported):
    found = [re.search(r"int8 argmax agreement with PyTorch ([\d.]+)%", m)
             for m in exported["int8_log"]]  # fmt: skip
    agreement = [float(f[1]) for f in found if f]
    assert len(agreement) == 1, exported["int8_log"]
    assert 95.0 <= agreement[0] <= 100.0


def scramble_quantized_weights(path: Path) -> None:
    """What a broken quantizer could write: every int8 weight matrix's values shuffled."""
    graph = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for tensor in graph.graph.initializer:
        if tensor.name.endswith("_quantized") and tensor.data_type == onnx.TensorProto.INT8:
            values = onnx.numpy_helper.to_array(tensor)
            scrambled = rng.permutation(values.ravel()).reshape(values.shape)
            tensor.CopyFrom(onnx.numpy_helper.from_array(scrambled, tensor.name))
    onnx.save(graph, str(path))


def test_int8_export_that_disagrees_with_pytorch_is_refused_and_not_written(tmp_path, monkeypatch):
    quantize = onnx_export._quantize_int8

    def broken(source: Path, target: Path) -> None:
        quantize(source, target)
        scramble_quantized_weights(target)

    monkeypatch.setattr(onnx_export, "_quantize_int8", broken)
    out = tmp_path / "broken.int8.onnx"
    with pytest.raises(RuntimeError) as raised:
        export_onnx(SHIPPED, out, quantize="int8")
    message = str(raised.value)
    assert re.search(r"int8 .*argmax agreement with PyTorch [\d.]+% .*below the 95% required",
                     message), message  # fmt: skip
    assert "\n" not in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_export_transcribe_and_evaluate(exported, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert cli_main(["export", "--model", SHIPPED, "--format", "onnx", "--output", str(out)]) == 0
    assert out.is_file()
    wav = tmp_path / "a.wav"
    soundfile.write(wav, noise(3.0, 7), RATE)
    capsys.readouterr()
    assert cli_main(["transcribe", "--model", str(out), str(wav)]) == 0
    onnx_text = capsys.readouterr().out.strip()
    assert cli_main(["transcribe", "--model", SHIPPED, str(wav)]) == 0
    assert capsys.readouterr().out.strip() == onnx_text
    manifest = tmp_path / "m.jsonl"
    write_manifest([Utterance("a", str(wav), "a b", 3.0)], manifest)
    summaries = []
    for model in (str(out), SHIPPED):
        assert cli_main(["evaluate", "--model", model, "--manifest", str(manifest)]) == 0
        summaries.append(capsys.readouterr().out)
    assert summaries[0] == summaries[1]


# --- bad inputs -------------------------------------------------------------------------


def test_truncated_onnx_is_one_clear_line(exported, tmp_path):
    bad = tmp_path / "cut.onnx"
    data = exported["fp32"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"cut\.onnx.*not an ONNX model, or truncated"):
        asr.load_model(bad)


def test_onnx_without_our_metadata_is_refused(exported, tmp_path):
    graph = onnx.load(str(exported["fp32"]))
    del graph.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(graph, str(foreign))
    with pytest.raises(BundleError, match="not one exported by asr"):
        asr.load_model(foreign)


def test_cli_errors_are_one_line(exported, tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 1}, ckpt)
    cases = [
        (["export", "--model", str(ckpt), "--format", "onnx", "--output", "x.onnx"],
         "not an asr model bundle"),
        (["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", "x.onnx"],
         "--format onnx exports a model bundle"),
        (["export", "--model", SHIPPED, "--output", "x.pt"], "add --format onnx"),
        (["export", "--model", str(tmp_path / "missing.pt"), "--format", "onnx",
          "--output", "x.onnx"], "model file not found"),
    ]  # fmt: skip
    for argv, message in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("asr: error:") and message in err and "\n" not in err, err
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(exported["fp32"].read_bytes()[:1000])
    wav = tmp_path / "a.wav"
    soundfile.write(wav, noise(1.0, 3), RATE)
    assert cli_main(["transcribe", "--model", str(truncated), str(wav)]) == 2  # a user error
    err = capsys.readouterr().err.strip()
    assert "t.onnx" in err and "truncated" in err and len(err.splitlines()) == 1, err


def test_onnx_models_refuse_a_gpu_device(exported):
    with pytest.raises(ValueError, match="run on the CPU"):
        asr.load_model(exported["fp32"], device="cuda")
