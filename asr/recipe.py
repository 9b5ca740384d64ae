"""What every recipe's `run.py` and the built-in demo share: numbered stages run from `--stage`
to `--stop-stage`, `asr` commands printed and run in-process, the test that decides whether a
stage's output must be made again, and the "lm" stage of a corpus without an official LM.

A recipe (recipes/<corpus>/run.py) or `asr.demo` lists its stages as (name, function) pairs;
`run_stages` checks the range, prints a header per stage and runs them in order, with the `asr`
loggers at INFO so each stage's own messages show.

This module is below the command line: `asr demo` (asr/cli/demo.py) imports the demo, which
runs its stages here, so nothing here imports `asr.cli`; `run_asr` is handed the CLI's `main`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path


def run_stages(stages: Sequence[tuple[str, Callable[[], object]]], first: int, last: int) -> int:
    """Run stages[first - 1 : last] (numbered from 1) in order; 0 when all of them finished."""
    if not 1 <= first <= last <= len(stages):
        raise SystemExit(f"need 1 <= --stage <= --stop-stage <= {len(stages)}")
    # Both are no-ops under the `asr` command, which has set up logging (`asr -v` keeps DEBUG).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if logging.getLogger("asr").level == logging.NOTSET:
        logging.getLogger("asr").setLevel(logging.INFO)
    for number in range(first, last + 1):
        name, stage = stages[number - 1]
        print(f"\n== stage {number}: {name}", flush=True)
        stage()
    return 0


def run_asr(main: Callable[[list[str]], int], command: list[str]) -> None:
    """One `asr` command, printed first (so a run can be replayed by hand), run in this process
    by `main` (`asr.cli.main`)."""
    print("asr " + " ".join(command), flush=True)
    if main(command) != 0:
        raise SystemExit(f"failed: asr {' '.join(command)}")


def up_to_date(output: Path, source: Path) -> bool:
    """Whether `output` exists and was written after `source` (e.g. a WER summary and its model)."""
    return output.is_file() and output.stat().st_mtime >= source.stat().st_mtime


def word_lm_paths(lm_dir: Path, order: int = 3) -> tuple[Path, Path]:
    """Where `build_word_lm` writes: lm_dir/words.<order>gram.arpa and lm_dir/lexicon.txt."""
    return lm_dir / f"words.{order}gram.arpa", lm_dir / "lexicon.txt"


def build_word_lm(
    train_manifest: Path, model: Path, lm_dir: Path, order: int = 3
) -> tuple[Path, Path]:
    """The "lm" stage: a word n-gram (interpolated Kneser-Ney) of the training transcripts only
    (never val or test) and the lexicon of its words spelled with `model`'s tokenizer
    (`asr.inference.lexicon.write_word_lm`), at `word_lm_paths(lm_dir, order)`.

    Both files are reused while newer than the model and the manifest. Returns (ARPA, lexicon).
    """
    from asr.checkpoint import load_bundle
    from asr.data.manifest import read_manifest
    from asr.inference.lexicon import write_word_lm

    arpa, lexicon = word_lm_paths(lm_dir, order)
    if not model.is_file():
        raise SystemExit(f"the lm stage spells words with the trained model's tokens: no {model}")
    if all(up_to_date(out, src) for out in (arpa, lexicon) for src in (model, train_manifest)):
        print(f"reusing {arpa} and {lexicon}")
        return arpa, lexicon
    texts = [utt.text for utt in read_manifest(train_manifest)]
    lm, words, skipped = write_word_lm(texts, load_bundle(model).tokenizer, arpa, lexicon, order)
    counts = "/".join(str(sum(len(g) == n for g in lm.logprobs)) for n in range(1, order + 1))
    sizes = "/".join(str(n) for n in range(1, order + 1))
    print(
        f"{order}-gram Kneser-Ney LM from {len(texts)} training transcripts: {counts} "
        f"{sizes}-grams -> {arpa}; lexicon of {len(words) - len(skipped)} words -> {lexicon}"
    )
    return arpa, lexicon
