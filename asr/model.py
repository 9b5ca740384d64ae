"""`CtcModel`: the Conformer encoder with a linear CTC head (Graves et al. 2006), and its loss.

Optionally with intermediate CTC (Lee & Watanabe 2021, "Intermediate Loss Regularization for
CTC-based Speech Recognition"): the outputs of `config.inter_ctc_layers` go through the same head
and get their own CTC loss in training; and self-conditioning (Nozaki & Komatsu 2021,
"Relaxing the Conditional Independence Assumption of CTC-based ASR by Conditioning on
Intermediate Predictions"): the softmax of those intermediate predictions is projected back to
D and added to the stream, in training and inference alike.

Plain `nn.Module`; the features front end and the tokenizer travel beside it in the model bundle.
Symbols: B batch, T feature frames, T' encoder frames, F feature bins, D width, V vocabulary.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from asr.config import EncoderConfig
from asr.modules.conformer import FULL_CONTEXT, ConformerEncoder, StreamState
from asr.modules.subsampling import SubsamplingGeometry
from asr.tokenizer import BLANK_ID


class AcousticModel(Protocol):
    """What inference needs of an acoustic model, PyTorch (`CtcModel`) or ONNX Runtime
    (`asr.inference.onnx.OnnxCtcModel`): its configuration, vocabulary, geometry (how output
    frames relate to feature frames: the front end adds sample rate and frame shift, see
    `ModelBundle.frame_seconds`) and the whole-utterance forward pass. Nothing outside a model
    recomputes frame counts."""

    config: EncoderConfig
    vocab_size: int

    @property
    def geometry(self) -> SubsamplingGeometry: ...

    def output_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) feature frames -> (B,) output frames."""
        ...

    def __call__(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), feat_lengths (B,) -> (log_probs (B, T', V), out_lengths (B,))."""
        ...

    def to(self, device: str | torch.device) -> AcousticModel: ...

    def eval(self) -> AcousticModel: ...


class StreamingAcousticModel(AcousticModel, Protocol):
    """An acoustic model that runs one chunk at a time (`asr.inference.streaming.Stream`):
    `CtcModel`, or `OnnxCtcModel` with the streaming graph of `asr export --streaming`. The
    state is `StreamState`'s tensors, whichever runs it."""

    def initial_state(
        self, batch: int = 1, cache_frames: int = 0, device: torch.device | str = "cpu"
    ) -> StreamState:
        """The state before the first chunk, with `cache_frames` slots of left context."""
        ...

    def forward_chunk(
        self, feats: torch.Tensor, state: StreamState, emit: int | None = None
    ) -> tuple[torch.Tensor, StreamState]:
        """feats (B, stride (C-1) + span, F), state -> (log_probs (B, C, V), the state after
        the first E = `emit` frames, default C: the last C - E are look-ahead)."""
        ...


class CtcModel(nn.Module):
    """feats -> ConformerEncoder -> Linear(D, V) -> log-softmax. Blank is id 0."""

    def __init__(self, config: EncoderConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(
                f"vocab_size must count the blank and at least one token, got {vocab_size}"
            )
        self.config = config
        self.vocab_size = vocab_size
        self.encoder = ConformerEncoder(config)
        self.head = nn.Linear(config.d_model, vocab_size)
        # One projection shared by all conditioned blocks, as in the paper and ESPnet.
        self.condition = nn.Linear(vocab_size, config.d_model) if config.self_conditioning else None

    @property
    def geometry(self) -> SubsamplingGeometry:
        return self.encoder.subsampling.geometry

    def output_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder.output_lengths(feat_lengths)

    def forward(
        self,
        feats: torch.Tensor,
        feat_lengths: torch.Tensor,
        chunk: int | None = None,
        left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), feat_lengths (B,) -> (log_probs (B, T', V) float32, out_lengths (B,)).

        `chunk`/`left_chunks`: attention limited as in streaming (`ConformerEncoder.forward`).
        """
        if self.condition is None:  # nothing happens between blocks: no hook
            x, out_lengths = self.encoder(feats, feat_lengths, None, chunk, left_chunks)
            return self.log_probs(x), out_lengths
        log_probs, out_lengths, _ = self.forward_intermediate(
            feats, feat_lengths, chunk, left_chunks
        )
        return log_probs, out_lengths

    def forward_intermediate(
        self,
        feats: torch.Tensor,
        feat_lengths: torch.Tensor,
        chunk: int | None = None,
        left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """As `forward`, plus the log-probs (B, T', V) of each of `config.inter_ctc_layers`."""
        intermediate: list[torch.Tensor] = []
        hook = self._between_blocks(intermediate)
        x, out_lengths = self.encoder(feats, feat_lengths, hook, chunk, left_chunks)
        return self.log_probs(x), out_lengths, intermediate

    def initial_state(
        self, batch: int = 1, cache_frames: int = 0, device: torch.device | str = "cpu"
    ) -> StreamState:
        """The state before a stream's first chunk, keeping `cache_frames` frames of left
        context (`ConformerEncoder.initial_state`)."""
        return self.encoder.initial_state(batch, cache_frames, device)

    def forward_chunk(
        self, feats: torch.Tensor, state: StreamState, emit: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, StreamState]:
        """Streaming, evaluation: the feature frames feats (B, T, F) of one chunk of C output
        frames and the state after the chunks before it -> (log_probs (B, C, V), the state
        after its first E = `emit` frames, default C; the last C - E are look-ahead, their
        log-probs provisional); see `ConformerEncoder.forward_chunk`. The chunk graph of the
        ONNX export is this method."""
        x, state = self.encoder.forward_chunk(feats, state, self._between_blocks([]), emit)
        return self.log_probs(x), state

    def _between_blocks(self, intermediate: list[torch.Tensor]):
        """The `after_block` hook of intermediate CTC and self-conditioning (None: no hook)."""
        layers = set(self.config.inter_ctc_layers)
        if not layers:
            return None

        def after_block(i: int, x: torch.Tensor) -> torch.Tensor:
            if i not in layers:
                return x
            log_probs = self.log_probs(x)  # (B, T', V)
            intermediate.append(log_probs)
            if self.condition is None:
                return x
            return x + self.condition(log_probs.exp().to(x.dtype))

        return after_block

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T', D) -> log-softmax of the head (B, T', V), in float32 even under autocast."""
        return self.head(x).float().log_softmax(dim=-1)


def ctc_loss(
    log_probs: torch.Tensor,
    out_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
) -> torch.Tensor:
    """Mean over utterances of the CTC loss per target token, computed in float32.

    log_probs (B, T', V), out_lengths (B,), targets (B, S) padded, target_lengths (B,) -> ().
    Impossible alignments (too few frames) give 0 instead of inf (`zero_infinity`), so one bad
    utterance cannot poison a batch; the data pipeline filters them out beforehand anyway.
    """
    return F.ctc_loss(
        log_probs.float().transpose(0, 1),  # (T', B, V): the one time-major tensor, for ctc_loss
        targets,
        out_lengths,
        target_lengths,
        blank=BLANK_ID,
        reduction="mean",
        zero_infinity=True,
    )


def ctc_objective(
    model: CtcModel,
    feats: torch.Tensor,
    feat_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    inter_weight: float,
    chunk: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss: (1 - w) * CTC(last block) + w * mean CTC(intermediate blocks), or the
    plain CTC loss when the model has no `inter_ctc_layers`; plus its parts for logging.

    feats (B, T, F), feat_lengths (B,), targets (B, S) padded, target_lengths (B,) -> (loss (),
    {"ctc": (), "inter_ctc": ()}). `chunk`: as in `ConformerEncoder.forward`.
    """
    loss, parts, _, _ = _objective_and_posteriors(
        model, feats, feat_lengths, targets, target_lengths, inter_weight, chunk
    )
    return loss, parts


def distilled_objective(
    model: CtcModel,
    feats: torch.Tensor,
    feat_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    inter_weight: float,
    distill_weight: float,
    dual: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dynamic chunk training with in-place distillation: the full-context posteriors of the
    batch teach its chunked ones, `distill_weight` times `frame_kl` (teacher detached).

    `dual` (dual-mode training, Yu et al. 2021): every batch runs at full context and at a chunk
    size drawn from the encoder's range (never full context); the loss is the mean of the two
    `ctc_objective`s plus the distillation. Otherwise the batch runs at a size drawn as usual
    (full context with the config's `full_context_prob`: plain `ctc_objective`); a chunked batch
    also runs at full context without gradient, as the teacher, and its loss is the chunked
    `ctc_objective` plus the distillation.
    Same arguments and parts as `ctc_objective`, plus "distill" (and "ctc_chunk" when dual).
    """
    args = (model, feats, feat_lengths, targets, target_lengths, inter_weight)
    frames = int(model.output_lengths(feat_lengths.new_tensor([feats.shape[1]]))[0])
    if dual:
        full, parts, teacher, _ = _objective_and_posteriors(*args, FULL_CONTEXT)
        chunk = model.encoder.draw_chunk(frames, full_context_prob=0.0)
    else:
        chunk = model.encoder.draw_chunk(frames)
        if chunk is None:
            return ctc_objective(*args, chunk=FULL_CONTEXT)
        with torch.no_grad():
            teacher, _ = model(feats, feat_lengths, FULL_CONTEXT)
    chunked, chunk_parts, student, out_lengths = _objective_and_posteriors(
        *args, FULL_CONTEXT if chunk is None else chunk
    )
    distill = frame_kl(teacher.detach(), student, out_lengths)
    if not dual:
        return chunked + distill_weight * distill, {**chunk_parts, "distill": distill}
    loss = 0.5 * (full + chunked) + distill_weight * distill
    return loss, {**parts, "ctc_chunk": chunk_parts["ctc"], "distill": distill}


def frame_kl(teacher: torch.Tensor, student: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames of KL(teacher || student) between two sets of log-probs.

    teacher, student (B, T', V) log-probs, lengths (B,) valid frames -> () in float32.
    """
    valid = torch.arange(teacher.shape[1], device=lengths.device) < lengths[:, None]  # (B, T')
    kl = (teacher.exp() * (teacher - student)).sum(-1)  # (B, T')
    return (kl * valid).sum() / valid.sum().clamp(min=1)


def _objective_and_posteriors(
    model: CtcModel,
    feats: torch.Tensor,
    feat_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    inter_weight: float,
    chunk: int | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """`ctc_objective`'s loss and parts, plus the final log-probs (B, T', V) and their lengths."""
    log_probs, out_lengths, intermediate = model.forward_intermediate(feats, feat_lengths, chunk)
    final = ctc_loss(log_probs, out_lengths, targets, target_lengths)
    if not intermediate:
        return final, {"ctc": final}, log_probs, out_lengths
    inter = torch.stack(
        [ctc_loss(lp, out_lengths, targets, target_lengths) for lp in intermediate]
    ).mean()
    loss = (1 - inter_weight) * final + inter_weight * inter
    return loss, {"ctc": final, "inter_ctc": inter}, log_probs, out_lengths
