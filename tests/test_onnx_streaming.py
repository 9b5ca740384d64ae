"""Streaming on ONNX Runtime (`asr export --streaming`): a `Stream` over the exported chunk graph
gives the partial texts, final text, word times and log-probs (1e-4) of the PyTorch stream, at
320/640/1280 ms chunks, on LibriSpeech recordings (when the shared data is there) and on noise, with
bounded, zero and unbounded left context, for causal and chunked convolutions; int8 keeps the greedy
tokens close; files without the streaming graph, and models that cannot stream, are one clear
line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile
import torch
from test_streaming import CONVS, calibrated_streaming_bundle, noise

import asr
from asr.audio import load_audio
from asr.checkpoint import PRETRAINED_DIR, BundleError
from asr.cli import main as cli_main
from asr.export.onnx import export_onnx
from asr.inference.onnx import STREAMING_INPUT_NAMES, streaming_path
from asr.inference.streaming import feed

RATE = 16000
LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared/data/librispeech-mini/LibriSpeech"
PIECE_MS = 100.0  # what a microphone delivers at a time: not a multiple of any chunk


def recordings(count: int) -> list[Path]:
    files = sorted((LIBRISPEECH / "test-clean").rglob("*.flac")) if LIBRISPEECH.is_dir() else []
    if not files:
        pytest.skip(f"no LibriSpeech recordings at {LIBRISPEECH} (the shared librispeech-mini)")
    return files[:count]


@pytest.fixture(scope="module", params=CONVS)
def exported(tmp_path_factory, request):
    """A streaming model as model.pt and exported with its streaming graph, fp32 and int8:
    causal convolutions with random weights (calibrated so that its greedy output on speech has
    words), and the shipped chunk-convolution bundle (trained weights: int8's export check, 95%
    of argmax tokens kept, is not a property random weights reliably have)."""
    folder = tmp_path_factory.mktemp("onnx_stream")
    pt = folder / "model.pt"
    if request.param == "chunk":
        shutil.copy(PRETRAINED_DIR / "demo-synthetic-char-chunk.pt", pt)
    else:
        files = sorted(LIBRISPEECH.rglob("*.flac")) if LIBRISPEECH.is_dir() else []
        wave = load_audio(files[0]) if files else torch.from_numpy(noise(6.0, 11))
        calibrated_streaming_bundle(pt, wave[None], chunk=16, space_bias=2.0)
    fp32 = folder / "model.onnx"  # through the command line, as users export
    argv = ["export", "--model", str(pt), "--format", "onnx", "--output", str(fp32),
            "--streaming"]  # fmt: skip
    assert cli_main(argv) == 0
    int8 = export_onnx(pt, folder / "model.int8.onnx", quantize="int8", streaming=True)
    return {"pt": pt, "fp32": fp32, "int8": int8, "folder": folder}


def run_stream(transcriber, wave: np.ndarray, chunk_ms: float, left_seconds=10.0, lookahead_ms=0.0):
    """Feed `wave` in `PIECE_MS` pieces: (stream, partial texts, final result)."""
    stream = transcriber.stream(chunk_ms, left_seconds, lookahead_ms=lookahead_ms)
    partials = []
    feed(stream, wave, RATE, PIECE_MS, lambda partial, _: partials.append(partial.text))
    return stream, partials, stream.finish()


def assert_same_stream(onnx_run, torch_run, atol: float = 1e-4) -> None:
    (stream_a, partials_a, final_a), (stream_b, partials_b, final_b) = onnx_run, torch_run
    assert partials_a == partials_b
    assert final_a.text == final_b.text
    for a, b in zip(final_a.words, final_b.words, strict=True):
        assert a.word == b.word and abs(a.start - b.start) < 1e-6 and abs(a.end - b.end) < 1e-6
    got, want = torch.cat(stream_a.log_probs), torch.cat(stream_b.log_probs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize(("chunk_ms", "lookahead_ms"), [(320, 0), (640, 0), (1280, 0), (480, 160)])
def test_onnx_stream_equals_pytorch_stream_on_recordings(exported, chunk_ms, lookahead_ms):
    onnx_model, torch_model = asr.load_model(exported["fp32"]), asr.load_model(exported["pt"])
    texts = []
    for path in recordings(3):
        wave = load_audio(path).numpy()
        onnx_run = run_stream(onnx_model, wave, chunk_ms, lookahead_ms=lookahead_ms)
        assert_same_stream(onnx_run, run_stream(torch_model, wave, chunk_ms,
                                                lookahead_ms=lookahead_ms))  # fmt: skip
        texts.append(onnx_run[2].text)
        assert len(onnx_run[1]) > 1 and onnx_run[1][-1]  # partial text before the end
    assert sum(len(t.split()) for t in texts) >= 6, texts  # words to compare, not silence


@pytest.mark.parametrize(("chunk_ms", "left_seconds", "lookahead_ms"),
                         [(320, 10.0, 0), (640, 1.28, 0), (1280, None, 0), (640, 0.0, 0),
                          (480, 1.28, 160), (320, None, 320)])  # fmt: skip
def test_onnx_stream_equals_pytorch_stream_on_noise(exported, chunk_ms, left_seconds, lookahead_ms):
    """Always run (no shared data needed); left context bounded (the cache wraps), none at all
    (no cache slot) and unbounded (the cache grows); with look-ahead."""
    wave = noise(7.3, 12)
    onnx_run = run_stream(asr.load_model(exported["fp32"]), wave, chunk_ms, left_seconds,
                          lookahead_ms)  # fmt: skip
    torch_run = run_stream(asr.load_model(exported["pt"]), wave, chunk_ms, left_seconds,
                           lookahead_ms)  # fmt: skip
    assert_same_stream(onnx_run, torch_run)
    assert onnx_run[2].text  # something to compare
    slots = onnx_run[0].state.att_cache.shape[4]
    assert slots == (onnx_run[0].frames_done if left_seconds is None else onnx_run[0].max_cache)


def test_int8_stream_is_close_to_pytorch(exported):
    wave = load_audio(recordings(1)[0]).numpy()
    int8_run = run_stream(asr.load_model(exported["int8"]), wave, 640)
    torch_run = run_stream(asr.load_model(exported["pt"]), wave, 640)
    got, want = torch.cat(int8_run[0].log_probs), torch.cat(torch_run[0].log_probs)
    assert got.shape == want.shape
    agreement = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    assert agreement > 0.9, agreement
    props = {
        p.key: p.value for p in onnx.load(str(streaming_path(exported["int8"]))).metadata_props
    }
    assert props["quantization"] == "int8" and props["graph"] == "streaming"
    fp32_size = streaming_path(exported["fp32"]).stat().st_size
    assert streaming_path(exported["int8"]).stat().st_size < 0.6 * fp32_size


def test_streaming_graph_layout_and_metadata(exported):
    """The caches are explicit inputs whose shapes the metadata describes; the main file names
    its streaming graph."""
    graph = onnx.load(str(streaming_path(exported["fp32"])))
    props = {p.key: p.value for p in graph.metadata_props}
    config = asr.load_model(exported["pt"]).bundle.model.config
    assert [i.name for i in graph.graph.input] == list(STREAMING_INPUT_NAMES)
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in graph.graph.input}  # fmt: skip
    heads, d_head = int(props["num_heads"]), int(props["head_dim"])
    assert shapes["att_cache"][:2] == [config.num_layers, 2]
    assert shapes["att_cache"][3] == heads == config.num_heads and shapes["att_cache"][5] == d_head
    k = config.conv_kernel_size  # causal: the last K-1 inputs; chunked: the left half's K//2
    cache_frames = k // 2 if config.chunk_conv else k - 1
    assert shapes["cnn_cache"][2:] == [cache_frames, config.d_model]
    assert int(props["cnn_cache_frames"]) == cache_frames
    assert (props["subsampling_stride"], props["subsampling_span"]) == ("4", "7")
    encoder = json.loads(props["asr_bundle"])["encoder_config"]
    assert encoder["causal_conv"] != encoder["chunk_conv"]
    main = {p.key: p.value for p in onnx.load(str(exported["fp32"])).metadata_props}
    assert main["streaming_graph"] == "model.streaming.onnx"


def test_onnx_without_streaming_graph_is_one_clear_line(exported, tmp_path):
    graph = onnx.load(str(exported["fp32"]))  # what an export without --streaming writes
    kept = [p for p in graph.metadata_props if p.key != "streaming_graph"]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    plain = tmp_path / "plain.onnx"
    onnx.save(graph, str(plain))
    with pytest.raises(ValueError, match=r"plain\.onnx has no streaming graph.*--streaming") as e:
        asr.load_model(plain).stream()
    assert "\n" not in str(e.value)
    # the offline graph still transcribes, and the streaming graph alone is not a model
    assert asr.load_model(plain).transcribe((noise(1.0, 3), RATE))[0].error is None
    with pytest.raises(BundleError, match="is the streaming graph of an export"):
        asr.load_model(streaming_path(exported["fp32"]))
    moved = tmp_path / "moved.onnx"
    moved.write_bytes(exported["fp32"].read_bytes())  # without model.streaming.onnx beside it
    with pytest.raises(ValueError, match="streams with model.streaming.onnx, which is not beside"):
        asr.load_model(moved).stream()


def test_a_model_that_cannot_stream_is_refused_at_export(tmp_path):
    with pytest.raises(ValueError, match="no streaming graph: this model cannot stream") as e:
        export_onnx("demo-synthetic-char", tmp_path / "m.onnx", streaming=True)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_cli_transcribe_streaming_on_onnx(exported, tmp_path, capsys):
    """`asr export --streaming` (the fixture) then `asr transcribe --streaming` on the .onnx."""
    out = exported["fp32"]
    assert out.is_file() and streaming_path(out).is_file()
    wav = tmp_path / "a.wav"
    soundfile.write(wav, noise(3.0, 5), RATE)
    texts = []
    for model in (str(out), str(exported["pt"])):
        folder = tmp_path / Path(model).suffix[1:]
        argv = ["transcribe", "--model", model, "--streaming", "--chunk-ms", "320",
                "--output-dir", str(folder), "--format", "txt", str(wav)]  # fmt: skip
        assert cli_main(argv) == 0
        texts.append((folder / "a.txt").read_text())
    assert texts[0] == texts[1] and texts[0].strip()
    argv = ["export", "--model", str(exported["pt"]), "--output", "x.pt", "--streaming"]
    assert cli_main(argv) == 2
    assert "--streaming applies to --format onnx only" in capsys.readouterr().err


class _GraphWithoutEmit:
    """An ONNX Runtime session's face of a streaming graph exported before look-ahead."""

    def __init__(self, session) -> None:
        self.session = session

    def get_inputs(self):
        return self.session.get_inputs()[:4]

    def run(self, names, feed):
        assert "emit" not in feed
        chunk = (feed["feats"].shape[1] - 7) // 4 + 1
        return self.session.run(names, {**feed, "emit": np.array(chunk)})


def test_a_graph_exported_before_lookahead_streams_without_it_and_says_so_with_it(exported):
    model = asr.load_model(exported["fp32"])
    model.bundle.model._streaming_session = _GraphWithoutEmit(model.bundle.model._streaming_graph())
    wave = noise(3.1, 5)
    old = run_stream(model, wave, 640)
    assert_same_stream(old, run_stream(asr.load_model(exported["pt"]), wave, 640))
    with pytest.raises(ValueError, match="exported without look-ahead: export it again") as err:
        run_stream(model, wave, 480, lookahead_ms=160)
    assert "\n" not in str(err.value)
