"""Export a model bundle for sherpa-onnx's NeMo CTC recognizer (`asr export --format sherpa-onnx`).

sherpa-onnx (k2-fsa) runs ONNX speech models on phones, Raspberry Pis and in browsers
(WebAssembly), from C++, Python, Java, Swift, Go, C# and JavaScript. It computes the features
itself, so an exported model must take the features sherpa-onnx gives it. The layout written
here is the one its NeMo CTC recognizer loads (`OfflineRecognizer.from_nemo_ctc`), written by
`asr export --model model.pt --format sherpa-onnx --output DIR/model.onnx [--quantize int8]`:

    DIR/model.onnx        audio_signal (B, F, T) float32 + length (B,) int64 -> logprobs
                          (B, T // 4, V), metadata vocab_size, subsampling_factor,
                          normalize_type "" (the graph normalizes), model_type EncDecCTCModelBPE
    DIR/model.int8.onnx   the same with int8 MatMul/Gemm weights (with --quantize int8)
    DIR/tokens.txt        "symbol id" per line: the blank is `<blk>` (our id 0: sherpa-onnx reads
                          the blank's id from this file), the word boundary `▁` (sherpa-onnx
                          turns a leading `▁` into a space), other tokens as they are

Run it (pip install sherpa-onnx):

    import sherpa_onnx, soundfile
    recognizer = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
        model="DIR/model.onnx", tokens="DIR/tokens.txt", feature_dim=80)
    samples, rate = soundfile.read("speech.wav", dtype="float32")
    stream = recognizer.create_stream()
    stream.accept_waveform(rate, samples)
    recognizer.decode_stream(stream)
    print(stream.result.text)

The front end sherpa-onnx computes for this recognizer (read in its source and checked against
the installed package by tests/test_sherpa_onnx.py; `sherpa_features` computes the same): 25 ms
frames every 10 ms centred on t * hop + hop / 2 with mirrored samples past both ends (Kaldi's
`snip_edges=false`, T = (N + hop / 2) // hop), pre-emphasis 0.97 within each frame, a periodic
Hann window, a 512-point FFT, power, librosa's (Slaney) mel filterbank from 0 Hz to Nyquist, and
log(max(power, 1.19e-7)). No dither. Our `features.framing: kaldi` is that framing, and
`features.log_guard: clamp` that log. What of ours maps onto it:

- exact, by sherpa-onnx: `sample_rate` 16000, `win_ms` 25, `hop_ms` 10, `n_fft` 512,
  `window: hann`, `preemphasis: 0.97`, `mel_scale: slaney`, any `n_mels` (pass `feature_dim`).
  A bundle with other values is refused, naming the option.
- exact, in the graph: `normalize` (utterance, per_feature, global, none: computed from
  `length`), the blank's position (tokens.txt), and the log: `log_guard: clamp` with
  `log_offset` >= 1.19e-7 is max(x, log(log_offset)) of sherpa-onnx's x (nothing at all for
  1.19e-7 itself); `log_guard: add` takes exp() and adds our offset (exact wherever a band's
  power exceeds 1.19e-7, i.e. everywhere but digital silence; so is `clamp` below 1.19e-7).
- where the frames sit: exact with `framing: kaldi` (the same frames, T = (N + 80) // 160, and
  the graph needs no shift). Not exact with `framing: stft` (accepted with a warning): our frame
  t is centred on t * hop (`center: true`, zero padding: 5 ms before sherpa-onnx's frame t, and
  sherpa-onnx has 0-1 frames more) or starts there (`center: false`: 7.5 ms after, 2 frames more).

Either way sherpa-onnx reads T // subsampling output frames: ours past our output length are
blank (a model with subsampling padding, whose T' = ceil(T / 4), loses its last frame there, as
NeMo's own models do in sherpa-onnx). So train a model for sherpa-onnx with

    features.framing=kaldi features.preemphasis=0.97 features.mel_scale=slaney
    features.log_guard=clamp features.log_offset=1.1920928955078125e-07

(the defaults otherwise): sherpa-onnx then transcribes as `asr transcribe` does. Streaming
(sherpa-onnx's online NeMo CTC recognizer, same front end, with cache inputs): `asr export
--format sherpa-onnx --streaming`, `asr.export.sherpa_online`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchaudio
from torch import nn

from asr.audio import LogMelFeatures
from asr.checkpoint import ModelBundle, atomic_write
from asr.config import FeatureConfig, to_dict
from asr.export.onnx import (
    CHECK_TOLERANCE,
    INT8_MIN_AGREEMENT,
    OPSET,
    QUANTIZATIONS,
    ExportCheckError,
    _quantize_int8,
    _set_metadata,
)
from asr.extras import require
from asr.inference.onnx import import_onnxruntime, session_options
from asr.interop.sources import open_bundle
from asr.model import CtcModel
from asr.modules.masks import make_pad_mask
from asr.tokenizer import BLANK_ID, SP_WORD_START, Tokenizer

log = logging.getLogger(__name__)

INPUT_NAMES = ("audio_signal", "length")
OUTPUT_NAME = "logprobs"
BLANK_SYMBOL = "<blk>"
SPACE_SYMBOL = SP_WORD_START  # sherpa-onnx shows a leading "▁" as a space
# What sherpa-onnx's front end fixes (Kaldi's defaults, with the NeMo recognizer's overrides).
SHERPA_FEATURES = {
    "sample_rate": 16000,
    "win_ms": 25.0,
    "hop_ms": 10.0,
    "n_fft": 512,
    "window": "hann",
    "preemphasis": 0.97,
    "mel_scale": "slaney",
}
LOG_FLOOR = 1.1920928955078125e-07  # Kaldi's log(max(x, FLT_EPSILON))
# The log-prob of every non-blank token on the blank frames appended for sherpa-onnx's length
# (T // subsampling): exp() of it is 0 in float32, and it stays finite in beam-search sums.
NOT_BLANK = -1.0e4


def check_front_end(config: FeatureConfig, name: str = "model") -> None:
    """ValueError naming the first option of `config` that sherpa-onnx's front end cannot
    reproduce, and a warning when its frames are not sherpa-onnx's (see the module docstring)."""
    for key, want in SHERPA_FEATURES.items():
        got = getattr(config, key)
        if got != want:
            raise ValueError(
                f"{name}: features.{key}={got!r}, but sherpa-onnx computes features with "
                f"{key}={want!r}; a model for sherpa-onnx needs features {SHERPA_FEATURES} "
                f"(train one with these)"
            )
    if config.framing != "kaldi":
        shift = "5 ms later" if config.center else "7.5 ms earlier"
        log.warning(
            "%s: features.framing=%s: sherpa-onnx's frames sit %s than this model's, so "
            "its text may differ from asr transcribe's (train with features.framing=kaldi for "
            "the same frames)",
            name,
            config.framing,
            shift,
        )


def sherpa_features(wave: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """The log-mel features sherpa-onnx's NeMo CTC recognizer computes for mono 16 kHz samples
    `wave` (N,) in [-1, 1] (before any normalization): (T, F), T = (N + 80) // 160.

    Kaldi's framing with snip_edges=false (kaldi-native-fbank, which sherpa-onnx uses), in float64.
    """
    win, hop, n_fft = 400, 160, 512
    n = wave.shape[0]
    starts = torch.arange((n + hop // 2) // hop) * hop + hop // 2 - win // 2  # (T,)
    index = starts[:, None] + torch.arange(win)  # (T, win)
    index = index % (2 * n)  # mirrored (-1 -> 0, n -> n - 1), as often as a short wave needs
    index = torch.where(index >= n, 2 * n - 1 - index, index)
    if index.shape[0] == 0:
        return torch.zeros(0, n_mels)
    frames = wave.double()[index]  # (T, win)
    a = SHERPA_FEATURES["preemphasis"]
    frames = torch.cat([frames[:, :1] * (1 - a), frames[:, 1:] - a * frames[:, :-1]], dim=1)
    frames = frames * torch.hann_window(win, periodic=True, dtype=torch.float64)
    power = torch.fft.rfft(frames, n=n_fft).abs() ** 2  # (T, n_fft // 2 + 1)
    mel = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, 0.0, 8000.0, n_mels, 16000, norm="slaney", mel_scale="slaney"
    ).double()  # (n_fft // 2 + 1, F)
    return torch.log((power @ mel).clamp(min=LOG_FLOOR)).float()


def our_features(
    frontend: LogMelFeatures, audio_signal: torch.Tensor, length: torch.Tensor
) -> torch.Tensor:
    """sherpa-onnx's features audio_signal (B, F, T) with length (B,) -> (B, T, F) what
    `frontend` makes of the same audio: its log guard, then its normalization."""
    T = audio_signal.shape[2]
    config = frontend.config
    feats = audio_signal.transpose(1, 2)  # (B, T, F): log(max(power, LOG_FLOOR))
    if config.log_guard == "clamp":  # log(max(power, offset)): log is monotonic
        if config.log_offset > LOG_FLOOR:
            feats = feats.clamp(min=math.log(config.log_offset))
    else:  # log(power + offset)
        feats = torch.log(torch.exp(feats) + config.log_offset)
    pad_mask = make_pad_mask(length, T)  # (B, T)
    # The front end's own normalization (the one place it is written), on these frames.
    feats = frontend._normalize(feats, pad_mask, length)
    return feats.masked_fill(pad_mask[:, :, None], 0.0)


class SherpaGraph(nn.Module):
    """What is exported: sherpa-onnx's features -> our features -> `CtcModel` -> log-probs in
    sherpa-onnx's length.

    audio_signal (B, F, T) Kaldi log-mel (`sherpa_features`), length (B,) ->
    logprobs (B, T // subsampling, V): ours on our valid frames, blank (log-prob 0) after.
    """

    def __init__(self, model: CtcModel, frontend: LogMelFeatures) -> None:
        super().__init__()
        self.model = model
        self.frontend = frontend
        self.subsampling = model.config.subsampling_factor
        blank_frame = torch.full((model.vocab_size,), NOT_BLANK)
        blank_frame[BLANK_ID] = 0.0
        self.register_buffer("blank_frame", blank_frame, persistent=False)

    def features(self, audio_signal: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """(B, F, T) sherpa-onnx features -> (B, T, F) what our front end makes of them."""
        return our_features(self.frontend, audio_signal, length)

    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        length = length.long()
        log_probs, out_lengths = self.model(self.features(audio_signal, length), length)
        frames = audio_signal.shape[2] // self.subsampling  # what sherpa-onnx reads
        # (B, T', V) -> (B, frames, V): padded with blank frames (T' <= frames), or cut.
        log_probs = nn.functional.pad(log_probs, (0, 0, 0, frames))[:, :frames]
        valid = torch.arange(frames, device=length.device)[None, :] < out_lengths[:, None]
        return torch.where(valid[:, :, None], log_probs, self.blank_frame)  # (B, frames, V)


def tokens_text(tokenizer: Tokenizer) -> str:
    """tokens.txt: "symbol id" per line, the blank `<blk>`, the characters' word boundary `▁`."""
    lines = []
    for i in range(tokenizer.vocab_size):
        if i == BLANK_ID:
            symbol = BLANK_SYMBOL
        elif i == tokenizer.space_id:
            symbol = SPACE_SYMBOL
        else:
            symbol = tokenizer.id_to_piece(i)
        if not symbol or any(c.isspace() for c in symbol):
            raise ValueError(f"token {i} ({symbol!r}) cannot be written to tokens.txt")
        lines.append(f"{symbol} {i}\n")
    return "".join(lines)


def export_sherpa(model: str | Path, output: str | Path, quantize: str = "none") -> Path:
    """Export the bundle at `model` (a file or a shipped name) for sherpa-onnx's NeMo CTC
    recognizer (module docstring): the graph at `output` (an .onnx file), tokens.txt beside it,
    and with `quantize` "int8" the int8 graph beside it too (model.onnx -> model.int8.onnx).
    Each graph is checked with ONNX Runtime against PyTorch before anything is written.
    Returns `output`."""
    output = check_output(output, quantize)
    bundle = open_bundle(model)
    check_front_end(bundle.frontend.config, str(model))
    if bundle.model.config.style_tokens:
        raise ValueError(f"{model}: models with global style tokens cannot be exported to ONNX yet")
    graph = SherpaGraph(bundle.model, bundle.frontend).eval()
    files = write_checked(
        output,
        bundle.tokenizer,
        quantize,
        lambda path: _export(graph, path),
        lambda quantization: _metadata(bundle, quantization),
        lambda path, **bound: _check(path, graph, **bound),
    )
    log.info("sherpa-onnx model written: %s", ", ".join(str(path) for path in files))
    return output


def check_output(output: str | Path, quantize: str) -> Path:
    """`output` as a Path, refused in one line unless an .onnx file and a known `quantize`;
    the ONNX extras are checked too, before any work."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ValueError(f"--output {output}: name the model file, ending in .onnx")
    require("onnx", "onnx", "ONNX export")
    require("onnxscript", "onnx", "ONNX export")
    import_onnxruntime()
    return output


def write_checked(
    output: Path,
    tokenizer: Tokenizer,
    quantize: str,
    export: Callable[[Path], None],
    metadata: Callable[[str], dict[str, str]],
    check: Callable[..., None],
) -> list[Path]:
    """The fp32 graph `export(path)` writes, with `metadata("none")`, checked by
    `check(path, tolerance=CHECK_TOLERANCE)`; with `quantize` "int8" also its int8 graph, with
    `metadata("int8")`, checked by `check(path, min_agreement=INT8_MIN_AGREEMENT)`. Only when
    every check passed are `output`, `int8_path(output)` and tokens.txt beside them written
    (each atomically). Returns the files written."""
    files = {output.parent / "tokens.txt": tokens_text(tokenizer).encode("utf-8")}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export(fp32)
        _write_metadata(fp32, metadata("none"))
        check(fp32, tolerance=CHECK_TOLERANCE)
        files[output] = fp32.read_bytes()
        if quantize == "int8":
            int8 = Path(tmp) / "model.int8.onnx"
            _quantize_int8(fp32, int8)
            _write_metadata(int8, metadata("int8"))
            check(int8, min_agreement=INT8_MIN_AGREEMENT)
            files[int8_path(output)] = int8.read_bytes()
    for path, data in files.items():
        atomic_write(path, lambda tmp_path, data=data: tmp_path.write_bytes(data))
    return list(files)


def int8_path(output: str | Path) -> Path:
    """Where the int8 graph of `output` goes: model.onnx -> model.int8.onnx."""
    output = Path(output)
    return output.with_name(f"{output.stem}.int8.onnx")


def example_inputs(n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two lengths as sherpa-onnx makes it: (2, F, 300) log-mel, (2,)."""
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(2, n_mels, 300, generator=generator) * 2.0 - 8.0
    feats[1, :, 211:] = math.log(1e-10)  # sherpa-onnx's padding value
    return feats, torch.tensor([300, 211])


def _export(graph: SherpaGraph, path: Path) -> None:
    from torch.export import Dim

    inputs = example_inputs(graph.frontend.config.n_mels)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    min_frames = 7 if graph.subsampling == 4 else 15  # one output frame at least
    batch, time = Dim("batch", min=1, max=4096), Dim("time", min=min_frames, max=1_000_000)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        program = torch.onnx.export(
            graph,
            inputs,
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch, 2: time}, {0: batch}),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))


def _metadata(bundle: ModelBundle, quantization: str) -> dict[str, str]:
    """What sherpa-onnx's offline NeMo CTC recognizer reads, and our front end's config."""
    import json

    return {
        "model_type": "EncDecCTCModelBPE",  # what sherpa-onnx's NeMo CTC models say
        "vocab_size": str(bundle.model.vocab_size),
        "subsampling_factor": str(bundle.model.config.subsampling_factor),
        "normalize_type": "",  # the graph normalizes
        "is_giga_am": "0",
        "blank_id": str(BLANK_ID),
        "quantization": quantization,
        "comment": "exported by asr (asr export --format sherpa-onnx)",
        "asr_features_config": json.dumps(to_dict(bundle.frontend.config)),
    }


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    """The ONNX file at `path` with `metadata` in its metadata_props."""
    import onnx

    graph = onnx.load(str(path))
    _set_metadata(graph, metadata)
    onnx.save(graph, str(path))


def _check(
    path: Path,
    graph: SherpaGraph,
    tolerance: float | None = None,
    min_agreement: float | None = None,
) -> None:
    """ONNX Runtime on `path` vs PyTorch's `graph` on the example batch: log-probs within
    `tolerance` on the frames sherpa-onnx reads, or the same argmax on `min_agreement` of them."""
    ort = import_onnxruntime()
    feats, lengths = example_inputs(graph.frontend.config.n_mels)
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    (got,) = session.run(
        [OUTPUT_NAME], {INPUT_NAMES[0]: feats.numpy(), INPUT_NAMES[1]: lengths.numpy()}
    )
    with torch.inference_mode():
        want = graph(feats, lengths)
    if tuple(got.shape) != tuple(want.shape):
        raise ExportCheckError(
            f"sherpa-onnx export check failed: log-probs of shape {got.shape}, PyTorch "
            f"{tuple(want.shape)}"
        )
    read = [
        (torch.from_numpy(got)[b, :n], want[b, :n])
        for b, n in enumerate(lengths // graph.subsampling)
    ]
    if tolerance is not None:
        diff = max((g - w).abs().max().item() for g, w in read)
        if diff > tolerance:
            raise ExportCheckError(
                f"sherpa-onnx export check failed: log-probs differ from PyTorch's by {diff:.2e} "
                f"(tolerance {tolerance:.0e}); please report this with your torch version"
            )
    if min_agreement is not None:
        agreement = torch.cat([g.argmax(-1) == w.argmax(-1) for g, w in read]).double().mean()
        if agreement < min_agreement:
            raise ExportCheckError(
                f"sherpa-onnx export check failed: the int8 model's argmax agreement with "
                f"PyTorch {100 * agreement:.1f}% is below the {100 * min_agreement:.0f}% "
                f"required (export without --quantize int8)"
            )
