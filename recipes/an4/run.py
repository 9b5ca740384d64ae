"""AN4 -> a small Conformer-CTC on 2 CPU cores -> test WER, in numbered stages.

    python recipes/an4/run.py --work-dir exp/an4                    # every stage
    python recipes/an4/run.py --data-dir /corpora/an4 --stage 2     # an extracted an4/ folder
    python recipes/an4/run.py --stage 4 trainer.max_steps=3000      # training config overrides

    1 download   an4_sphere.tar.gz from CMU (resumed, safely extracted: asr.corpora.an4); an an4/
                 folder already under --data-dir is used as it is
    2 manifests  WORK_DIR/manifests/{train,val,test}.jsonl: val holds whole training speakers
                 (--val-fraction of the training utterances), never test speakers
    3 tokenizer  `asr train-tokenizer`: the characters of the training transcripts
    4 train      `asr train --config configs/an4.yaml`; resumes from its last checkpoint;
                 model.pt = mean of the last trainer.average_last_k checkpoints
    5 evaluate   `asr evaluate` on the validation and test sets; WORK_DIR/exp/RESULTS.md

Every stage is idempotent (what exists is reused) and prints the `asr` command it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from asr.config import load_config
from asr.corpora import an4
from asr.recipe import run_asr, run_stages, up_to_date

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "an4.yaml"
STAGES = ("download", "manifests", "tokenizer", "train", "evaluate")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("exp/an4"))
    p.add_argument("--data-dir", type=Path, help="holds an4/ (default: WORK_DIR/data)")
    p.add_argument("--stage", type=int, default=1, help=f"first stage, 1-{len(STAGES)}")
    p.add_argument("--stop-stage", type=int, default=len(STAGES), help="last stage")
    p.add_argument("--url", default=an4.AN4_URL, help="where to fetch an4_sphere.tar.gz")
    p.add_argument("--md5", help="check the tarball against this MD5 (CMU publishes none)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="of the training utterances")
    p.add_argument("--seed", type=int, default=0, help="which training speakers are held out")
    p.add_argument("--device", default="cpu", help="for stage 5")
    p.add_argument("overrides", nargs="*", help="training config overrides, key=value")
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or args.work_dir / "data"
    return args


def train_overrides(args: argparse.Namespace) -> list[str]:
    """This recipe's paths for configs/an4.yaml, then the user's overrides (which win)."""
    manifests = args.work_dir / "manifests"
    kind = load_config(CONFIG, args.overrides).tokenizer.kind
    return [
        f"exp_dir={args.work_dir / 'exp'}",
        f"data.train_manifest={manifests / 'train.jsonl'}",
        f"data.val_manifest={manifests / 'val.jsonl'}",
        f"tokenizer.path={args.work_dir / f'tokenizer_{kind}.json'}",
        *args.overrides,
    ]


def stage_manifests(args: argparse.Namespace) -> None:
    corpus = an4.find_an4_dir(args.data_dir)
    paths = an4.prepare_an4(corpus, args.work_dir / "manifests", args.val_fraction, args.seed)
    print("manifests: " + ", ".join(str(p) for p in paths.values()))


def stage_tokenizer(args: argparse.Namespace) -> None:
    config = load_config(CONFIG, train_overrides(args))
    if Path(config.tokenizer.path).is_file():
        print(f"reusing the tokenizer {config.tokenizer.path}")
        return
    run_asr(["train-tokenizer", "--manifest", config.data.train_manifest, "--kind",
         config.tokenizer.kind, "--output", config.tokenizer.path])  # fmt: skip


def stage_train(args: argparse.Namespace) -> None:
    config = load_config(CONFIG, train_overrides(args))
    model = Path(config.exp_dir) / "model.pt"
    if model.is_file():
        print(f"reusing the trained model {model} (delete it to train again)")
        return
    run_asr(["train", "--config", str(CONFIG), *train_overrides(args)])


def stage_evaluate(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """`asr evaluate` of model.pt on val and test; WER and CER also in exp/RESULTS.md."""
    exp_dir = Path(load_config(CONFIG, train_overrides(args)).exp_dir)
    model = exp_dir / "model.pt"
    results = {}
    for name in ("val", "test"):
        out = exp_dir / "eval" / name
        summary = out / "summary.json"
        if not up_to_date(summary, model):
            manifest = args.work_dir / "manifests" / f"{name}.jsonl"
            run_asr(["evaluate", "--model", str(model), "--manifest", str(manifest), "--output-dir",
                 str(out), "--device", args.device])  # fmt: skip
        scores = json.loads(summary.read_text())
        results[name] = {"wer": 100 * scores["wer"], "cer": 100 * scores["cer"]}
    lines = ["Produced by `recipes/an4/run.py` (model.pt, greedy CTC)", "",
             "| set | WER % | CER % |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {r['wer']:.2f} | {r['cer']:.2f} |" for name, r in results.items()]
    (exp_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stages = [
        ("download", lambda: an4.download_an4(args.data_dir, args.url, args.md5)),
        ("manifests", lambda: stage_manifests(args)),
        ("tokenizer", lambda: stage_tokenizer(args)),
        ("train", lambda: stage_train(args)),
        ("evaluate", lambda: stage_evaluate(args)),
    ]
    return run_stages(stages, args.stage, args.stop_stage)


if __name__ == "__main__":
    sys.exit(main())
