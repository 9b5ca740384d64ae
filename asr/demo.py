"""`asr demo`: the whole toolkit on a laptop CPU, no download and no GPU, in numbered stages.

    1. corpus      synthesize a spoken corpus with eSpeak NG (`asr.corpora.synthetic.make_demo_corpus`)
    2. train       a small Conformer-CTC with `configs/demo.yaml`, through `asr.training.train.train`:
                   the code `asr train` runs
    3. lm          a word 3-gram (interpolated Kneser-Ney) and a lexicon from the training
                   transcripts only: `asr.recipe.build_word_lm`, the AN4 recipe's lm stage
    4. evaluate    the held-out test voices and sentences: greedy CTC, then beam search with the
                   lexicon and the LM; then, for a model that can stream (the default one
                   can), live: each file fed as a microphone would, decoded as reported;
                   each writes an `asr evaluate` report folder
    5. transcribe  one test file, printed with its word timings
    6. summary     WER, CER, times and where everything is (also `work_dir/summary.json`)

The stages run through `asr.recipe.run_stages`, as the recipes' do, and each is idempotent: a
second run reuses the corpus, the trained `model.pt` (training resumes from its last checkpoint
if it was interrupted), the LM and the evaluations newer than what they were made from, and says
so. `quick=True` is the shortened run of the tests: a tiny corpus and a few training steps.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.corpora.synthetic import CorpusConfig, make_demo_corpus
from asr.recipe import build_word_lm, can_go_live, run_stages, up_to_date, word_lm_paths

if TYPE_CHECKING:
    from asr.config import TrainConfig
    from asr.inference.options import DecodingOptions
    from asr.inference.streaming import StreamingOptions
    from asr.inference.transcribe import Transcriber
    from asr.scoring.metrics import ScoreResult

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
# The stages' names, and the line that says what each does while it runs.
STAGES = {
    "corpus": "synthesizing speech with eSpeak NG",
    "train": "Conformer-CTC on the training voices",
    "lm": "word 3-gram and lexicon from the training transcripts",
    "evaluate": "the held-out test voices and sentences",
    "transcribe": "one test file, with word timings",
    "summary": "error rates, times and paths",
}
DECODING_LABELS = {"greedy": "greedy CTC", "lm": "beam + LM", "live": "live"}
DECODING_NAMES = {"greedy": "greedy CTC", "lm": "beam search + lexicon + 3-gram LM"}


@dataclass
class Demo:
    """One run: its settings, the paths of its work dir (where each stage finds what the
    earlier ones made), and what the stages pass on in memory: seconds, scores, the example."""

    work_dir: Path
    quick: bool = False
    seed: int = 0
    overrides: Sequence[str] = ()
    lm: bool = True
    began: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    example: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def corpus_dir(self) -> Path:
        return self.work_dir / "corpus"

    @functools.cached_property
    def config(self) -> TrainConfig:
        """configs/demo.yaml with this run's paths, seed and overrides (which win)."""
        from asr.config import load_config

        return load_config(CONFIG, [
            f"exp_dir={self.work_dir / 'exp'}",
            f"data.train_manifest={self.corpus_dir / 'train.jsonl'}",
            f"data.val_manifest={self.corpus_dir / 'val.jsonl'}",
            f"trainer.seed={self.seed}",
            *(QUICK_OVERRIDES if self.quick else ()),
            *self.overrides,
        ])  # fmt: skip

    @property
    def model_path(self) -> Path:
        return Path(self.config.exp_dir) / "model.pt"

    @property
    def lm_dir(self) -> Path:
        return self.work_dir / "lm"

    @property
    def lm_files(self) -> tuple[Path, Path]:
        return word_lm_paths(self.lm_dir, LM_ORDER)

    @functools.cached_property
    def model(self) -> Transcriber:
        from asr.inference.transcribe import load_model

        return load_model(self.model_path)

    def stages(self) -> list[tuple[str, Callable[[], object]]]:
        """(header, function) per stage for `run_stages`; each but the summary is timed."""
        functions = {
            "corpus": self.make_corpus,
            "train": self.train_model,
            "lm": self.build_lm,
            "evaluate": self.evaluate,
            "transcribe": self.show_transcript,
            "summary": self.write_summary,
        }
        assert list(functions) == list(STAGES)
        return [
            (
                f"{name} - {STAGES[name]}",
                function if name == "summary" else self._timed(name, function),
            )
            for name, function in functions.items()
        ]

    def _timed(self, name: str, function: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            start = time.perf_counter()
            function()
            self.seconds[name] = time.perf_counter() - start

        return run

    def make_corpus(self) -> None:
        """Stage 1: the eSpeak NG corpus in work_dir/corpus (reused when already there)."""
        sizes = QUICK_CORPUS if self.quick else FULL_CORPUS
        existed = (self.corpus_dir / "corpus.json").is_file()
        make_demo_corpus(self.corpus_dir, CorpusConfig(**sizes, seed=self.seed), progress=True)
        meta = json.loads((self.corpus_dir / "corpus.json").read_text())
        hours = sum(meta["hours"].values())
        print(
            f"{'reusing' if existed else 'made'} {self.corpus_dir}: "
            + ", ".join(f"{n} {s}" for s, n in meta["counts"].items())
            + f" utterances, {hours:.2f} h, {sum(len(v) for v in meta['voices'].values())} "
            "voices (test voices and sentences held out)"
        )

    def train_model(self) -> None:
        """Stage 2: `asr train --config configs/demo.yaml` on the corpus, unless model.pt exists."""
        if self.model_path.is_file():
            print(f"reusing the trained model {self.model_path} (delete it to train again)")
            return
        from asr.training.train import train

        enc = self.config.encoder_config()
        print(
            f"training a Conformer-CTC ({enc.num_layers} layers, d_model {enc.d_model}) for "
            f"{self.config.trainer.max_steps} steps, as `asr train --config configs/demo.yaml` "
            f"does; logs and checkpoints in {self.config.exp_dir}"
        )
        model_path = train(self.config)
        assert model_path == self.model_path, (model_path, self.model_path)

    def build_lm(self) -> None:
        """Stage 3: the word 3-gram and lexicon of the training transcripts (unless lm=False)."""
        if not self.lm:
            print("skipped (lm=False)")
            return
        build_word_lm(self.corpus_dir / "train.jsonl", self.model_path, self.lm_dir, LM_ORDER)

    @functools.cached_property
    def tuned(self) -> dict[str, Any] | None:
        """The LM weight and word score chosen on val.jsonl (`asr.scoring.tune`: 24 points, one
        acoustic pass), in LM.tuned.json, reused while newer than the model, the LM files and
        val.jsonl; None with lm=False."""
        if not self.lm:
            return None
        from asr.inference.options import DecodingOptions
        from asr.scoring.tune import format_grid, tune_lm, tuned_path

        arpa, lexicon = self.lm_files
        val, path = self.corpus_dir / "val.jsonl", tuned_path(arpa)
        if all(up_to_date(path, source) for source in (self.model_path, arpa, lexicon, val)):
            print(f"reusing the LM weights chosen on val: {path}")
        else:
            options = DecodingOptions(lm=str(arpa), lexicon=str(lexicon))
            result = tune_lm(self.model, val, options, label="LM weights on val")
            print(format_grid(result))
            result.write(path, model=str(self.model_path))
        return json.loads(path.read_text())

    @property
    def reported(self) -> str:
        """The decoding whose test score the demo reports: "lm" only if it beat greedy on val."""
        return "lm" if self.tuned and self.tuned["decoding"] == "lm" else "greedy"

    def decodings(self) -> dict[str, DecodingOptions]:
        """The greedy decoding, then (unless lm=False) beam search with the LM and lexicon at
        the weights that did best on val (scored on test even when greedy beat them on val)."""
        from asr.inference.options import DecodingOptions
        from asr.scoring.tune import best_options

        found = {"greedy": DecodingOptions()}
        if self.tuned:
            found["lm"] = best_options(self.tuned)
        return found

    @functools.cached_property
    def live(self) -> StreamingOptions | None:
        """The live setting the demo scores (the library's default chunk and look-ahead), or
        None for a model that cannot stream (trained offline, or normalized per utterance)."""
        from asr.inference.streaming import StreamingOptions

        return StreamingOptions() if can_go_live(self.model_path) else None

    def evaluate(self) -> None:
        """Stage 4: each decoding of test.jsonl scored into eval/<decoding>/ with its report;
        then (a model that can stream) eval/live/: the reported decoding, each file streamed."""
        from asr.scoring.evaluate import format_summary

        runs = [(name, options, None) for name, options in self.decodings().items()]
        if self.live is not None:
            runs.append(("live", self.decodings()[self.reported], self.live))
        for name, options, streaming in runs:
            result = self._score(name, options, streaming)
            print(format_summary(result))
            self.scores[name] = {"wer": round(100 * result.wer, 2),
                                 "cer": round(100 * result.cer, 2)}  # fmt: skip

    def _score(
        self, name: str, options: DecodingOptions, streaming: StreamingOptions | None = None
    ) -> ScoreResult:
        """`asr.scoring.evaluate.decode_and_score` into eval/<name>/, or the evaluation there
        when it is newer than the model, the test manifest and the LM files it used."""
        from asr.scoring.evaluate import decode_and_score, load_result
        from asr.scoring.tune import tuned_path

        test, out = self.corpus_dir / "test.jsonl", self.work_dir / "eval" / name
        with_lm = options.lm is not None
        tuned = [tuned_path(self.lm_files[0])] if with_lm else []
        sources = [self.model_path, test, *(self.lm_files if with_lm else ()), *tuned]
        if all(up_to_date(out / "summary.json", source) for source in sources):
            print(f"reusing the {DECODING_LABELS[name]} evaluation in {out}")
            return load_result(out)
        label = DECODING_LABELS[name] + (f", {streaming.label}" if streaming else "")
        return decode_and_score(self.model, test, out, options, streaming=streaming, label=label)

    def show_transcript(self) -> None:
        """Stage 5: transcribe the first test file and print its text and word timings."""
        from asr.data.manifest import read_manifest

        utt = read_manifest(self.corpus_dir / "test.jsonl")[0]
        decodings = self.decodings()
        best = decodings[self.reported]
        result = self.model.transcribe([utt.audio], options=best)[0]
        print(f"file:       {utt.audio}\nreference:  {utt.text}\ntranscript: {result.text}")
        for w in result.words:
            print(f"  {w.start:6.2f} - {w.end:6.2f} s  {w.word:<14} confidence {w.confidence:.2f}")
        self.example = result.to_dict()

    def write_summary(self) -> None:
        """Stage 6: work_dir/summary.json, and its closing lines printed."""
        from asr.scoring.tune import tuned_summary

        self.seconds["total"] = time.perf_counter() - self.began
        info = self.model.bundle.info
        final = self.scores[self.reported]
        tuned = self.tuned
        arpa, lexicon = self.lm_files if self.lm else (None, None)
        self.summary = {
            "wer": final["wer"],
            "cer": final["cer"],
            "decoding": DECODING_NAMES[self.reported],
            "reported": self.reported,
            "live": self.live.label if self.live else None,
            "tuned": tuned_summary(tuned) if tuned else None,
            "scores": self.scores,
            "train_seconds": info.get("train_seconds"),
            "trained_steps": info.get("trained_steps"),
            "stage_seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "seed": self.seed,
            "quick": self.quick,
            "model": str(self.model_path),
            "reports": {k: str(self.work_dir / "eval" / k / "report.html") for k in self.scores},
            "lm": str(arpa) if arpa else None,
            "lexicon": str(lexicon) if lexicon else None,
            "example": self.example,
        }
        (self.work_dir / "summary.json").write_text(json.dumps(self.summary, indent=1) + "\n")
        print(format_demo_summary(self.summary))


def run_demo(
    work_dir: str | Path = "demo",
    quick: bool = False,
    seed: int = 0,
    overrides: Sequence[str] = (),
    lm: bool = True,
) -> dict[str, Any]:
    """Corpus -> train -> LM -> evaluate -> transcribe -> summary; returns the summary dict.

    `overrides` are `dotted.key=value` changes to configs/demo.yaml (as for `asr train`);
    `lm=False` skips the LM stage and the beam search evaluation.
    """
    work_dir = Path(work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    demo = Demo(work_dir, quick, seed, tuple(overrides), lm)
    run_stages(demo.stages(), 1, len(STAGES))
    return demo.summary


def format_demo_summary(summary: dict[str, Any]) -> str:
    """The closing lines of the demo: error rates, times, paths."""
    lines = [
        f"test WER {summary['wer']:.2f}%  CER {summary['cer']:.2f}%  ({summary['decoding']})",
    ]
    for name, s in summary["scores"].items():
        how = f"  (streamed, {summary['live']}, decoded as reported)" if name == "live" else ""
        lines.append(f"  {name:<7} WER {s['wer']:6.2f}%  CER {s['cer']:6.2f}%{how}")
    tuned = summary.get("tuned")
    if tuned:
        lines.append(
            f"LM weight {tuned['lm_weight']:g}, word score {tuned['word_score']:g} chosen on val "
            f"(val WER {100 * tuned['val_wer']:.2f}% with the LM, "
            f"{100 * tuned['greedy_val_wer']:.2f}% greedy)"
            + ("" if tuned["decoding"] == "lm" else ": the LM does not beat greedy on val, so "
               "greedy is reported")
        )  # fmt: skip
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
    if summary.get("live"):
        lines.append(f"live:    asr transcribe --model {summary['model']} --streaming "
                     "YOUR_FILE.wav  (or asr listen: the microphone)")  # fmt: skip
    return "\n".join(lines)
