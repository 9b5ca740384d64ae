"""Real speech: train a configuration on librispeech-3h for a fixed wall-clock budget, then score
the 76 utterances of librispeech-mini (6 speakers never heard in training), greedy and with a
word 3-gram LM + lexicon of the training transcripts, at the default weight (1, word score 0)
and at the weight and word score `tune_lm` chooses on the 60 validation utterances ("lm_tuned").

    python bench/real_speech.py --config configs/an4.yaml --minutes 30 --name an4-baseline
    python bench/real_speech.py --config configs/an4.yaml --minutes 10 --name ft \\
        init_from=demo/exp/model.pt tokenizer.path=/tmp/real-speech/split/tokenizer_char.json

The split is fixed for every comparison (`prepare_split`): training = librispeech-3h minus 60
utterances held out for validation (drawn with seed 0), test = all of librispeech-mini. Training
runs `asr.training.train.train` (what `asr train` runs) with `trainer.max_time` set to the
budget and no step limit, on 2 threads. Writes `<work-dir>/<name>/result.json` and prints the
row for BENCHMARKS.md (with the CPU model: timings are only comparable on one machine kind).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from asr.checkpoint import load_bundle
from asr.config import TokenizerConfig, load_config
from asr.corpora.librispeech import part_utterances
from asr.data.manifest import read_manifest, write_manifest
from asr.inference.lexicon import write_word_lm
from asr.inference.options import DecodingOptions
from asr.inference.transcribe import load_model
from asr.scoring.evaluate import decode_and_score
from asr.scoring.tune import tune_lm, tuned_summary
from asr.tokenizer import train_tokenizer
from asr.training.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NUM_VAL = 60
# The blank-only plateau: a model that writes nothing, or one letter for every utterance, scores
# a validation CER of 80-100% (79% was seen with a few common letters); below 70% it spells words.
PLATEAU_CER = 70.0


def prepare_split(out: Path, train_dir: Path, test_dir: Path) -> dict[str, Path]:
    """train/val/test manifests of the fixed split and the character tokenizer of its training
    transcripts (`tokenizer_char.json`, for runs that fine-tune a bundle); reused when present."""
    paths = {name: out / f"{name}.jsonl" for name in ("train", "val", "test")}
    paths["tokenizer"] = out / "tokenizer_char.json"
    if all(p.is_file() for p in paths.values()):
        return paths
    utts = [u for part in sorted((train_dir / "LibriSpeech").iterdir()) if part.is_dir()
            for u in part_utterances(part)]  # fmt: skip
    val_ids = set(random.Random(0).sample(sorted(u.id for u in utts), NUM_VAL))
    write_manifest([u for u in utts if u.id not in val_ids], paths["train"])
    write_manifest([u for u in utts if u.id in val_ids], paths["val"])
    tests = [u for part in sorted((test_dir / "LibriSpeech").iterdir()) if part.is_dir()
             for u in part_utterances(part)]  # fmt: skip
    write_manifest(tests, paths["test"])
    texts = [u.text for u in read_manifest(paths["train"])]
    train_tokenizer(texts, TokenizerConfig(kind="char")).save(paths["tokenizer"])
    return paths


def build_lm(train_manifest: Path, model_path: Path, out: Path) -> tuple[Path, Path]:
    """Word 3-gram (Kneser-Ney) and lexicon of the training transcripts only."""
    texts = [u.text for u in read_manifest(train_manifest)]
    arpa, lexicon = out / "words.3gram.arpa", out / "lexicon.txt"
    write_word_lm(texts, load_bundle(model_path).tokenizer, arpa, lexicon)
    return arpa, lexicon


def plateau_exit(metrics_csv: Path) -> dict[str, Any] | None:
    """The first validation whose CER is below PLATEAU_CER: its step and training seconds."""
    if not metrics_csv.is_file():
        return None
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if row.get("val_cer") and float(row["val_cer"]) < PLATEAU_CER:
                seconds = row.get("train_seconds")
                return {"step": int(row["step"]), "val_cer": round(float(row["val_cer"]), 2),
                        "seconds": round(float(seconds), 1) if seconds else None}  # fmt: skip
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the run's folder and table label")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/real-speech"))
    parser.add_argument("--train-data", type=Path, default=SHARED / "librispeech-3h")
    parser.add_argument("--test-data", type=Path, default=SHARED / "librispeech-mini")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--score", type=Path, metavar="MODEL",
                        help="no training: score this trained model.pt (e.g. one `asr train` made "
                             "on the split) as run --name")  # fmt: skip
    parser.add_argument("--beam-size-token", type=int, default=None,
                        help="tokens the LM beam search tries per frame (default: all; "
                             "32 for hundreds of subword units)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for folder in (args.train_data, args.test_data):
        if not (folder / "LibriSpeech").is_dir():
            sys.exit(f"no LibriSpeech/ folder in {folder}")
    split = prepare_split(args.work_dir / "split", args.train_data, args.test_data)
    run_dir = args.work_dir / args.name
    seconds = round(args.minutes * 60)
    budget = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    overrides = [
        f"exp_dir={run_dir / 'exp'}",
        f"data.train_manifest={split['train']}",
        f"data.val_manifest={split['val']}",
        "trainer.max_steps=-1",
        f"trainer.max_time={budget}",
        *args.overrides,
    ]
    if args.score is not None:
        if not args.score.is_file():
            sys.exit(f"real_speech: model not found: {args.score}")
        model_path = args.score
        info = load_bundle(model_path).info
        wall = float(info["train_seconds"])
    else:
        config = load_config(args.config, overrides)
        began = time.perf_counter()
        model_path = train(config)
        wall = time.perf_counter() - began
        info = load_bundle(model_path).info
    arpa, lexicon = build_lm(split["train"], model_path, run_dir / "lm")
    model = load_model(model_path)
    lm_options = DecodingOptions(
        lm=str(arpa), lexicon=str(lexicon), beam_size_token=args.beam_size_token
    )
    tuned = tune_lm(model, split["val"], lm_options)  # weight and word score chosen on val
    scores = {}
    for name, options in (("greedy", DecodingOptions()), ("lm", lm_options),
                          ("lm_tuned", tuned.chosen)):  # fmt: skip
        result = decode_and_score(model, split["test"], run_dir / "eval" / name, options)
        scores[name] = {"wer": round(100 * result.wer, 2), "cer": round(100 * result.cer, 2)}
    command = shlex.join(["python", "bench/real_speech.py", *sys.argv[1:]])  # as run, every option
    result = {
        "name": args.name,
        "command": command,
        **machine(),  # cpu, cores, threads, load average, date
        "budget_minutes": args.minutes,
        "train_wall_seconds": round(wall, 1),
        "steps": info["trained_steps"],
        "precision": info.get("precision"),
        "plateau_exit": plateau_exit(model_path.parent / "logs" / "csv" / "metrics.csv"),
        "test": scores,
        "lm_tuned_on_val": {**tuned_summary(tuned.to_dict()), "seconds": tuned.seconds},
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    exit_ = result["plateau_exit"]
    left = f"step {exit_['step']} ({exit_['seconds']} s)" if exit_ else "never"
    print(json.dumps(result, indent=1))
    print(f"| {args.name} | {scores['greedy']['wer']:.1f} / {scores['greedy']['cer']:.1f} | "
          f"{scores['lm']['wer']:.1f} / {scores['lm']['cer']:.1f} | "
          f"{scores['lm_tuned']['wer']:.1f} / {scores['lm_tuned']['cer']:.1f} | {result['steps']} | "
          f"{wall / 60:.1f} min | {left} | `{command}` |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
