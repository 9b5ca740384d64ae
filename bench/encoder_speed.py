"""Conformer encoder speed side by side: ours vs torchaudio vs SpeechBrain, and hardware use.

One process, the same input, cases interleaved round by round (see `bench/_common.py`):

- training step (forward, backward, AdamW) and inference (`inference_mode`, eval) in
  audio-seconds per second, at the encoder level: the blocks after 4x subsampling, input
  (B, T', D) = (8, 248, 144) for 8 x 10 s in the S preset (16 layers, D 144, 4 heads, FF 576,
  kernel 31, dropout 0.1 everywhere);
  - ours: `ConformerEncoder.forward_blocks` (relative-position attention, Dai et al. 2019);
  - `torchaudio.models.Conformer` with the same sizes (no positional encoding at all);
  - SpeechBrain's `ConformerEncoder` with `RelPosMHAXL` attention (skipped when not installed);
  - our whole `CtcModel` (subsampling, encoder, CTC head; CTC loss for training) from features;
- the matmul peak: one fp32 2048 x 2048 GEMM, timed in the same rounds;
- FLOPs counted with `FlopCounterMode` and utilization = achieved FLOP/s / GEMM FLOP/s;
- our fast path against a naive reference of the same weights (explicit (T, T) distance
  matrix, unfused conv and batch norm), on a padded batch.

    .venv/bin/python bench/encoder_speed.py                # 5-6 min on 2 quiet cores
    .venv/bin/python bench/encoder_speed.py --quick        # about 1.5 min
    .venv/bin/python bench/encoder_speed.py --threads 1    # shared machine: compare CPU times

SpeechBrain is a benchmark-only dependency:
`pip install --no-deps speechbrain hyperpyyaml ruamel.yaml scipy` (keeps torch as it is).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    count_flops,
    interleave,
    machine,
    matmul_peak,
    set_threads,
    summarize,
    write_json,
)

from asr.config import EncoderConfig
from asr.model import CtcModel, ctc_loss
from asr.modules.attention import sinusoids
from asr.modules.conformer import ConformerEncoder
from asr.modules.masks import make_pad_mask

SAMPLE_RATE, HOP, WIN = 16000, 160, 400


def encoder_frames(encoder: ConformerEncoder, seconds: float) -> tuple[int, int]:
    """(feature frames T, encoder frames T') for `seconds` of audio at a 10 ms hop."""
    feats = 1 + (round(seconds * SAMPLE_RATE) - WIN) // HOP
    return feats, int(encoder.output_lengths(torch.tensor([feats])).item())


# ---------------------------------------------------------------------------------- the models


def build_models(config: EncoderConfig, dropout: float) -> dict[str, tuple[nn.Module, Callable]]:
    """name -> (module, forward(x (B, T', D), lengths (B,)) -> (B, T', D))."""
    import torchaudio

    ours = ConformerEncoder(config)
    models = {"ours": (ours, ours.forward_blocks)}
    ta = torchaudio.models.Conformer(
        input_dim=config.d_model,
        num_heads=config.num_heads,
        ffn_dim=config.ff_mult * config.d_model,
        num_layers=config.num_layers,
        depthwise_conv_kernel_size=config.conv_kernel_size,
        dropout=dropout,
    )
    models["torchaudio"] = (ta, lambda x, lengths: ta(x, lengths)[0])
    speechbrain = build_speechbrain(config, dropout)
    if speechbrain is not None:
        models["speechbrain"] = speechbrain
    return models


def build_speechbrain(config: EncoderConfig, dropout: float) -> tuple[nn.Module, Callable] | None:
    try:
        logging.disable(logging.WARNING)  # SpeechBrain logs at import
        from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder as SbEncoder
        from speechbrain.nnet.attention import RelPosEncXL
    except ImportError as err:
        print(
            f"SpeechBrain skipped ({err}); to include it: .venv/bin/pip install --no-deps "
            "speechbrain hyperpyyaml ruamel.yaml scipy",
            file=sys.stderr,
        )
        return None
    finally:
        logging.disable(logging.NOTSET)
    sb = SbEncoder(
        num_layers=config.num_layers,
        d_model=config.d_model,
        d_ffn=config.ff_mult * config.d_model,
        nhead=config.num_heads,
        kernel_size=config.conv_kernel_size,
        dropout=dropout,
        attention_type="RelPosMHAXL",
    )
    pos_enc = RelPosEncXL(config.d_model)

    def forward(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pad_mask = make_pad_mask(lengths, x.shape[1])
        return sb(x, src_key_padding_mask=pad_mask, pos_embs=pos_enc(x))[0]

    return sb, forward


def train_step(module: nn.Module, forward: Callable, x: torch.Tensor, lengths: torch.Tensor):
    """A case: forward, a loss over the valid frames, backward, AdamW step."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    valid = (~make_pad_mask(lengths, x.shape[1])).unsqueeze(-1)  # (B, T', 1)

    def run() -> None:
        module.train()
        loss = (forward(x, lengths) * valid).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def infer(module: nn.Module, forward: Callable, *args: torch.Tensor):
    def run() -> None:
        module.eval()
        with torch.inference_mode():
            forward(*args)

    return run


def ctc_cases(config: EncoderConfig, batch: int, frames: int, vocab: int = 32):
    """Our whole CtcModel from features: (training step, inference) cases."""
    model = CtcModel(config, vocab)
    feats = torch.randn(batch, frames, config.feat_dim)  # (B, T, F)
    feat_lengths = torch.full((batch,), frames)
    targets = torch.randint(1, vocab, (batch, frames // 8))  # 12.5 tokens/s, like speech
    target_lengths = torch.full((batch,), targets.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train() -> None:
        model.train()
        log_probs, out_lengths = model(feats, feat_lengths)
        ctc_loss(log_probs, out_lengths, targets, target_lengths).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train, infer(model, model, feats, feat_lengths)


# ---------------------------------------------------------------------------------- reference


def reference_forward(encoder: ConformerEncoder, x: torch.Tensor, lengths: torch.Tensor):
    """Our encoder blocks computed the plain way: x (B, T', D), lengths (B,) -> (B, T', D).

    Attention from the explicit (T, T) matrix of distances i - j, softmax by hand; the
    depthwise conv as `nn.Conv1d` on (B, D, T) followed by the separate batch norm.
    """
    b, t, d = x.shape
    pad_mask = make_pad_mask(lengths, t)  # (B, T)
    distances = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).flatten()  # (T*T,)
    table = sinusoids(distances, d)  # (T*T, D)
    for block in encoder.blocks:
        x = x + 0.5 * block.ff1(x)
        attn = block.mhsa.attention
        h, dh = attn.num_heads, attn.d_head
        y = block.mhsa.layer_norm(x)
        q, k, v = (lin(y).view(b, t, h, dh) for lin in (attn.query, attn.key, attn.value))
        r = attn.pos(table).view(t, t, h, dh)  # W_r r_{i-j}
        scores = torch.einsum("bihd,bjhd->bhij", q + attn.pos_bias_u, k)
        scores = scores + torch.einsum("bihd,ijhd->bhij", q + attn.pos_bias_v, r)
        scores = scores / math.sqrt(dh)
        scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        y = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(b, t, d)
        x = x + attn.out(y)
        conv = block.conv
        y = conv.glu(conv.pointwise_in(conv.layer_norm(x)))
        y = y.masked_fill(pad_mask[:, :, None], 0.0)
        y = conv.depthwise(y.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        y = conv.pointwise_out(conv.activation(conv.norm(y, pad_mask)))
        x = x + y
        x = block.final_norm(x + 0.5 * block.ff2(x))
    return x.masked_fill(pad_mask[:, :, None], 0.0)


def check_reference(config: EncoderConfig, frames: int) -> dict[str, float | bool]:
    """Max |fast - reference| over valid frames of a padded batch, trained-like batch norms."""
    torch.manual_seed(0)
    encoder = ConformerEncoder(config).eval()
    for block in encoder.blocks:  # running stats away from (0, 1), so folding them matters
        block.conv.norm.running_mean.uniform_(-0.5, 0.5)
        block.conv.norm.running_var.uniform_(0.5, 2.0)
    lengths = torch.tensor([frames, frames - 37, frames // 2, 5])
    x = torch.randn(len(lengths), frames, config.d_model)
    with torch.inference_mode():
        fast = encoder.forward_blocks(x, lengths)
        reference = reference_forward(encoder, x, lengths)
    diff = float((fast - reference).abs().max())
    return {"max_abs_diff": diff, "output_std": float(reference.std()), "match": diff < 1e-3}


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="s")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 rounds, no warm-up round")
    parser.add_argument("--output", default="bench/results/encoder_speed.json")
    args = parser.parse_args()
    set_threads(args.threads)
    repeats, warmup = (2, 0) if args.quick else (args.repeats, 1)
    config = EncoderConfig.preset(args.preset)
    dropout = config.dropout
    torch.manual_seed(0)
    probe = ConformerEncoder(config)
    feat_frames, frames = encoder_frames(probe, args.seconds)
    audio = args.batch * args.seconds  # audio seconds per call

    reference = check_reference(config, frames)
    print(f"fast path vs reference: {reference}", flush=True)

    x = torch.randn(args.batch, frames, config.d_model)  # (B, T', D)
    lengths = torch.full((args.batch,), frames)
    models = build_models(config, dropout)
    cases: dict[str, Callable] = {"matmul_2048": matmul_peak(2048)}
    for name, (module, forward) in models.items():
        cases[f"{name}/train"] = train_step(module, forward, x, lengths)
        cases[f"{name}/infer"] = infer(module, forward, x, lengths)
    cases["ours_ctc_model/train"], cases["ours_ctc_model/infer"] = ctc_cases(
        config, args.batch, feat_frames
    )

    flops = {"matmul_2048": 2 * 2048**3}
    per_op = {}
    for name, run in cases.items():
        if name != "matmul_2048":
            flops[name], per_op[name] = count_flops(run)
    print(f"timing {len(cases)} cases, {repeats} rounds ...", flush=True)
    times, cpu_times = interleave(cases, repeats, warmup)

    peak = flops["matmul_2048"] / summarize(times["matmul_2048"], 1.0)["median_s"]
    results = {}
    for name, seconds in times.items():
        if name == "matmul_2048":
            results[name] = summarize(seconds, flops[name] / 1e9)  # rate: GFLOP/s
            continue
        row = summarize(seconds, audio)  # rate: audio seconds per second
        row["cpu_median_s"] = round(statistics.median(cpu_times[name]), 4)
        row["gflop_per_audio_second"] = round(flops[name] / audio / 1e9, 3)
        row["utilization"] = round(flops[name] / row["median_s"] / peak, 3)
        results[name] = row
    ratios = {}
    for mode in ("train", "infer"):
        for other in ("torchaudio", "speechbrain"):
            if f"{other}/{mode}" not in results:
                continue
            theirs, ours = results[f"{other}/{mode}"], results[f"ours/{mode}"]
            ratios[f"ours_vs_{other}/{mode}"] = round(theirs["median_s"] / ours["median_s"], 3)
            ratios[f"ours_vs_{other}/{mode} (cpu time)"] = round(
                theirs["cpu_median_s"] / ours["cpu_median_s"], 3
            )
    report = {
        "command": " ".join(["bench/encoder_speed.py", *sys.argv[1:]]),
        "machine": machine(),
        "config": {
            "preset": args.preset,
            "batch": args.batch,
            "seconds": args.seconds,
            "encoder_input": [args.batch, frames, config.d_model],
            "features": [args.batch, feat_frames, config.feat_dim],
            "dropout": dropout,
        },
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "reference_check": reference,
        "results": results,
        "speedup_ours_over": ratios,
        "flops_per_op": per_op,
    }
    print_table(results, ratios, peak)
    write_json(args.output, report)


def print_table(results: dict, ratios: dict, peak: float) -> None:
    print(f"\nfp32 GEMM peak (median): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'case':28s} {'median s':>9s} {'audio-s/s':>10s} {'range':>16s} {'util':>6s} cpu s")
    for name, row in results.items():
        if name == "matmul_2048":
            continue
        lo, hi = row["rate_range"]
        print(
            f"{name:28s} {row['median_s']:9.3f} {row['rate']:10.1f} {f'{lo:.0f}-{hi:.0f}':>16s} "
            f"{row['utilization']:6.1%} {row['cpu_median_s']:.3f}"
        )
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
