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
    5 lm         WORK_DIR/lm/words.3gram.arpa: a word 3-gram (interpolated Kneser-Ney) of the
                 training transcripts only, and lexicon.txt: its words spelled with model.pt's
                 tokenizer (asr.recipe.build_word_lm, as the demo's lm stage)
    6 evaluate   `asr evaluate` on the validation and test sets, greedy and with the LM
                 (`--lm ARPA --lexicon FILE`, beam search), its weight and word score chosen
                 on val (`--tune-lm`, ARPA.tuned.json); the LM's test result is reported only
                 if it beat greedy on val; then, for a model that can stream (the default one
                 can), test live: each file streamed as from a microphone (`--streaming`, 480 ms
                 chunks + 160 ms look-ahead), decoded as reported; WORK_DIR/exp/RESULTS.{md,json}

Every stage is idempotent (what exists is reused) and prints the `asr` command it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asr.cli import main as asr_main
from asr.cli.options import options_to_flags
from asr.config import load_config
from asr.corpora import an4
from asr.inference.streaming import StreamingOptions
from asr.recipe import build_word_lm, can_go_live, run_asr, run_stages, up_to_date, word_lm_paths
from asr.scoring.tune import load_tuned, tuned_path, tuned_summary

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "an4.yaml"
STAGES = ("download", "manifests", "tokenizer", "train", "lm", "evaluate")
LM_ORDER = 3


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
    p.add_argument("--device", default="cpu", help="for stage 6")
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
    run_asr(asr_main, ["train-tokenizer", "--manifest", config.data.train_manifest, "--kind",
                       config.tokenizer.kind, "--output", config.tokenizer.path])  # fmt: skip


def stage_train(args: argparse.Namespace) -> None:
    config = load_config(CONFIG, train_overrides(args))
    model = Path(config.exp_dir) / "model.pt"
    if model.is_file():
        print(f"reusing the trained model {model} (delete it to train again)")
        return
    run_asr(asr_main, ["train", "--config", str(CONFIG), *train_overrides(args)])


def lm_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    return word_lm_paths(args.work_dir / "lm", LM_ORDER)


def stage_lm(args: argparse.Namespace) -> None:
    """Word 3-gram of the training transcripts (never val or test) and its lexicon, spelled
    with model.pt's tokenizer; reused while newer than the model and the training manifest."""
    config = load_config(CONFIG, train_overrides(args))
    model, train = Path(config.exp_dir) / "model.pt", Path(config.data.train_manifest)
    build_word_lm(train, model, args.work_dir / "lm", LM_ORDER)


def stage_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """`asr evaluate` of model.pt on val and test, greedy and (once stage 5 has made its files)
    with the LM, its weight and word score chosen on val (`--tune-lm`, written to
    ARPA.tuned.json): the result reported is the LM's only if it beat greedy decoding on val;
    then test live with the reported decoding (`evaluate_live`). Returns RESULTS.json's dict,
    also written with RESULTS.md in WORK_DIR/exp."""
    exp_dir = Path(load_config(CONFIG, train_overrides(args)).exp_dir)
    model = exp_dir / "model.pt"
    manifests = {name: args.work_dir / "manifests" / f"{name}.jsonl" for name in ("val", "test")}
    scores = {name: evaluate_set(args, model, manifest, exp_dir / "eval" / name, [model])
              for name, manifest in manifests.items()}  # fmt: skip
    results: dict[str, Any] = {name: {"greedy": s} for name, s in scores.items()}
    arpa, lexicon = lm_paths(args)
    if not (arpa.is_file() and lexicon.is_file()):
        print(f"no {arpa} or {lexicon} (stage 5): greedy decoding only")
        results["reported"] = "greedy"
        evaluate_live(args, model, manifests["test"], results, [model])
        write_results(exp_dir, results)
        return results
    # Tuned on val, then test decoded with the choice: both by one `asr evaluate --tune-lm`.
    tuned = tuned_path(arpa)
    out = exp_dir / "eval" / "lm" / "test"
    sources = [model, arpa, lexicon, manifests["val"]]
    lm_flags = ["--lm", str(arpa), "--lexicon", str(lexicon), "--tune-lm", str(manifests["val"])]
    evaluate_set(args, model, manifests["test"], out, [*sources, tuned], lm_flags, tuned)
    found = results["tuned"] = tuned_summary(json.loads(tuned.read_text()))
    results["val"]["lm"] = {"wer": 100 * found["val_wer"]}
    results["reported"] = found["decoding"]
    if found["decoding"] == "lm":
        results["test"]["lm"] = evaluate_set(args, model, manifests["test"], out, [tuned])
    evaluate_live(args, model, manifests["test"], results, [model, tuned],
                  options_to_flags(load_tuned(tuned)))  # fmt: skip
    write_results(exp_dir, results)
    return results


def evaluate_live(
    args: argparse.Namespace,
    model: Path,
    test: Path,
    results: dict[str, Any],
    sources: list[Path],
    flags: Sequence[str] = (),
) -> None:
    """For a model that can stream: test scored live (`asr evaluate --streaming` at the default
    chunk and look-ahead, decoded with `flags`, the reported decoding) into exp/eval/live/test,
    as results["test"]["live"], with the setting as results["live"]."""
    if not can_go_live(model):
        print(f"{model} cannot stream (trained offline): no live evaluation")
        return
    out = model.parent / "eval" / "live" / "test"
    results["test"]["live"] = evaluate_set(args, model, test, out, sources, ["--streaming", *flags])
    results["live"] = StreamingOptions().label


def evaluate_set(
    args: argparse.Namespace,
    model: Path,
    manifest: Path,
    out: Path,
    sources: list[Path],
    flags: Sequence[str] = (),
    made: Path | None = None,
) -> dict[str, float]:
    """WER and CER % of `asr evaluate` of `model` on `manifest` into `out` with `flags`; its
    summary is reused while newer than every one of `sources` (and `made` exists, a file the
    command writes too)."""
    summary = out / "summary.json"
    if not (all(up_to_date(summary, source) for source in sources if source.exists())
            and (made is None or made.is_file())):  # fmt: skip
        run_asr(asr_main, ["evaluate", "--model", str(model), "--manifest", str(manifest),
                           "--output-dir", str(out), "--device", args.device,
                           *flags])  # fmt: skip
    found = json.loads(summary.read_text())
    return {"wer": 100 * found["wer"], "cer": 100 * found["cer"]}


def write_results(exp_dir: Path, results: dict[str, Any]) -> None:
    """RESULTS.md (a row per set: greedy WER and CER, then with the tuned LM, then the result
    reported) and RESULTS.json."""

    def cell(scores: dict[str, float] | None, key: str) -> str:
        return f"{scores[key]:.2f}" if scores and key in scores else "-"

    reported = results["reported"]
    tuned = results.get("tuned")
    live = results["test"].get("live")
    lines = [f"Produced by `recipes/an4/run.py` (model.pt; greedy CTC, and beam search with the "
             f"word {LM_ORDER}-gram and lexicon of stage 5, its weights chosen on val)", "",
             "| set | WER % | CER % | WER % (LM) | CER % (LM) | reported |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in ("val", "test"):
        greedy, lm = results[name]["greedy"], results[name].get("lm")
        best = lm if reported == "lm" else greedy
        lines.append(f"| {name} | {cell(greedy, 'wer')} | {cell(greedy, 'cer')} | "
                     f"{cell(lm, 'wer')} | {cell(lm, 'cer')} | WER {best['wer']:.2f} "
                     f"({reported}) |")  # fmt: skip
    if tuned:
        lines += ["", f"LM weight {tuned['lm_weight']:g}, word score {tuned['word_score']:g}, "
                  f"beam threshold {tuned['beam_threshold']:g} chosen on val (WER "
                  f"{100 * tuned['val_wer']:.2f}% against {100 * tuned['greedy_val_wer']:.2f}% "
                  "greedy)" + ("" if reported == "lm" else ": the LM does not beat greedy "
                               "decoding on val, so greedy is reported and the LM not used "
                               "on test")]  # fmt: skip
    if live:
        lines += ["", f"Live (each test file streamed as from a microphone, {results['live']}, "
                  f"decoded as reported): WER {live['wer']:.2f}, CER {live['cer']:.2f}"]  # fmt: skip
    (exp_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (exp_dir / "RESULTS.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stages = [
        ("download", lambda: an4.download_an4(args.data_dir, args.url, args.md5)),
        ("manifests", lambda: stage_manifests(args)),
        ("tokenizer", lambda: stage_tokenizer(args)),
        ("train", lambda: stage_train(args)),
        ("lm", lambda: stage_lm(args)),
        ("evaluate", lambda: stage_evaluate(args)),
    ]
    return run_stages(stages, args.stage, args.stop_stage)


if __name__ == "__main__":
    sys.exit(main())
