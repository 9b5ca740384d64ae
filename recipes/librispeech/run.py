"""LibriSpeech 960 h -> Conformer-CTC S/M/L -> WER on dev/test clean/other, in numbered stages.

    python recipes/librispeech/run.py --work-dir exp/librispeech --size s            # all stages
    python recipes/librispeech/run.py --data-dir /corpora/LibriSpeech --stage 2      # no download
    python recipes/librispeech/run.py --size m --stage 4 --stop-stage 4 trainer.devices=4
    python recipes/librispeech/run.py --stage 6 --lm 4-gram                         # other LM
    python recipes/librispeech/run.py --shards trainer.devices=8                    # from shards

    1 download   OpenSLR tarballs (resumed, MD5-checked, safely extracted: asr.corpora.librispeech), or
                 with --hf the `openslr/librispeech_asr` Hugging Face dataset written to the same
                 layout; parts already under --data-dir are used as they are
    2 manifests  work_dir/manifests/<part>.jsonl, train.jsonl (training parts), dev.jsonl;
                 with --shards also `asr pack` of train.jsonl and dev.jsonl into work_dir/shards
                 (Parquet, the FLAC bytes embedded; splits train and validation)
    3 tokenizer  `asr train-tokenizer`: SentencePiece (the config's kind and vocab_size) on the
                 training transcripts
    4 train      `asr train --config configs/conformer_ctc_<size>.yaml`; resumes from its last
                 checkpoint; model.pt = mean of the last trainer.average_last_k checkpoints;
                 with --shards it streams work_dir/shards (data.hf_dataset, data.hf_streaming)
    5 average    model_best<k>.pt: mean of the k <= --num-average checkpoints with the best
                 validation WER
    6 lm         work_dir/lm/: the official word n-gram (--lm) and librispeech-lexicon.txt of
                 OpenSLR SLR11 (resumed, MD5-checked, the ARPA decompressed); the lexicon's
                 words spelled with model.pt's tokenizer into exp_<size>/lm/lexicon.txt (its
                 phonemes are not our tokens)
    7 evaluate   `asr evaluate` of every model on every dev and test part, greedy and (once
                 stage 6 has run) with the LM: `--lm ARPA --lexicon FILE`, its weight and word
                 score chosen per model on dev.jsonl (`--tune-lm`; greedy where the LM does not
                 beat it on dev); then each test part live, for models that can stream (the
                 configs' defaults can): each file streamed as from a microphone (`--streaming`,
                 480 ms chunks + 160 ms look-ahead), decoded as reported (--no-live: not);
                 RESULTS.md/.json

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
from typing import Any

import torch

from asr.cli import main as asr_main
from asr.config import TrainConfig, load_config
from asr.corpora import librispeech
from asr.inference.streaming import StreamingOptions
from asr.recipe import can_go_live, run_asr, run_stages, up_to_date

REPO = Path(__file__).resolve().parents[2]
STAGES = ("download", "manifests", "tokenizer", "train", "average", "lm", "evaluate")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("exp/librispeech"))
    p.add_argument("--data-dir", type=Path, help="holds LibriSpeech/ (default: WORK_DIR/data)")
    p.add_argument("--size", choices=["s", "m", "l"], default="s", help="configs/conformer_ctc_*")
    p.add_argument("--stage", type=int, default=1, help=f"first stage, 1-{len(STAGES)}")
    p.add_argument("--stop-stage", type=int, default=len(STAGES), help="last stage")
    p.add_argument("--hf", action="store_true", help="download from Hugging Face, not OpenSLR")
    p.add_argument("--mirror", default="openslr",
                   help=f"{sorted(librispeech.MIRRORS)} or a URL; the LM files of stage 6 come "
                   "from the same host (asr.corpora.librispeech.lm_mirror)")  # fmt: skip
    p.add_argument("--lm", choices=sorted(librispeech.LM_ARPAS), default="3-gram.pruned.1e-7",
                   help="stage 6: which official ARPA model (default %(default)s)")  # fmt: skip
    for kind, parts in (("train", librispeech.TRAIN_PARTS), ("dev", librispeech.DEV_PARTS),
                        ("test", librispeech.TEST_PARTS)):  # fmt: skip
        p.add_argument(f"--{kind}-parts", type=_comma_list, default=list(parts),
                       help=f"comma-separated (default {','.join(parts)})")  # fmt: skip
    p.add_argument("--num-average", type=int, default=5, help="stage 5: best checkpoints")
    p.add_argument("--shards", action="store_true",
                   help="stage 2 also packs Parquet shards (asr pack), stage 4 streams them")  # fmt: skip
    p.add_argument("--shard-size", default="1GB", help="--shards: bytes per shard (default 1GB)")
    p.add_argument("--nj", type=int, default=8, help="threads reading audio headers")
    p.add_argument("--no-live", dest="live", action="store_false",
                   help="stage 7: do not also score the test parts streamed")  # fmt: skip
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
    shards = [f"data.hf_dataset={args.work_dir / 'shards'}", "data.hf_streaming=true"]
    return [
        f"exp_dir={args.work_dir / f'exp_{args.size}'}",
        f"data.train_manifest={manifests / 'train.jsonl'}",
        f"data.val_manifest={manifests / 'dev.jsonl'}",
        f"tokenizer.path={args.work_dir / f'tokenizer_{tok.kind}{tok.vocab_size}.json'}",
        *(shards if args.shards else []),
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
    if args.shards:  # a rerun keeps the finished shards
        for manifest, split in (("train.jsonl", "train"), ("dev.jsonl", "validation")):
            run_asr(asr_main, ["pack", "--manifest", str(out / manifest), "--output-dir",
                               str(args.work_dir / "shards"), "--split", split, "--shard-size",
                               args.shard_size, "--processes", str(args.nj)])  # fmt: skip


def stage_tokenizer(args: argparse.Namespace) -> None:
    config = training_config(args)
    tok = config.tokenizer
    if Path(tok.path).is_file():
        print(f"reusing the tokenizer {tok.path}")
        return
    run_asr(asr_main, ["train-tokenizer", "--manifest", config.data.train_manifest, "--kind",
                       tok.kind, "--vocab-size", str(tok.vocab_size), "--output",
                       tok.path])  # fmt: skip


def stage_train(args: argparse.Namespace) -> None:
    model = Path(training_config(args).exp_dir) / "model.pt"
    if model.is_file():
        print(f"reusing the trained model {model} (delete it to train again)")
        return
    run_asr(asr_main, ["train", "--config", str(config_path(args)), *train_overrides(args)])


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


def lm_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The --lm ARPA model (shared by every size) and the lexicon spelled for this size's model."""
    exp_dir = Path(training_config(args).exp_dir)
    return args.work_dir / "lm" / f"{args.lm}.arpa", exp_dir / "lm" / "lexicon.txt"


def stage_lm(args: argparse.Namespace) -> None:
    """The official ARPA model and lexicon; the lexicon's words spelled with model.pt's tokens."""
    from asr.checkpoint import load_bundle
    from asr.inference.lexicon import write_lexicon

    arpa, lexicon = lm_paths(args)
    mirror = librispeech.lm_mirror(args.mirror)
    _, official = librispeech.download_lm(arpa.parent, args.lm, mirror)
    model = Path(training_config(args).exp_dir) / "model.pt"
    if not model.is_file():
        raise SystemExit(f"stage lm spells words with the trained model's tokens: no {model}")
    if up_to_date(lexicon, model) and up_to_date(lexicon, official):
        print(f"reusing {arpa} and {lexicon}")
        return
    words = librispeech.lexicon_words(official)
    skipped = write_lexicon(words, load_bundle(model).tokenizer, lexicon)
    print(f"{arpa}; lexicon of {len(words) - len(skipped)} of the {len(words)} words of "
          f"{official.name} (the others have characters the tokenizer lacks) -> {lexicon}")  # fmt: skip


def stage_evaluate(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """`asr evaluate` of each model on each dev/test part, greedy and, once stage 6 has made
    its files, with the LM at the weight and word score chosen on dev.jsonl for that model
    (`--tune-lm`, written to exp_dir/lm/<model>.tuned.json; greedy decoding where the LM does
    not beat it on dev); then the test parts live with the decoding reported (`evaluate_live`);
    model -> decoding ("greedy", the --lm name or "live") -> part -> WER %, and "tuned" -> the
    choice; also in exp_dir/RESULTS.md and RESULTS.json."""
    from asr.cli.options import options_to_flags
    from asr.scoring.tune import load_tuned, tuned_summary

    exp_dir = Path(training_config(args).exp_dir)
    arpa, lexicon = lm_paths(args)
    with_lm = arpa.is_file() and lexicon.is_file()
    if not with_lm:
        print(f"no {arpa} or {lexicon} (stage 6): greedy decoding only")
    dev = args.work_dir / "manifests" / "dev.jsonl"
    parts = [*args.dev_parts, *args.test_parts]
    results: dict[str, dict[str, Any]] = {}
    for model in sorted(exp_dir.glob("model*.pt")):
        found = results.setdefault(model.name, {})
        out = exp_dir / "eval" / model.stem  # with an LM: a folder named after it inside
        found["greedy"] = {part: evaluate_part(args, model, part, out / part, [model])
                           for part in parts}  # fmt: skip
        if not with_lm:
            evaluate_live(args, model, found, [model])
            continue
        # Tuned on dev, then the first test part decoded with the choice, by one command;
        # the other parts with the flags of the choice.
        tuned = exp_dir / "lm" / f"{model.stem}.tuned.json"
        first, out = args.test_parts[0], out / args.lm
        wers = found.setdefault(args.lm, {})
        wers[first] = evaluate_part(
            args, model, first, out / first, [model, arpa, lexicon, dev, tuned],
            ["--lm", str(arpa), "--lexicon", str(lexicon), "--tune-lm", str(dev),
             "--tune-lm-output", str(tuned)], made=tuned,
        )  # fmt: skip
        flags = options_to_flags(load_tuned(tuned))
        for part in parts:
            if part != first:
                wers[part] = evaluate_part(args, model, part, out / part, [tuned], flags)
        found["tuned"] = tuned_summary(json.loads(tuned.read_text()))
        evaluate_live(args, model, found, [model, tuned], flags)
    write_results(exp_dir, results, args)
    return results


def evaluate_live(
    args: argparse.Namespace,
    model: Path,
    found: dict[str, Any],
    sources: list[Path],
    flags: Sequence[str] = (),
) -> None:
    """Unless --no-live, for a model that can stream: each test part scored live (`asr
    evaluate --streaming` at the default chunk and look-ahead, decoded with `flags`, the
    reported decoding) into exp_<size>/eval/<model>/live/<part>, as found["live"]."""
    if not args.live:
        return
    if not can_go_live(model):
        print(f"{model} cannot stream (trained offline): no live evaluation")
        return
    out = model.parent / "eval" / model.stem / "live"
    found["live"] = {part: evaluate_part(args, model, part, out / part, sources,
                                         ["--streaming", *flags])
                     for part in args.test_parts}  # fmt: skip


def evaluate_part(
    args: argparse.Namespace,
    model: Path,
    part: str,
    out: Path,
    sources: list[Path],
    flags: Sequence[str] = (),
    made: Path | None = None,
) -> float:
    """WER % of `asr evaluate` of `model` on `part` into `out` with `flags`; an evaluation
    newer than every one of `sources` (and with `made`, a file the command writes, there) is
    reused."""
    summary = out / "summary.json"
    if not (all(up_to_date(summary, source) for source in sources if source.exists())
            and (made is None or made.is_file())):  # fmt: skip
        manifest = args.work_dir / "manifests" / f"{part}.jsonl"
        run_asr(asr_main, ["evaluate", "--model", str(model), "--manifest", str(manifest),
                           "--output-dir", str(out), "--device", args.device,
                           *flags])  # fmt: skip
    return 100 * json.loads(summary.read_text())["wer"]


def write_results(
    exp_dir: Path, results: dict[str, dict[str, Any]], args: argparse.Namespace
) -> None:
    parts = [*args.dev_parts, *args.test_parts]
    lines = [f"WER (%) produced by `recipes/librispeech/run.py --size {args.size}`: greedy CTC, "
             "and beam search with the word LM and lexicon of stage 6 at the weights chosen on "
             "dev (greedy where the LM does not beat it there)", "",
             "| model | decoding | " + " | ".join(parts) + " |",
             "|---" * (len(parts) + 2) + "|"]  # fmt: skip
    for model, decodings in results.items():
        tuned = decodings.get("tuned")
        for decoding, wers in decodings.items():
            if decoding == "tuned":
                continue
            label = decoding
            if decoding == "live":
                label += f" ({StreamingOptions().label}, decoded as reported)"
            elif decoding != "greedy" and tuned and tuned["decoding"] == "lm":
                label += f" (weight {tuned['lm_weight']:g}, word score {tuned['word_score']:g})"
            elif decoding != "greedy":
                label += " (does not beat greedy on dev: greedy)"
            cells = " | ".join(f"{wers[p]:.2f}" if p in wers else "-" for p in parts)
            lines.append(f"| {model} | {label} | {cells} |")
    (exp_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (exp_dir / "RESULTS.json").write_text(json.dumps(results, indent=2) + "\n")
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
        ("lm", lambda: stage_lm(args)),
        ("evaluate", lambda: stage_evaluate(args)),
    ]
    return run_stages(stages, args.stage, args.stop_stage)


if __name__ == "__main__":
    sys.exit(main())
