"""A general English word language model for open-vocabulary decoding, from an offline package.

`pip install 'asr[english]'` brings pocketsphinx, which ships CMU Sphinx's US English trigram
(`model/en-us/en-us.lm.bin`: 72,547 words, 2.05 M bigrams, 1.67 M trigrams) in its binary
"trie" format (a KenLM-style reversed trie: unigrams as float records, higher orders
bit-packed with 16-bit quantized log probabilities and backoffs). Nothing is downloaded.

pocketsphinx's own ARPA writer (`NGramModel(...).write(path, "arpa")`) cannot be used: on this
file it crashes in the trigram section (its header counts 6 bigrams more than the trie holds,
so it reads records that are not there) and the text it had buffered is cut off mid-line.
`read_sphinx_lm` reads the binary file itself (numpy, a few seconds): probabilities equal
`NGramModel.prob` to its integer log resolution; the backoff weights are then recomputed from
the quantized probabilities (`asr.inference.lm.interpolate([lm], [1.0])`) so that every
context sums to 1 exactly (stored ones are off by up to 1e-4).

Here: `sphinx_lm_path`, `read_sphinx_lm` (a Sphinx trie file -> `NgramLM`),
`read_sphinx_unigrams` (its words and their frequencies only), `english_word_lm` (the ARPA file,
converted once and cached under a name holding the source's hash) and `english_sentences`
(pseudo-text in the model's word frequencies, for a token-level LM or a subword tokenizer).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from asr.inference.lm import BOS, EOS, NEVER_LOG10, UNK, NgramLM, interpolate

TRIE_HEADER = b"Trie Language Model"
QUANT_BITS = 16  # every quantized value: 2**16 bins (lm_trie_quant.c)
# Sphinx stores log probabilities as floats in its log base 1.0001 (logmath's default).
LOG10_PER_UNIT = math.log10(1.0001)
CONVERTER_VERSION = 1  # part of the cached file's name: bump when the conversion changes
_UNIGRAM = np.dtype([("prob", "<f4"), ("bo", "<f4"), ("next", "<u4")])


def sphinx_lm_path() -> Path:
    """pocketsphinx's US English trigram; a clear error when the extra is not installed."""
    try:
        import pocketsphinx
    except ImportError:
        raise ValueError(
            "the general English LM comes with pocketsphinx: pip install 'asr[english]'"
        ) from None
    return Path(pocketsphinx.get_model_path()) / "en-us" / "en-us.lm.bin"


def english_word_lm(out_dir: str | Path, source: str | Path | None = None) -> Path:
    """The English word LM as an ARPA file in `out_dir`, converted from `source` (default:
    pocketsphinx's `en-us.lm.bin`) on the first call and reused after: the file's name holds
    the source's sha256, so a different source is converted anew."""
    source = Path(source) if source is not None else sphinx_lm_path()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    arpa = Path(out_dir) / f"english-{digest}-v{CONVERTER_VERSION}.arpa"
    if not arpa.is_file():
        lm = interpolate([read_sphinx_lm(source)], [1.0])  # exact backoffs
        partial = lm.write_arpa(arpa.with_suffix(".partial"))
        partial.replace(arpa)  # never a half-written file under the final name
    return arpa


def read_sphinx_lm(path: str | Path) -> NgramLM:
    """A CMU Sphinx binary trie LM (`sphinx_lm_convert` output, `*.lm.bin`) -> `NgramLM`, log10
    probabilities and backoffs as stored (quantized above unigrams). <unk>, absent from Sphinx
    models, is added as never predicted."""
    data, counts, bins, unigrams, at = _read_header(path)
    levels, at = _read_levels(data, at, counts, bins, unigrams["next"].astype(np.int64))
    words = _read_words(data, at, counts)
    lm = NgramLM(len(counts))
    probs = (unigrams["prob"][:-1].astype(np.float64) * LOG10_PER_UNIT).tolist()
    backoffs = (unigrams["bo"][:-1].astype(np.float64) * LOG10_PER_UNIT).tolist()
    for word, prob, backoff in zip(words, probs, backoffs):
        lm.logprobs[(word,)], lm.backoffs[(word,)] = prob, backoff
    for n, (grams, prob, backoff) in enumerate(levels, start=2):
        keys = [tuple(words[i] for i in gram) for gram in grams.tolist()]
        lm.logprobs.update(zip(keys, prob.tolist()))
        if n < len(counts):
            lm.backoffs.update(zip(keys, backoff.tolist()))
    lm.logprobs.setdefault((UNK,), NEVER_LOG10)
    return lm


def read_sphinx_unigrams(path: str | Path) -> dict[str, float]:
    """The words of a Sphinx trie LM and their unigram log10 probabilities, without decoding
    the higher orders (a fraction of a second, where `read_sphinx_lm` takes ~20 s)."""
    data, counts, _, unigrams, at = _read_header(path)
    for n in range(2, len(counts) + 1):
        at += _level_size(counts, n)
    words = _read_words(data, at, counts)
    probs = (unigrams["prob"][:-1].astype(np.float64) * LOG10_PER_UNIT).tolist()
    return dict(zip(words, probs))


def _read_header(path: str | Path) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, int]:
    """The file's bytes, the n-gram counts per order, the quantization bins (log10), the
    unigram records and the offset where order 2 starts."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(TRIE_HEADER):
        raise ValueError(f"{path} is not a Sphinx trie LM (no {TRIE_HEADER.decode()!r} header)")
    order = data[len(TRIE_HEADER)]
    at = len(TRIE_HEADER) + 1
    counts = np.frombuffer(data, "<u4", order, at).astype(np.int64)
    at += 4 * order + 4  # the counts, then an unused int (once the quantization type)
    bins = np.frombuffer(data, "<f4", (2 * order - 3) * 2**QUANT_BITS, at)
    bins = bins.reshape(-1, 2**QUANT_BITS).astype(np.float64) * LOG10_PER_UNIT
    at += bins.size * 4
    unigrams = np.frombuffer(data, _UNIGRAM, counts[0] + 1, at)
    return data, counts, bins, unigrams, at + unigrams.nbytes


def _read_words(data: bytes, at: int, counts: np.ndarray) -> list[str]:
    """The vocabulary stored after the last order: a length, then NUL-separated words."""
    size = int(np.frombuffer(data, "<i4", 1, at)[0])
    return data[at + 4 : at + 4 + size].decode("utf-8").split("\0")[: counts[0]]


def _level_bits(counts: np.ndarray, n: int) -> int:
    """Bits of one record of order n: its word, and below the top order its quantized backoff
    and probability and the index of its first child."""
    word_bits = int(counts[0]).bit_length()
    if n == len(counts):
        return word_bits + QUANT_BITS
    return word_bits + 2 * QUANT_BITS + int(counts[n]).bit_length()


def _level_size(counts: np.ndarray, n: int) -> int:
    """Bytes of order n's bit-packed records, as lm_trie.c allocates them."""
    return ((1 + int(counts[n - 1])) * _level_bits(counts, n) + 7) // 8 + 8


def _read_levels(
    data: bytes, at: int, counts: np.ndarray, bins: np.ndarray, unigram_next: np.ndarray
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    """The bit-packed orders 2..N of the trie (lm_trie.c): per order, the n-grams as word ids
    in text order (K, n), their log10 probabilities and backoffs (zeros at the top order).

    A record of order n holds a word, then (below the top order) its quantized backoff and
    probability and the index of its first child; it is reached from its parent record, so
    the path from a unigram spells the n-gram backwards (word, newest history word, ...).
    The number of records is the parent level's last child index (the header's count can be
    larger: en-us.lm.bin declares 6 bigrams that are not there).
    """
    order, word_bits = len(counts), int(counts[0]).bit_length()
    levels, paths, first_child = [], np.arange(counts[0])[:, None], unigram_next
    for n in range(2, order + 1):
        top = n == order
        next_bits = 0 if top else int(counts[n]).bit_length()
        bits, size = _level_bits(counts, n), _level_size(counts, n)
        memory = np.frombuffer(data, np.uint8, size, at)
        at += size
        records = int(first_child[-1])
        offsets = np.arange(records + 1, dtype=np.int64) * bits
        word = _bits(memory, offsets[:-1], word_bits)
        parent = np.repeat(np.arange(len(first_child) - 1), np.diff(first_child))
        paths = np.concatenate([paths[parent], word[:, None]], axis=1)
        if top:
            prob = bins[-1][_bits(memory, offsets[:-1] + word_bits, QUANT_BITS)]
            backoff = np.zeros(records)
        else:
            table = 2 * (n - 2)
            backoff = bins[table + 1][_bits(memory, offsets[:-1] + word_bits, QUANT_BITS)]
            prob = bins[table][_bits(memory, offsets[:-1] + word_bits + QUANT_BITS, QUANT_BITS)]
            first_child = _bits(memory, offsets + word_bits + 2 * QUANT_BITS, next_bits)
        levels.append((paths[:, ::-1], prob, backoff))
    return levels, at


def _bits(memory: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """The `width`-bit little-endian field at each bit offset (bitarr.c's read_int57)."""
    window = memory[(offsets >> 3)[:, None] + np.arange(8)].copy().view("<u8")[:, 0]
    shifted = window >> (offsets & 7).astype(np.uint64)
    return (shifted & np.uint64((1 << width) - 1)).astype(np.int64)


def english_sentences(
    lm: NgramLM | dict[str, float],
    words: int,
    keep: Iterable[str] | None = None,
    seed: int = 0,
    length: int = 12,
) -> list[list[str]]:
    """Pseudo-text in `lm`'s unigram frequencies (an `NgramLM`, or words -> log10 probability
    as `read_sphinx_unigrams` gives): about `words` running words (each word of the vocabulary
    at least once), shuffled into sentences of `length` words. Text for a token-level LM or a
    subword tokenizer that should spell English words: their letters in the proportions of real
    text.

    `keep`: only these words (those the acoustic model can spell), renormalized.
    """
    if isinstance(lm, NgramLM):
        lm = {g[0]: p for g, p in lm.logprobs.items() if len(g) == 1}
    vocab = [w for w in lm if w not in (BOS, EOS, UNK)]
    if keep is not None:
        allowed = set(keep)
        vocab = [w for w in vocab if w in allowed]
    if not vocab:
        raise ValueError("no English word left to make sentences of")
    probs = np.array([10 ** lm[w] for w in vocab])
    copies = np.maximum(1, np.rint(probs / probs.sum() * words)).astype(int)
    running = [w for w, c in zip(vocab, copies.tolist()) for _ in range(c)]
    random.Random(seed).shuffle(running)
    return [running[i : i + length] for i in range(0, len(running), length)]
