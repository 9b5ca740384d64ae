"""Every hyperparameter as a frozen dataclass, and `load_config(yaml, overrides)`.

Defaults live here; YAML files in `configs/` hold only what differs. A YAML key is the dataclass
field of the same name. Each dataclass checks its values when built; reading YAML, dotted
overrides, and the errors for unknown keys (naming the closest valid one) and wrong types are
`asr.config_io`'s, which knows nothing of the fields here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# to_dict, save_config and apply_override are re-exported: they have always been imported from here.
from asr.config_io import apply_override as apply_override
from asr.config_io import check_at_least, check_choice, check_positive, from_dict, load_dataclass
from asr.config_io import save_config as save_config
from asr.config_io import to_dict as to_dict

ACTIVATIONS = ("swish", "leaky_relu")
CONV_NORMS = ("batch_norm", "layer_norm")


@dataclass(frozen=True)
class EncoderConfig:
    """Conformer encoder dimensions (Gulati et al. 2020, table 1 for the S/M/L presets)."""

    feat_dim: int = 80
    d_model: int = 144
    num_layers: int = 16
    num_heads: int = 4
    ff_mult: int = 4
    conv_kernel_size: int = 31
    subsampling_factor: int = 4
    subsampling_channels: int = 144
    # Zero frames (and mel bins) on each side of every subsampling convolution: 0 (ours: output
    # frames only see the input) or 1 (NeMo's "striding": frames centred on 2t, length
    # (T - 1) // 2 + 1 per conv); with 1, frames past an item's length are zeroed between convs.
    subsampling_padding: int = 0
    # Multiply the subsampled frames by sqrt(d_model) before the blocks (NeMo's `xscaling`).
    xscaling: bool = False
    # One content/position bias pair (u, v) shared by every block's attention instead of a pair
    # per block (NeMo's `untie_biases: false`, Transformer-XL's original choice).
    shared_pos_bias: bool = False
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation: str = "swish"
    conv_norm: str = "batch_norm"
    style_tokens: bool = False
    num_style_tokens: int = 10
    style_token_heads: int = 4
    # Intermediate CTC (Lee & Watanabe 2021): blocks (1-based, before the last) whose outputs
    # also feed the CTC head during training, each with its own loss.
    inter_ctc_layers: tuple[int, ...] = ()
    # Self-conditioned CTC (Nozaki & Komatsu 2021): at those blocks, add Linear(V, D) of the
    # head's softmax back into the stream, so later blocks refine an explicit guess.
    self_conditioning: bool = False
    # Streaming (asr/modules/conformer.py): a convolution module that never looks ahead, and
    # training with a chunk size drawn per batch (min_chunk_frames..max_chunk_frames frames
    # after subsampling, or full context with probability full_context_prob), so one model
    # decodes offline and at any chunk size. WeNet's rule is 1..25 and 0.5.
    causal_conv: bool = False
    # Dynamic chunk convolution (Li et al. 2023, "Dynamic Chunk Convolution for Unified
    # Streaming and Non-streaming Conformer ASR"): the centred convolution of an offline model,
    # which in chunked mode sees K//2 frames of the chunks before and zeros past the end of its
    # own chunk. At full context it is the offline model exactly; causal_conv's alternative.
    chunk_conv: bool = False
    dynamic_chunk_training: bool = False
    max_chunk_frames: int = 25
    min_chunk_frames: int = 1
    full_context_prob: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "inter_ctc_layers", tuple(self.inter_ctc_layers))
        check_positive(self, "encoder", "feat_dim", "d_model", "num_layers", "num_heads")
        check_positive(self, "encoder", "ff_mult", "subsampling_channels")
        check_positive(self, "encoder", "num_style_tokens", "style_token_heads")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"encoder.d_model={self.d_model} is not divisible by "
                f"encoder.num_heads={self.num_heads}"
            )
        if self.style_tokens and self.d_model % self.style_token_heads:
            raise ValueError(
                f"encoder.d_model={self.d_model} is not divisible by "
                f"encoder.style_token_heads={self.style_token_heads}"
            )
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(
                f"encoder.conv_kernel_size must be a positive odd number, "
                f"got {self.conv_kernel_size}"
            )
        if self.subsampling_padding not in (0, 1):
            raise ValueError(
                f"encoder.subsampling_padding must be 0 or 1, got {self.subsampling_padding}"
            )
        if self.subsampling_factor not in (4, 8):
            raise ValueError(
                f"encoder.subsampling_factor must be 4 or 8, got {self.subsampling_factor}"
            )
        layers = self.inter_ctc_layers
        if any(not 1 <= i < self.num_layers for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(
                f"encoder.inter_ctc_layers must be distinct blocks in [1, num_layers - 1] = "
                f"[1, {self.num_layers - 1}], got {list(layers)}"
            )
        if self.self_conditioning and not layers:
            raise ValueError("encoder.self_conditioning needs encoder.inter_ctc_layers")
        check_positive(self, "encoder", "max_chunk_frames", "min_chunk_frames")
        if self.min_chunk_frames > self.max_chunk_frames:
            raise ValueError(
                f"encoder.min_chunk_frames={self.min_chunk_frames} is larger than "
                f"encoder.max_chunk_frames={self.max_chunk_frames}"
            )
        if not 0.0 <= self.full_context_prob <= 1.0:
            raise ValueError(
                f"encoder.full_context_prob must be in [0, 1], got {self.full_context_prob}"
            )
        if self.causal_conv and self.chunk_conv:
            raise ValueError("encoder.causal_conv and encoder.chunk_conv are two kinds of "
                             "streaming convolution: choose one (configs/demo.yaml and "
                             "configs/an4.yaml set chunk_conv: add encoder.chunk_conv=false "
                             "for causal convolutions)")  # fmt: skip
        if self.dynamic_chunk_training and not self.streamable_conv:
            raise ValueError(
                "encoder.dynamic_chunk_training needs encoder.chunk_conv: true or "
                "encoder.causal_conv: true (a centred convolution would look past the end of "
                "each chunk)"
            )
        check_choice(self, "encoder", "activation", ACTIVATIONS)
        check_choice(self, "encoder", "conv_norm", CONV_NORMS)
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"encoder.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def streamable_conv(self) -> bool:
        """Whether no convolution output depends on audio past the end of its chunk."""
        return self.causal_conv or self.chunk_conv

    @property
    def conv_cache_frames(self) -> int:
        """Depthwise convolution inputs a stream carries to the next chunk: K-1 (causal) or
        K//2 (chunk convolution: its left half; the right half is zeros at the chunk's end)."""
        return self.conv_kernel_size // 2 if self.chunk_conv else self.conv_kernel_size - 1

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EncoderConfig:
        """The named size: "xs" (tiny, for tests and CPU demos), "s", "m", "l" (the paper's)."""
        if name not in ENCODER_PRESETS:
            raise ValueError(
                f"unknown encoder preset {name!r}; choose from {list(ENCODER_PRESETS)}"
            )
        return cls(**{**ENCODER_PRESETS[name], **overrides})


ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "xs": dict(d_model=64, num_layers=2, num_heads=2, conv_kernel_size=15, subsampling_channels=64),
    "s": dict(d_model=144, num_layers=16, num_heads=4, subsampling_channels=144),
    "m": dict(d_model=256, num_layers=16, num_heads=4, subsampling_channels=256),
    "l": dict(d_model=512, num_layers=17, num_heads=8, subsampling_channels=512),
}


FEATURE_NORMALIZATIONS = ("utterance", "per_feature", "global", "running", "none")


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel front end: 25 ms windows every 10 ms at 16 kHz (asr.audio.LogMelFeatures).

    The defaults are this toolkit's own. NeMo's front end (asr.interop.nemo) is: preemphasis
    0.97, center true, window hann_symmetric, mel_scale slaney, log_offset 2**-24, normalize
    per_feature; its mel filterbank and window come from the checkpoint (they are buffers of
    the front end's state, saved in every bundle).
    """

    sample_rate: int = 16000
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    # "utterance": mean and population std over the utterance's frames; "per_feature": the same
    # with the unbiased std plus 1e-5 (NeMo's); "global": statistics of the training set;
    # "running": frame t by the mean and std of the utterance's frames 0..t, the training set's
    # statistics counting as `running_prior_frames` frames before the first (causal: it can
    # stream, and a voice's own tilt and level are divided out as it is heard); "none".
    normalize: str = "utterance"
    running_prior_frames: float = 100.0
    # x[n] - preemphasis * x[n-1] before the STFT (0: off).
    preemphasis: float = 0.0
    # false: frame t covers samples [t*hop, t*hop + win), T = 1 + (N - win) // hop;
    # true: frame t is centred on sample t*hop (zero padding at both ends), T = N // hop.
    center: bool = False
    # "stft": the framing above. "kaldi": Kaldi's snip_edges=false (sherpa-onnx's front end):
    # frame t centred on sample t*hop + hop//2, samples mirrored past both ends, pre-emphasis
    # within each frame, T = (N + hop//2) // hop; needs center false.
    framing: str = "stft"
    window: str = "hann"  # "hann" (periodic, torch's default) | "hann_symmetric"
    mel_scale: str = "htk"  # "htk" (no area normalization) | "slaney" (librosa's default)
    log_offset: float = 1e-6  # log(power + log_offset)
    log_guard: str = "add"  # "add": log(power + log_offset) | "clamp": log(max(power, log_offset))

    def __post_init__(self) -> None:
        check_positive(self, "features", "sample_rate", "n_mels", "win_ms", "hop_ms", "n_fft")
        check_positive(self, "features", "log_offset")
        check_at_least(self, "features", 0.0, "running_prior_frames")
        check_choice(self, "features", "normalize", FEATURE_NORMALIZATIONS)
        check_choice(self, "features", "window", ("hann", "hann_symmetric"))
        check_choice(self, "features", "mel_scale", ("htk", "slaney"))
        check_choice(self, "features", "framing", ("stft", "kaldi"))
        check_choice(self, "features", "log_guard", ("add", "clamp"))
        if self.framing == "kaldi" and self.center:
            raise ValueError("features.framing=kaldi places its own frames (centred on t*hop + "
                             "hop/2); set features.center false")  # fmt: skip
        if not 0.0 <= self.preemphasis < 1.0:
            raise ValueError(f"features.preemphasis must be in [0, 1), got {self.preemphasis}")
        win, hop = (round(self.sample_rate * ms / 1000) for ms in (self.win_ms, self.hop_ms))
        if not 1 <= win <= self.n_fft or hop < 1:
            raise ValueError(
                f"features.win_ms={self.win_ms} and features.hop_ms={self.hop_ms} give windows of "
                f"{win} samples every {hop}; need 1 <= window <= features.n_fft={self.n_fft}"
            )


@dataclass(frozen=True)
class AugmentConfig:
    """SpecAugment (Park et al. 2019) with length-aware time masks, speed and noise."""

    freq_masks: int = 2
    freq_mask_width: int = 27
    time_masks: int = 10
    time_mask_max_ratio: float = 0.05
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    noise_prob: float = 0.0
    noise_snr_db: tuple[float, float] = (10.0, 30.0)
    noise_manifest: str | None = None

    def __post_init__(self) -> None:
        check_at_least(self, "augment", 0, "freq_masks", "freq_mask_width", "time_masks")
        check_at_least(self, "augment", 0.0, "time_mask_max_ratio", "noise_prob", high=1.0)
        if not self.speed_factors or not all(f > 0 for f in self.speed_factors):
            raise ValueError(
                f"augment.speed_factors must be positive numbers, got {list(self.speed_factors)}"
            )
        if self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError(f"augment.noise_snr_db must be [low, high], got {self.noise_snr_db}")


@dataclass(frozen=True)
class TokenizerConfig:
    """`kind`: "char", "unigram" or "bpe". `path`: a trained tokenizer file to use as is.
    `text`: what a new tokenizer learns from: "train" (the training transcripts) or "english"
    (general English: pseudo-text in the word frequencies of pocketsphinx's 72k-word LM,
    `pip install 'asr[english]'`), for units that fit any English corpus, not only this one."""

    kind: str = "char"
    vocab_size: int = 256
    path: str | None = None
    text: str = "train"

    def __post_init__(self) -> None:
        check_choice(self, "tokenizer", "kind", ("char", "unigram", "bpe"))
        check_choice(self, "tokenizer", "text", ("train", "english"))
        check_positive(self, "tokenizer", "vocab_size")


@dataclass(frozen=True)
class DataConfig:
    """Where the utterances come from and how they are batched."""

    train_manifest: str | None = None
    val_manifest: str | None = None
    hf_dataset: str | None = None
    hf_train_split: str = "train"
    hf_val_split: str = "validation"
    hf_streaming: bool = False
    # Streaming: rows a reader shuffles and buckets by duration at a time (asr.data.stream); it
    # holds their audio bytes (about 200 MB for 1000 LibriSpeech rows) per DataLoader worker.
    shuffle_buffer: int = 1000
    max_batch_seconds: float = 200.0
    num_buckets: int = 20
    min_duration: float = 0.1
    max_duration: float = 30.0
    num_workers: int = 2

    def __post_init__(self) -> None:
        check_positive(self, "data", "max_batch_seconds", "num_buckets", "max_duration")
        check_positive(self, "data", "shuffle_buffer")
        check_at_least(self, "data", 0, "min_duration", "num_workers")
        if self.min_duration >= self.max_duration:
            raise ValueError(
                f"data.min_duration={self.min_duration} must be below "
                f"data.max_duration={self.max_duration}"
            )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then Noam (inverse square root) or cosine decay."""

    lr: float = 2e-3
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 1000
    schedule: str = "noam"  # "noam" | "cosine"
    min_lr_ratio: float = 0.01
    grad_clip: float = 5.0
    # The objective: (1 - w) * CTC of the last block + w * mean CTC of encoder.inter_ctc_layers.
    inter_ctc_weight: float = 0.3
    # Fine-tuning (init_from): the encoder learns at lr * encoder_lr_scale (the CTC head at lr),
    # and the subsampling plus the first freeze_blocks blocks do not learn at all.
    encoder_lr_scale: float = 1.0
    freeze_blocks: int = 0
    # In-place distillation for dynamic chunk training (asr.model.distilled_objective): a
    # chunked batch also runs at full context without gradient, and the loss adds distill_weight
    # times the per-frame KL divergence of the chunked posteriors from the full-context ones.
    # With dual_mode (Yu et al. 2021, "Dual-mode ASR: Unify and Improve Streaming ASR with
    # Full-context Modeling") every batch trains at full context and at a chunk size drawn from
    # encoder.min_chunk_frames..max_chunk_frames (encoder.full_context_prob is not used), the
    # loss their mean plus the distillation; a step costs about 1.6 single-mode steps.
    distill_weight: float = 0.0
    dual_mode: bool = False

    @property
    def distilled(self) -> bool:
        """Training uses `asr.model.distilled_objective` (full-context and chunked passes)."""
        return self.dual_mode or self.distill_weight > 0

    def __post_init__(self) -> None:
        check_at_least(self, "optim", 0.0, "encoder_lr_scale", "distill_weight")
        check_at_least(self, "optim", 0, "freeze_blocks")
        check_choice(self, "optim", "schedule", ("noam", "cosine"))
        check_at_least(self, "optim", 0.0, "inter_ctc_weight", high=1.0)
        check_positive(self, "optim", "lr")
        check_at_least(self, "optim", 0, "weight_decay", "warmup_steps", "grad_clip")
        check_at_least(self, "optim", 0.0, "min_lr_ratio", high=1.0)
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"optim.betas must both be in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class TrainerConfig:
    """What Lightning's Trainer is given, plus checkpointing choices."""

    max_steps: int = -1
    max_epochs: int = 100
    # A wall-clock budget for training, Lightning's own `max_time` ("DD:HH:MM:SS"): training
    # stops when it is spent (or at max_steps, whichever comes first); checkpoint averaging and
    # the model.pt export still happen. Without max_steps the learning-rate schedule runs over
    # it; with max_steps the schedule follows the steps and max_time is only a safety stop.
    max_time: str | None = None
    # "auto": bf16-mixed where bf16 matmuls are fast (a CUDA GPU with bf16, or a CPU with
    # amx_bf16 or avx512_bf16), else 32-true; see asr.training.hardware.resolve_precision.
    precision: str = "32-true"  # "auto" | "32-true" | "bf16-mixed" | "16-mixed"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1  # machines, each running `devices` processes (SLURM srun, torchrun)
    strategy: str = "auto"
    val_every_n_steps: int = 0  # 0: validate once an epoch
    log_every_n_steps: int = 10
    save_top_k: int = 3
    average_last_k: int = 1
    seed: int = 1234
    progress_bar: bool = True

    def __post_init__(self) -> None:
        check_choice(
            self, "trainer", "precision", ("auto", "32-true", "32", "bf16-mixed", "16-mixed")
        )
        if self.max_time is not None:
            max_time_seconds(self.max_time)  # a malformed value fails here, naming the key
        limited = [name for name in ("max_steps", "max_epochs") if getattr(self, name) != -1]
        check_positive(self, "trainer", "average_last_k", "log_every_n_steps", "num_nodes")
        check_positive(self, "trainer", *limited)
        check_at_least(self, "trainer", 0, "val_every_n_steps")
        check_at_least(self, "trainer", -1, "save_top_k")


@dataclass(frozen=True)
class TrainConfig:
    """Everything `asr train` needs. `model` picks an encoder preset; `encoder` overrides it."""

    exp_dir: str = "exp/run"
    # A model.pt bundle whose weights start the training (fine-tuning; ignored when resuming).
    # Its tokenizer is used unless tokenizer.path names another: then the CTC head rows of the
    # pieces both share are kept and the others start fresh (asr.training.train.initialize_from).
    init_from: str | None = None
    model: str = "xs"
    encoder: dict[str, Any] = field(default_factory=dict)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if not self.exp_dir.strip():
            raise ValueError(f"exp_dir must name a folder, got {self.exp_dir!r}")
        # Validate the encoder overrides now, so a bad key fails before any work starts.
        layers = self.encoder_config().num_layers
        if self.optim.freeze_blocks > layers:
            raise ValueError(
                f"optim.freeze_blocks={self.optim.freeze_blocks} is more than the encoder's "
                f"{layers} blocks"
            )
        if self.optim.distilled and not self.encoder_config().dynamic_chunk_training:
            name = "dual_mode" if self.optim.dual_mode else "distill_weight"
            raise ValueError(
                f"optim.{name} trains batches at full context and in chunks: it needs "
                "encoder.dynamic_chunk_training: true (with encoder.chunk_conv or causal_conv)"
            )

    def encoder_config(self) -> EncoderConfig:
        return from_dict(
            EncoderConfig,
            {**_preset_fields(self.model), **self.encoder},
            prefix="encoder",
        )


def max_time_seconds(value: str) -> float:
    """Lightning's "DD:HH:MM:SS" -> seconds; anything else is a ValueError naming the key."""
    parts = str(value).split(":")
    try:
        days, hours, minutes, seconds = (float(x) for x in parts)
    except ValueError:
        raise ValueError(
            f"trainer.max_time must be DD:HH:MM:SS (e.g. 00:00:30:00 for 30 minutes), got {value!r}"
        ) from None
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"trainer.max_time must be a positive duration, got {value!r}")
    return total


def _preset_fields(name: str) -> dict[str, Any]:
    if name not in ENCODER_PRESETS:
        raise ValueError(
            f"model: unknown encoder preset {name!r}; choose from {list(ENCODER_PRESETS)}"
        )
    return ENCODER_PRESETS[name]


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a YAML file (or start from defaults) and apply `dotted.key=value` overrides."""
    return load_dataclass(TrainConfig, path, overrides)
