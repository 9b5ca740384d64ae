"""`asr demo`: the whole toolkit on a laptop CPU, no download and no GPU, in numbered stages.

    1. corpus      synthesize a spoken corpus with eSpeak NG (`asr.corpora.synthetic.make_demo_corpus`)
    2. train       a small Conformer-CTC with `configs/demo.yaml`, through `asr.training.train.train`:
                   the code `asr train` runs
    3. lm          a word 3-gram (interpolated Kneser-Ney) and a lexicon from the training
                   transcripts only (`asr.inference.lm`)
    4. evaluate    the held-out test voices and sentences: greedy CTC, then beam search with the
                   lexicon and the LM; each writes an `asr evaluate` report folder
    5. transcribe  one test file, printed with its word timings
    6. summary     WER, CER, times and where everything is (also `work_dir/summary.json`)

Every stage is idempotent: a second run reuses the corpus, the trained `model.pt` (training
resumes from its last checkpoint if it was interrupted) and the LM, and says so.
`quick=True` is the shortened run of the tests: a tiny corpus and a few training steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.corpora.synthetic import CorpusConfig, make_demo_corpus

if TYPE_CHECKING:
    from asr.inference.decoding import DecodingOptions

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
FULL_CORPUS = dict(num_train=4000, num_val=100, num_test=200)
QUICK_CORPUS = dict(num_train=60, num_val=6, num_test=6, num_voices=12)
QUICK_OVERRIDES = (
    "encoder.num_layers=2",
    "encoder.inter_ctc_layers=[1]",
    "data.max_batch_seconds=15",
    "trainer.max_steps=12",
    "trainer.val_every_n_steps=6",
    "trainer.average_last_k=2",
)
LM_ORDER = 3


def _stage(number: int, title: str) -> float:
    print(f"\n[{number}/6] {title}", flush=True)
    return time.perf_counter()


def make_corpus(work_dir: Path, seed: int, quick: bool) -> Path:
    """Stage 1: the eSpeak NG corpus in work_dir/corpus (reused when already there)."""
    sizes = QUICK_CORPUS if quick else FULL_CORPUS
    corpus_dir = work_dir / "corpus"
    existed = (corpus_dir / "corpus.json").is_file()
    make_demo_corpus(corpus_dir, CorpusConfig(**sizes, seed=seed), progress=True)
    meta = json.loads((corpus_dir / "corpus.json").read_text())
    hours = sum(meta["hours"].values())
    print(
        f"{'reusing' if existed else 'made'} {corpus_dir}: "
        + ", ".join(f"{n} {s}" for s, n in meta["counts"].items())
        + f" utterances, {hours:.2f} h, {sum(len(v) for v in meta['voices'].values())} voices "
        "(test voices and sentences held out)"
    )
    return corpus_dir


def train_model(work_dir: Path, corpus_dir: Path, seed: int, quick: bool,
                overrides: Sequence[str] = ()) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Stage 2: `asr train --config configs/demo.yaml` on the corpus, unless model.pt exists."""
    from asr.checkpoint import load_bundle
    from asr.config import load_config
    from asr.training.train import train

    exp_dir = work_dir / "exp"
    config = load_config(
        CONFIG,
        [
            f"exp_dir={exp_dir}",
            f"data.train_manifest={corpus_dir / 'train.jsonl'}",
            f"data.val_manifest={corpus_dir / 'val.jsonl'}",
            f"trainer.seed={seed}",
            *(QUICK_OVERRIDES if quick else ()),
            *overrides,
        ],
    )
    model_path = exp_dir / "model.pt"
    if model_path.is_file():
        print(f"reusing the trained model {model_path} (delete it to train again)")
    else:
        enc = config.encoder_config()
        print(
            f"training a Conformer-CTC ({enc.num_layers} layers, d_model {enc.d_model}) for "
            f"{config.trainer.max_steps} steps, as `asr train --config configs/demo.yaml` does; "
            f"logs and checkpoints in {exp_dir}"
        )
        model_path = train(config)
    return model_path, load_bundle(model_path).info


def build_lm(work_dir: Path, corpus_dir: Path, model_path: Path) -> tuple[Path, Path]:
    """Stage 3: word 3-gram ARPA and lexicon from the training transcripts only."""
    from asr.checkpoint import load_bundle
    from asr.data.manifest import read_manifest
    from asr.inference.lexicon import write_word_lm

    lm_dir = work_dir / "lm"
    arpa, lexicon = lm_dir / f"words.{LM_ORDER}gram.arpa", lm_dir / "lexicon.txt"
    if arpa.is_file() and lexicon.is_file():
        print(f"reusing {arpa} and {lexicon}")
        return arpa, lexicon
    texts = [utt.text for utt in read_manifest(corpus_dir / "train.jsonl")]
    tokenizer = load_bundle(model_path).tokenizer
    lm, words, skipped = write_word_lm(texts, tokenizer, arpa, lexicon, order=LM_ORDER)
    counts = [sum(len(g) == n for g in lm.logprobs) for n in range(1, LM_ORDER + 1)]
    print(
        f"{LM_ORDER}-gram Kneser-Ney LM from {len(texts)} training sentences: "
        f"{'/'.join(map(str, counts))} 1/2/3-grams -> {arpa}; lexicon of "
        f"{len(words) - len(skipped)} words -> {lexicon}"
    )
    return arpa, lexicon


def evaluate_split(model: Any, corpus_dir: Path, out_dir: Path, label: str,
                   options: DecodingOptions) -> dict[str, float]:  # fmt: skip
    """Decode and score test.jsonl (`asr.scoring.evaluate.decode_and_score`), with a report."""
    from asr.scoring.evaluate import decode_and_score, format_summary

    result = decode_and_score(model, corpus_dir / "test.jsonl", out_dir, options, label=label)
    print(format_summary(result))
    return {"wer": round(100 * result.wer, 2), "cer": round(100 * result.cer, 2)}


def show_transcript(model: Any, corpus_dir: Path, options: DecodingOptions) -> dict[str, Any]:
    """Stage 5: transcribe the first test file and print its text and word timings."""
    from asr.data.manifest import read_manifest

    utt = read_manifest(corpus_dir / "test.jsonl")[0]
    result = model.transcribe([utt.audio], options=options)[0]
    print(f"file:       {utt.audio}\nreference:  {utt.text}\ntranscript: {result.text}")
    for w in result.words:
        print(f"  {w.start:6.2f} - {w.end:6.2f} s  {w.word:<14} confidence {w.confidence:.2f}")
    return result.to_dict()


def run_demo(
    work_dir: str | Path = "demo",
    quick: bool = False,
    seed: int = 0,
    overrides: Sequence[str] = (),
    lm: bool = True,
) -> dict[str, Any]:
    """Corpus -> train -> LM -> evaluate -> transcribe -> summary; returns the summary dict.

    `overrides` are `dotted.key=value` changes to configs/demo.yaml (as for `asr train`);
    `lm=False` skips the LM stage and the beam search evaluation. (Long on purpose: the
    stages read top to bottom, as in the module docstring.)
    """
    work_dir = Path(work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    times: dict[str, float] = {}

    start = _stage(1, "corpus: synthesizing speech with eSpeak NG")
    corpus_dir = make_corpus(work_dir, seed, quick)
    times["corpus"] = time.perf_counter() - start

    start = _stage(2, "train: Conformer-CTC on the training voices")
    model_path, info = train_model(work_dir, corpus_dir, seed, quick, overrides)
    times["train"] = time.perf_counter() - start

    from asr.inference.decoding import DecodingOptions
    from asr.inference.transcribe import load_model

    model = load_model(model_path)
    arpa = lexicon = None
    start = _stage(3, "lm: word 3-gram and lexicon from the training transcripts")
    if lm:
        arpa, lexicon = build_lm(work_dir, corpus_dir, model_path)
    else:
        print("skipped (lm=False)")
    times["lm"] = time.perf_counter() - start

    start = _stage(4, "evaluate: the held-out test voices and sentences")
    eval_dir = work_dir / "eval"
    best = greedy = DecodingOptions()
    scores = {
        "greedy": evaluate_split(model, corpus_dir, eval_dir / "greedy", "greedy CTC", greedy)
    }
    if arpa is not None:
        best = DecodingOptions(lm=str(arpa), lexicon=str(lexicon))  # beam 50, weight 1
        scores["lm"] = evaluate_split(model, corpus_dir, eval_dir / "lm", "beam + LM", best)
    times["evaluate"] = time.perf_counter() - start

    start = _stage(5, "transcribe: one test file, with word timings")
    example = show_transcript(model, corpus_dir, best)
    times["transcribe"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - began

    final = scores.get("lm", scores["greedy"])
    summary = {
        "wer": final["wer"],
        "cer": final["cer"],
        "decoding": "beam search + lexicon + 3-gram LM" if "lm" in scores else "greedy CTC",
        "scores": scores,
        "train_seconds": info.get("train_seconds"),
        "trained_steps": info.get("trained_steps"),
        "stage_seconds": {k: round(v, 1) for k, v in times.items()},
        "seed": seed,
        "quick": quick,
        "model": str(model_path),
        "reports": {k: str(eval_dir / k / "report.html") for k in scores},
        "lm": str(arpa) if arpa else None,
        "lexicon": str(lexicon) if lexicon else None,
        "example": example,
    }
    (work_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _stage(6, "summary")
    print(format_demo_summary(summary))
    return summary


def format_demo_summary(summary: dict[str, Any]) -> str:
    """The closing lines of the demo: error rates, times, paths."""
    lines = [
        f"test WER {summary['wer']:.2f}%  CER {summary['cer']:.2f}%  ({summary['decoding']})",
    ]
    for name, s in summary["scores"].items():
        lines.append(f"  {name:<7} WER {s['wer']:6.2f}%  CER {s['cer']:6.2f}%")
    t = summary["stage_seconds"]
    trained = summary["train_seconds"]
    lines += [
        f"training time {trained:.0f} s ({summary['trained_steps']} steps); "
        f"whole demo {t['total'] / 60:.1f} min this run",
        f"model:   {summary['model']}",
        *(f"report:  {path}" for path in summary["reports"].values()),
        f"summary: {Path(summary['model']).parents[1] / 'summary.json'}",
        f"try:     asr transcribe --model {summary['model']} YOUR_FILE.wav",
    ]
    return "\n".join(lines)
