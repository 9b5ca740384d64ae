"""LibriSpeech 960 h -> Conformer-CTC S/M/L -> WER on dev/test clean/other, in numbered stages.

    python recipes/librispeech/run.py --work-dir exp/librispeech --size s            # all stages
    python recipes/librispeech/run.py --data-dir /corpora/LibriSpeech --stage 2      # no download
    python recipes/librispeech/run.py --size m --stage 4 --stop-stage 4 trainer.devices=4

    1 download   OpenSLR tarballs (resumed, MD5-checked, safely extracted: asr.corpora.librispeech), or
                 with --hf the `openslr/librispeech_asr` Hugging Face dataset written to the same
                 layout; parts already under --data-dir are used as they are
    2 manifests  work_dir/manifests/<part>.jsonl, train.jsonl (training parts), dev.jsonl
    3 tokenizer  `asr train-tokenizer`: SentencePiece (the config's kind and vocab_size) on the
                 training transcripts
    4 train      `asr train --config configs/conformer_ctc_<size>.yaml`; resumes from its last
                 checkpoint; model.pt = mean of the last trainer.average_last_k checkpoints
    5 average    model_best<k>.pt: mean of the k <= --num-average checkpoints with the best
                 validation WER
    6 evaluate   `asr evaluate` of every model on every dev and test part; RESULTS.md

Every stage is idempotent (what exists is reused) and prints the `asr` command it runs. Extra
`key=value` arguments override the training config, as for `asr train`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from asr.config import TrainConfig, load_config
from asr.corpora import librispeech
from asr.recipe import run_asr, run_stages, up_to_date

REPO = Path(__file__).resolve().parents[2]
STAGES = ("download", "manifests", "tokenizer", "train", "average", "evaluate")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("exp/librispeech"))
    p.add_argument("--data-dir", type=Path, help="holds LibriSpeech/ (default: WORK_DIR/data)")
    p.add_argument("--size", choices=["s", "m", "l"], default="s", help="configs/conformer_ctc_*")
    p.add_argument("--stage", type=int, default=1, help=f"first stage, 1-{len(STAGES)}")
    p.add_argument("--stop-stage", type=int, default=len(STAGES), help="last stage")
    p.add_argument("--hf", action="store_true", help="download from Hugging Face, not OpenSLR")
    p.add_argument("--mirror", default="openslr", help=f"{sorted(librispeech.MIRRORS)} or a URL")
    for kind, parts in (("train", librispeech.TRAIN_PARTS), ("dev", librispeech.DEV_PARTS),
                        ("test", librispeech.TEST_PARTS)):  # fmt: skip
        p.add_argument(f"--{kind}-parts", type=_comma_list, default=list(parts),
                       help=f"comma-separated (default {','.join(parts)})")  # fmt: skip
    p.add_argument("--num-average", type=int, default=5, help="stage 5: best checkpoints")
    p.add_argument("--nj", type=int, default=8, help="threads reading audio headers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", help="training config overrides, key=value")
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or args.work_dir / "data"
    return args


def _comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def config_path(args: argparse.Namespace) -> Path:
    return REPO / "configs" / f"conformer_ctc_{args.size}.yaml"


def train_overrides(args: argparse.Namespace) -> list[str]:
    """This recipe's paths for the size's config, then the user's overrides (which win)."""
    manifests = args.work_dir / "manifests"
    tok = load_config(config_path(args), args.overrides).tokenizer
    return [
        f"exp_dir={args.work_dir / f'exp_{args.size}'}",
        f"data.train_manifest={manifests / 'train.jsonl'}",
        f"data.val_manifest={manifests / 'dev.jsonl'}",
        f"tokenizer.path={args.work_dir / f'tokenizer_{tok.kind}{tok.vocab_size}.json'}",
        *args.overrides,
    ]


def training_config(args: argparse.Namespace) -> TrainConfig:
    return load_config(config_path(args), train_overrides(args))


def stage_download(args: argparse.Namespace, parts: list[str]) -> None:
    if args.hf:
        librispeech.download_librispeech_hf(args.data_dir, parts)
    else:
        mirror = librispeech.MIRRORS.get(args.mirror, args.mirror)
        librispeech.download_librispeech(args.data_dir, parts, mirror)


def stage_manifests(args: argparse.Namespace, parts: list[str]) -> None:
    out = args.work_dir / "manifests"
    paths = librispeech.prepare_manifests(args.data_dir, out, parts, args.nj)
    librispeech.merge_manifests([paths[p] for p in args.train_parts], out / "train.jsonl")
    librispeech.merge_manifests([paths[p] for p in args.dev_parts], out / "dev.jsonl")
    print(f"manifests in {out}: " + ", ".join(sorted(p.name for p in out.glob("*.jsonl"))))


def stage_tokenizer(args: argparse.Namespace) -> None:
    config = training_config(args)
    tok = config.tokenizer
    if Path(tok.path).is_file():
        print(f"reusing the tokenizer {tok.path}")
        return
    run_asr(["train-tokenizer", "--manifest", config.data.train_manifest, "--kind", tok.kind,
         "--vocab-size", str(tok.vocab_size), "--output", tok.path])  # fmt: skip


def stage_train(args: argparse.Namespace) -> None:
    model = Path(training_config(args).exp_dir) / "model.pt"
    if model.is_file():
        print(f"reusing the trained model {model} (delete it to train again)")
        return
    run_asr(["train", "--config", str(config_path(args)), *train_overrides(args)])


def stage_average(args: argparse.Namespace) -> None:
    """Mean of the (up to --num-average) checkpoints with the best validation WER, exported as
    model_best<k>.pt, k the number averaged."""
    from asr.training.train import export_checkpoint

    exp_dir = Path(training_config(args).exp_dir)
    best = sorted(exp_dir.glob("checkpoints/best-*.ckpt"), key=_val_wer)[: args.num_average]
    output = exp_dir / f"model_best{len(best)}.pt"
    if output.is_file():
        print(f"reusing {output}")
        return
    if len(best) < 2:
        print(f"nothing to average: {len(best)} best-*.ckpt in {exp_dir / 'checkpoints'}")
        return
    export_checkpoint(best, output)
    print(f"mean of {[p.name for p in best]} -> {output}")


def _val_wer(path: Path) -> float:
    match = re.search(r"val_wer=([0-9.]+?)(?:\.ckpt|-v\d+)", path.name)
    return float(match.group(1)) if match else float("inf")


def stage_evaluate(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """`asr evaluate` for each model and each dev/test part; results in exp_dir/RESULTS.md."""
    exp_dir = Path(training_config(args).exp_dir)
    results: dict[str, dict[str, float]] = {}
    for model in sorted(exp_dir.glob("model*.pt")):
        results[model.name] = {}
        for part in [*args.dev_parts, *args.test_parts]:
            out = exp_dir / "eval" / model.stem / part
            summary = out / "summary.json"
            if not up_to_date(summary, model):
                manifest = args.work_dir / "manifests" / f"{part}.jsonl"
                run_asr(["evaluate", "--model", str(model), "--manifest", str(manifest),
                     "--output-dir", str(out), "--device", args.device])  # fmt: skip
            results[model.name][part] = 100 * json.loads(summary.read_text())["wer"]
    write_results(exp_dir / "RESULTS.md", results, args)
    return results


def write_results(
    path: Path, results: dict[str, dict[str, float]], args: argparse.Namespace
) -> None:
    parts = [*args.dev_parts, *args.test_parts]
    lines = [f"WER (%) produced by `recipes/librispeech/run.py --size {args.size}`", "",
             "| model | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]  # fmt: skip
    for model, wers in results.items():
        lines.append(f"| {model} | " + " | ".join(f"{wers[p]:.2f}" for p in parts) + " |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parts = list(dict.fromkeys([*args.train_parts, *args.dev_parts, *args.test_parts]))
    stages = [
        ("download", lambda: stage_download(args, parts)),
        ("manifests", lambda: stage_manifests(args, parts)),
        ("tokenizer", lambda: stage_tokenizer(args)),
        ("train", lambda: stage_train(args)),
        ("average", lambda: stage_average(args)),
        ("evaluate", lambda: stage_evaluate(args)),
    ]
    return run_stages(stages, args.stage, args.stop_stage)


if __name__ == "__main__":
    sys.exit(main())
