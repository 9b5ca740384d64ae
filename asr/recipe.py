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


def can_go_live(model: Path) -> bool:
    """Whether the bundle at `model` can stream (`asr.inference.streaming.check_streamable`): the
    demo and the recipes then score their test sets live as well (`asr evaluate --streaming`)."""
    from asr.checkpoint import load_bundle
    from asr.inference.streaming import check_streamable

    bundle = load_bundle(model)
    try:
        check_streamable(bundle.model.config, bundle.frontend.config)
    except ValueError:
        return False
    return True


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


def _training_texts(train_manifest: Path, model: Path) -> list[str]:
    from asr.data.manifest import read_manifest

    if not model.is_file():
        raise SystemExit(f"the lm stage spells words with the trained model's tokens: no {model}")
    return [utt.text for utt in read_manifest(train_manifest)]


def build_english_lm(model: Path, lm_dir: Path) -> tuple[Path, Path]:
    """The general English word 3-gram (pocketsphinx's, `asr.inference.english`: converted once,
    cached in lm_dir) and the lexicon of its words `model` can spell, lm_dir/lexicon.english.txt.
    Needs `pip install 'asr[english]'`. Returns (ARPA, lexicon)."""
    from asr.checkpoint import load_bundle
    from asr.inference.english import english_word_lm
    from asr.inference.lexicon import write_lexicon
    from asr.inference.lm import arpa_words

    arpa, lexicon = english_word_lm(lm_dir), lm_dir / "lexicon.english.txt"
    if not model.is_file():
        raise SystemExit(f"the lexicon spells words with the trained model's tokens: no {model}")
    if up_to_date(lexicon, model) and up_to_date(lexicon, arpa):
        print(f"reusing {arpa} and {lexicon}")
        return arpa, lexicon
    words = arpa_words(arpa)
    skipped = write_lexicon(words, load_bundle(model).tokenizer, lexicon)
    print(f"English 3-gram LM -> {arpa}; lexicon of {len(words) - len(skipped)} words -> {lexicon}")
    return arpa, lexicon


def build_open_vocab_lm(
    train_manifest: Path, model: Path, lm_dir: Path, order: int = 3, weight: float = 0.5
) -> tuple[Path, Path]:
    """A word n-gram of the training transcripts interpolated with the general English 3-gram
    (`weight` for the transcripts' model, 1 - `weight` for English's: `write_word_lm` with a
    background) and the lexicon of both vocabularies spelled with `model`'s tokens, at
    lm_dir/words.<order>gram.english<weight>.arpa and lexicon.english<weight>.txt: in-domain
    words keep their weight and English words never seen in training become writable. Reused
    while newer than the model and the manifest; needs `pip install 'asr[english]'`."""
    from asr.checkpoint import load_bundle
    from asr.inference.english import read_sphinx_lm, sphinx_lm_path
    from asr.inference.lexicon import write_word_lm

    arpa = lm_dir / f"words.{order}gram.english{weight:g}.arpa"
    lexicon = lm_dir / f"lexicon.english{weight:g}.txt"
    if all(up_to_date(out, src) for out in (arpa, lexicon) for src in (model, train_manifest)):
        print(f"reusing {arpa} and {lexicon}")
        return arpa, lexicon
    texts = _training_texts(train_manifest, model)
    english = read_sphinx_lm(sphinx_lm_path())
    tokenizer = load_bundle(model).tokenizer
    _, words, skipped = write_word_lm(texts, tokenizer, arpa, lexicon, order, english, weight)
    print(
        f"{order}-gram of {len(texts)} training transcripts interpolated with English "
        f"({weight:g} / {1 - weight:g}) -> {arpa}; lexicon of {len(words) - len(skipped)} "
        f"words -> {lexicon}"
    )
    return arpa, lexicon


def build_token_lm(
    train_manifest: Path,
    model: Path,
    lm_dir: Path,
    order: int = 6,
    english_words: int = 0,
    weight: float = 0.5,
) -> Path:
    """An n-gram over `model`'s tokens of the training transcripts, at
    lm_dir/tokens.<order>gram.arpa: the LM of lexicon-free beam search (`--lexicon none`), which
    can write any spelling. `english_words` > 0: interpolated (`weight` for the transcripts)
    with the token n-gram of that many running words of English in the general English LM's
    word frequencies (`asr.inference.english.english_sentences`; needs 'asr[english]'), at
    lm_dir/tokens.<order>gram.english<english_words>.arpa. Reused while newer than the model
    and the manifest."""
    from asr.checkpoint import load_bundle
    from asr.inference.lexicon import spell_word, write_token_lm

    name = f"tokens.{order}gram" + (f".english{english_words}" if english_words else "")
    arpa = lm_dir / f"{name}.arpa"
    if all(up_to_date(arpa, src) for src in (model, train_manifest)):
        print(f"reusing {arpa}")
        return arpa
    texts = _training_texts(train_manifest, model)
    tokenizer = load_bundle(model).tokenizer
    background = None
    if english_words:
        from asr.inference.english import english_sentences, read_sphinx_lm, sphinx_lm_path

        english = read_sphinx_lm(sphinx_lm_path())
        spellable = [w for w in english.vocabulary if spell_word(w, tokenizer) is not None]
        background = english_sentences(english, english_words, keep=spellable)
    lm = write_token_lm(texts, tokenizer, arpa, order, background, weight)
    counts = "/".join(str(sum(len(g) == n for g in lm.logprobs)) for n in range(1, order + 1))
    print(f"{order}-gram over tokens of {len(texts)} training transcripts: {counts} -> {arpa}")
    return arpa
