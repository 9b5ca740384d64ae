"""bf16-mixed against fp32 training steps on this CPU, by model width (issue 29, item 4).

A training step (the CTC objective with intermediate CTC where the shape has it, backward,
AdamW) of a fixed batch of real speech, in fp32 and under `torch.autocast("cpu", torch.bfloat16)`
(what Lightning's `bf16-mixed` does), timed in the same interleaved rounds for each encoder
shape: the demo/AN4 shape (d_model 96, 6 layers) and the S and M presets. Reports seconds per
step (median, min, max over rounds) and the bf16/fp32 ratio (below 1: bf16 wins), with the CPU
model and whether it has AMX. The losses of both precisions on the first step are reported too,
to show they train the same thing.

    python bench/precision_cpu.py --output bench/results/precision_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, machine, set_threads, write_json

from asr.audio import LogMelFeatures, load_audio
from asr.config import EncoderConfig, FeatureConfig
from asr.data.manifest import read_manifest
from asr.model import CtcModel, ctc_objective
from asr.tokenizer import CharTokenizer

SHAPES = {
    "demo (d_model 96, 6 layers)": dict(preset="xs", d_model=96, num_layers=6, num_heads=4,
                                        conv_kernel_size=15, subsampling_channels=32,
                                        inter_ctc_layers=[3], self_conditioning=True),
    "s (d_model 144, 16 layers)": dict(preset="s"),
    "m (d_model 256, 16 layers)": dict(preset="m"),
}  # fmt: skip


def batch(manifest: Path, seconds: float):
    """Features of the manifest's first utterances up to `seconds` of audio, with targets."""
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    waves, texts = [], []
    for utt in read_manifest(manifest):
        if sum(len(w) for w in waves) / 16000 >= seconds:
            break
        waves.append(load_audio(utt.audio))
        texts.append(utt.text.lower())
    frontend = LogMelFeatures(FeatureConfig(normalize="utterance"))
    with torch.no_grad():
        feats, lengths = frontend(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True),
                                  torch.tensor([len(w) for w in waves]))  # fmt: skip
    ids = [tokenizer.encode(t) for t in texts]
    targets = torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in ids], batch_first=True)
    audio = sum(len(w) for w in waves) / 16000
    return (feats, lengths, targets, torch.tensor([len(i) for i in ids])), tokenizer, audio


def step_case(shape: dict, data, vocab: int, bf16: bool):
    torch.manual_seed(0)
    shape = dict(shape)
    config = EncoderConfig.preset(shape.pop("preset"), dropout=0.0, attn_dropout=0.0, **shape)
    model = CtcModel(config, vocab).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    losses = []

    def step() -> None:
        context = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            loss, _ = ctc_objective(model, *data, 0.3 if config.inter_ctc_layers else 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))

    return step, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared/data/librispeech-3h"
    parser.add_argument("--corpus", type=Path, default=default,
                        help="a LibriSpeech folder or a manifest (default: librispeech-3h)")  # fmt: skip
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    set_threads(args.threads)
    manifest = args.corpus
    if manifest.is_dir():
        from asr.corpora.librispeech import part_utterances
        from asr.data.manifest import write_manifest

        root = next(p for p in manifest.rglob("*") if p.is_dir() and p.parent.name == "LibriSpeech")
        manifest = Path("/tmp/precision_cpu_manifest.jsonl")
        write_manifest(part_utterances(root, 2), manifest)
    data, tokenizer, audio = batch(manifest, args.batch_seconds)
    result = {"machine": machine(), "batch_audio_seconds": round(audio, 1),
              "rounds": args.rounds, "shapes": {}}  # fmt: skip
    for name in args.shapes:
        cases, losses = {}, {}
        for precision in ("fp32", "bf16-mixed"):
            step, seen = step_case(SHAPES[name], data, tokenizer.vocab_size, precision != "fp32")
            cases[precision], losses[precision] = step, seen
        wall, _ = interleave(cases, repeats=args.rounds, warmup=1)
        medians = {p: statistics.median(t) for p, t in wall.items()}
        row = {
            p: {"median_s": round(medians[p], 3), "min_s": round(min(t), 3),
                "max_s": round(max(t), 3)}
            for p, t in wall.items()
        }  # fmt: skip
        row["bf16_over_fp32"] = round(medians["bf16-mixed"] / medians["fp32"], 3)
        row["first_loss"] = {p: round(v[0], 4) for p, v in losses.items()}
        result["shapes"][name] = row
        print(f"{name:<28} fp32 {row['fp32']['median_s']:.2f} s  bf16 "
              f"{row['bf16-mixed']['median_s']:.2f} s  ratio {row['bf16_over_fp32']:.2f}  "
              f"first loss {row['first_loss']}", flush=True)  # fmt: skip
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
