"""Transcription of any audio of any length: `load_model` and `Transcriber`.

An input is a file path, an `AudioSegment` (a stretch of a file, as in a manifest) or a
`(samples, sample_rate)` pair. `Transcriber.transcribe` runs the engine (`asr.inference.engine`:
chunk planning, batching, decoding, stitching, a step at a time and stoppable) with the
`ChunkingOptions` and `DecodingOptions` given (`asr.inference.options`);
`Transcriber.transcribe_many` decodes with several `DecodingOptions` from one pass of the
acoustic model (a search over LM weights, `asr.scoring.tune`); `Transcriber.stream` starts a
live `Stream`.

A failing input (missing, empty, corrupt, not audio) gives a `Result` whose `error` is a one-line
message naming it; the other inputs are transcribed all the same.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from asr.checkpoint import ModelBundle
from asr.inference.alignment import Word
from asr.inference.decoding import Decoder, make_decoders
from asr.inference.engine import AudioSegment, Engine, OnWords, Stopped, stitch_chunks
from asr.inference.onnx import is_onnx_path, load_onnx_bundle
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.result import Result
from asr.inference.streaming import (
    DEFAULT_CHUNK_MS,
    DEFAULT_LEFT_SECONDS,
    DEFAULT_LOOKAHEAD_MS,
    Stream,
)
from asr.interop.sources import model_file, open_bundle

__all__ = [
    "AudioSegment",
    "ChunkingOptions",
    "DecodingOptions",
    "Result",
    "Stopped",
    "Transcriber",
    "Word",
    "load_model",
    "stitch_chunks",
]


def load_model(path: str | Path, device: str = "cpu") -> Transcriber:
    """A `Transcriber` for the model bundle at `path` ("auto" device: CUDA when available).

    `path` is a `model.pt` bundle, the name of a shipped one, an NVIDIA NeMo `.nemo` file, an
    `hf://OWNER/REPO[@REVISION][/FILE]` path on the Hugging Face Hub (`asr.interop.sources`), or
    an exported `.onnx` file (run by ONNX Runtime on the CPU, `asr.inference.onnx`).
    """
    if is_onnx_path(path):
        bundle = load_onnx_bundle(model_file(path))
        return Transcriber(bundle, "cpu" if device == "auto" else device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available")
    return Transcriber(open_bundle(path, device), device)


class Transcriber:
    """A loaded model bundle, ready to transcribe (see the module docstring)."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle.to(device)
        self.device = torch.device(device)
        self.sample_rate = bundle.frontend.config.sample_rate
        self.frame_seconds = bundle.frame_seconds
        self.engine = Engine(self.bundle, self.device)
        # The decoders of the last call, kept for the next call with the same options.
        self._decoders: tuple[tuple[DecodingOptions, ...], list[Decoder]] | None = None

    def transcribe(
        self,
        inputs: Any,
        chunking: ChunkingOptions | None = None,
        *,
        options: DecodingOptions | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_words: OnWords | None = None,
        **fields: Any,
    ) -> list[Result]:
        """Results in input order for paths, `AudioSegment`s or `(samples, rate)` pairs (or one).

        Decoding: `options`, or its fields as keywords (`lm=..., beam_size=...`); neither is
        greedy decoding. Chunking: `chunking`, or its fields as keywords (`chunk_seconds=...`);
        neither is `ChunkingOptions()`. `should_stop` is asked before each step (True raises
        `Stopped`); `on_words(i, words)` gets input i's words as soon as they are final
        (`asr.inference.engine`). Bad options raise ValueError; a bad input gets a `Result` with
        its `error` set.
        """
        chunking = _options(ChunkingOptions, chunking, fields)
        options = _options(DecodingOptions, options, fields)
        if fields:
            raise TypeError(f"transcribe() got unexpected keyword(s) {', '.join(fields)}")
        decoder = self._get_decoder(options)
        return self.engine.run(_as_list(inputs), chunking, decoder, should_stop=should_stop,
                               on_words=on_words)  # fmt: skip

    def transcribe_many(
        self,
        inputs: Any,
        chunking: ChunkingOptions | None = None,
        *,
        options: Sequence[DecodingOptions],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Result]]:
        """Per `options[j]`, the results in input order: `results[j][i]` is what
        `transcribe(inputs, chunking, options=options[j])[i]` gives, but the front end and the
        acoustic model run once, each batch's log-probs going to every decoder (one loaded LM
        per LM file, `make_decoders`)."""
        if not options:
            raise ValueError("transcribe_many needs at least one DecodingOptions")
        decoders = self._get_decoders(tuple(options))
        return self.engine.run_many(_as_list(inputs), chunking or ChunkingOptions(), decoders,
                                    should_stop=should_stop)  # fmt: skip

    def stream(
        self,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        left_seconds: float | None = DEFAULT_LEFT_SECONDS,
        *,
        options: DecodingOptions | None = None,
        id: str = "stream",
        lookahead_ms: float = DEFAULT_LOOKAHEAD_MS,
        **decoding: Any,
    ) -> Stream:
        """A `Stream` for live audio: `accept(samples)` pieces of any size (partial text after
        each chunk of `chunk_ms`), then `finish()` (the final `Result`). Attention sees at most
        `left_seconds` before each chunk (None: everything; memory then grows with the input);
        `lookahead_ms`: audio after each chunk that its frames see as well (a word then waits
        up to chunk_ms + lookahead_ms). Needs a model trained with `encoder.chunk_conv` or
        `causal_conv` (asr.inference.streaming)."""
        decoder = self._get_decoder(_options(DecodingOptions, options, decoding))
        if decoding:
            raise TypeError(f"stream() got unexpected keyword(s) {', '.join(decoding)}")
        return Stream(self.bundle, self.device, decoder, chunk_ms, left_seconds, id, lookahead_ms)

    def _get_decoder(self, options: DecodingOptions) -> Decoder:
        return self._get_decoders((options,))[0]

    def _get_decoders(self, options: tuple[DecodingOptions, ...]) -> list[Decoder]:
        if self._decoders is None or self._decoders[0] != options:
            self._decoders = None  # the last call's LMs are freed before the next ones load
            self._decoders = (options, make_decoders(self.bundle.tokenizer, list(options)))
        return self._decoders[1]


def _options(kind: type, given: Any, fields: dict[str, Any]) -> Any:
    """`given`, or a `kind` made of the keywords in `fields` that are its fields (taken out of
    `fields`); both at once is a ValueError."""
    names = {f.name for f in dataclasses.fields(kind)}
    mine = {name: fields.pop(name) for name in list(fields) if name in names}
    if given is not None and mine:
        raise ValueError(f"give either {kind.__name__}(...) or its fields, not both")
    return given if given is not None else kind(**mine)


def _as_list(inputs: Any) -> list[Any]:
    """A single path, segment or (samples, rate) pair -> [it]; a list stays as it is."""
    if isinstance(inputs, str | Path | AudioSegment):
        return [inputs]
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], numbers.Real):
        return [inputs]
    return list(inputs)
