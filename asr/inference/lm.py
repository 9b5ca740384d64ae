"""Word n-gram language models for CTC beam search: estimation, ARPA files, lexicons.

Here: `NgramLM` (log10 probabilities and backoff weights, scored exactly as KenLM scores an ARPA
file), `train_ngram` (interpolated Kneser-Ney, Kneser & Ney 1995, in the form of Chen & Goodman
1998, section 3.5, with one discount per order; of words, or of any token sequences),
`interpolate` (linear interpolation of several models into one backoff model, and the
renormalization of one), `NgramLM.from_ngrams` (a hand-made model: tests, examples),
`read_arpa` / `NgramLM.write_arpa`, and `is_arpa` / `arpa_words` (an ARPA file's word list, read
without loading the model, for LMs of any size). Lexicons are in `asr.inference.lexicon`, the
general English model in `asr.inference.english`.

Interpolated Kneser-Ney in backoff form: for a context h seen in training,

    p(w | h) = max(c(h w) - D, 0) / c(h) + gamma(h) p(w | h'),   gamma(h) = D N1+(h .) / c(h)

where h' drops the oldest word of h, c are raw counts at the highest order and continuation
counts (the number of distinct words seen before) below it, except for n-grams that start with
<s>, which have no left context and keep their raw counts. An ARPA file lists p(w | h) for the
seen n-grams and log10 gamma(h) as the backoff weight of h, so probabilities computed through the
backoff sum to 1 over the vocabulary plus </s> in every context. <unk> gets the share of the
unigram mass that interpolation with the uniform distribution leaves it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr.text import normalize_text

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
NEVER_LOG10 = -99.0  # ARPA convention for "never predicted" (<s>)
KENLM_MAX_ORDER = 6  # the KenLM inside flashlight-text loads n-grams up to this order


@dataclass
class NgramLM:
    """An n-gram model in backoff form: `logprobs[gram]` and `backoffs[context]`, both log10."""

    order: int
    logprobs: dict[tuple[str, ...], float] = field(default_factory=dict)
    backoffs: dict[tuple[str, ...], float] = field(default_factory=dict)

    @property
    def vocabulary(self) -> list[str]:
        """Every unigram, <s>, </s> and <unk> included."""
        return [g[0] for g in self.logprobs if len(g) == 1]

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context) through the backoff; unknown words count as <unk>."""
        word = word if (word,) in self.logprobs else UNK
        context = tuple(w if (w,) in self.logprobs else UNK for w in context)
        context = context[max(0, len(context) - (self.order - 1)) :] if self.order > 1 else ()
        penalty = 0.0
        while (*context, word) not in self.logprobs:
            if not context:
                raise KeyError(f"{word!r} has no unigram in this model")
            penalty += self.backoffs.get(context, 0.0)
            context = context[1:]
        return penalty + self.logprobs[(*context, word)]

    def sentence_log10_prob(self, sentence: str) -> float:
        """log10 p(<s> words </s>): the sum over the words and the end of the sentence."""
        tokens = [BOS, *normalize_text(sentence).split(), EOS]
        return sum(self.log10_prob(w, tokens[:i]) for i, w in enumerate(tokens) if i > 0)

    @classmethod
    def from_ngrams(cls, ngrams: Mapping[tuple[str, ...], float]) -> NgramLM:
        """A model of `{(w1, ..., wn): log10 probability}` with backoff weights 0.

        <s>, </s> and <unk> are added as unigrams when missing (<s> is never predicted: -99).
        Every n-gram's history must itself be listed, as ARPA requires. KenLM needs at least
        bigrams: a unigram model gets the bigram "<s> </s>" with the probability of "</s>".
        """
        grams = {(BOS,): NEVER_LOG10, (EOS,): -1.0, (UNK,): NEVER_LOG10, **dict(ngrams)}
        if max(len(g) for g in grams) == 1:
            grams[BOS, EOS] = grams[EOS,]
        for gram in grams:
            if len(gram) > 1 and gram[:-1] not in grams:
                raise ValueError(f"n-gram {gram} has no entry for its history {gram[:-1]}")
        return cls(max(len(g) for g in grams), grams)

    def write_arpa(self, path: str | Path) -> Path:
        """Write the model as an ARPA text file (loadable by KenLM); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        by_order: dict[int, list[tuple[str, ...]]] = defaultdict(list)
        for gram in self.logprobs:
            by_order[len(gram)].append(gram)
        lines = ["\\data\\"]
        lines += [f"ngram {n}={len(by_order[n])}" for n in range(1, self.order + 1)]
        for n in range(1, self.order + 1):
            lines += ["", f"\\{n}-grams:"]
            for gram in sorted(by_order[n]):
                text = f"{self.logprobs[gram]:.7f}\t{' '.join(gram)}"
                if n < self.order:
                    text += f"\t{self.backoffs.get(gram, 0.0):.7f}"
                lines.append(text)
        lines += ["", "\\end\\", ""]
        path.write_text("\n".join(lines), encoding="utf-8")
        return path


def _raw_counts(sentences: Iterable[str | Sequence[str]], order: int) -> list[Counter]:
    """counts[n][gram] for n = 1..order over `<s> words </s>` (the unigram <s> not counted)."""
    counts = [Counter() for _ in range(order + 1)]
    for sentence in sentences:
        words = normalize_text(sentence).split() if isinstance(sentence, str) else list(sentence)
        if not words:
            continue
        tokens = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(len(tokens) - n + 1):
                counts[n][tuple(tokens[i : i + n])] += 1
        counts[1][(BOS,)] -= 1
    del counts[1][(BOS,)]
    return counts


def _kneser_ney_counts(raw: list[Counter], order: int) -> list[Counter]:
    """Raw counts at the top order and for grams starting with <s>; continuation counts below."""
    adjusted = [Counter() for _ in range(order + 1)]
    adjusted[order] = Counter(raw[order])
    for n in range(order - 1, 0, -1):
        for gram in raw[n + 1]:
            adjusted[n][gram[1:]] += 1  # one more distinct word seen before gram[1:]
        for gram, count in raw[n].items():
            if gram[0] == BOS:
                adjusted[n][gram] = count
    return adjusted


def _discount(counts: Counter) -> float:
    """D = n1 / (n1 + 2 n2) (Ney et al. 1994) from the counts-of-counts, kept inside (0, 1)."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)


def train_ngram(sentences: Iterable[str | Sequence[str]], order: int = 3) -> NgramLM:
    """Interpolated Kneser-Ney n-gram model of the `sentences`: strings (normalized, then split
    into words) or sequences of words taken as they are (a model's tokens, "|" included).

    Sentences are scored as `<s> words </s>`; words never seen map to <unk>.
    """
    if order < 1:
        raise ValueError(f"n-gram order must be >= 1, got {order}")
    raw = _raw_counts(sentences, order)
    if not raw[1]:
        raise ValueError("cannot train an n-gram model: no sentences with words were given")
    adjusted = _kneser_ney_counts(raw, order)
    lm = NgramLM(order)
    # Unigrams: discounted counts interpolated with the uniform distribution over the words
    # that can be predicted (every seen word, </s> and <unk>; never <s>).
    d = _discount(adjusted[1])
    total = sum(adjusted[1].values())
    vocab = len(adjusted[1]) + (0 if (UNK,) in adjusted[1] else 1)
    uniform = d * len(adjusted[1]) / total / vocab
    for gram, count in adjusted[1].items():
        lm.logprobs[gram] = math.log10(max(count - d, 0.0) / total + uniform)
    lm.logprobs.setdefault((UNK,), math.log10(uniform))
    lm.logprobs[(BOS,)] = NEVER_LOG10
    for n in range(2, order + 1):
        d = _discount(adjusted[n])
        context_total: Counter = Counter()
        context_types: Counter = Counter()
        for gram, count in adjusted[n].items():
            context_total[gram[:-1]] += count
            context_types[gram[:-1]] += 1
        gamma = {h: d * context_types[h] / context_total[h] for h in context_total}
        new = {}
        for gram, count in adjusted[n].items():
            h = gram[:-1]
            lower = 10 ** lm.log10_prob(gram[-1], h[1:])
            new[gram] = math.log10(max(count - d, 0.0) / context_total[h] + gamma[h] * lower)
        lm.logprobs.update(new)
        lm.backoffs.update({h: math.log10(g) for h, g in gamma.items()})
    return lm


def interpolate(models: Sequence[NgramLM], weights: Sequence[float]) -> NgramLM:
    """One backoff model of `sum_i weights[i] * p_i(w | h)` over the union of the vocabularies.

    Every n-gram of any model gets the mixture of the models' probabilities (each computed
    through its own backoff; a word outside a model's vocabulary has probability 0 there, its
    mass being that model's <unk>), and each context's backoff weight is recomputed so that
    p(w | h) sums to 1 over the vocabulary in every context (static interpolation as SRILM's
    `ngram -mix-lm` does it). `interpolate([lm], [1.0])` renormalizes one model: its backoff
    weights recomputed from its probabilities (a model whose stored numbers were rounded or
    quantized). Vectorized (numpy): millions of n-grams take seconds.
    """
    if len(models) != len(weights) or not models:
        raise ValueError(f"need one weight per model, got {len(weights)} for {len(models)}")
    if any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise ValueError(f"interpolation weights must be >= 0 and sum to 1, got {list(weights)}")
    words = sorted({w for lm in models for w in lm.vocabulary} | {BOS, EOS, UNK})
    ids = {w: i for i, w in enumerate(words)}
    tables = [_Table.of(lm, ids) for lm in models]
    mixed = _Table(max(lm.order for lm in models), len(words))
    for n in range(1, mixed.order + 1):
        keys = np.unique(np.concatenate([t.keys[n] for t in tables if n <= t.order]))
        grams = mixed.decode(keys, n)
        p = sum(w * 10 ** t.log10_probs(grams) for w, t in zip(weights, tables) if w > 0)
        logp = np.log10(np.maximum(p, 10**NEVER_LOG10))
        mixed.add(n, keys, np.maximum(logp, NEVER_LOG10))
        if n > 1:
            mixed.backoffs[n - 1] = mixed.backoff_weights(n)
    return mixed.to_lm(words)


class _Table:
    """An n-gram model as arrays over word ids, for vectorized scoring: per order n, the sorted
    keys of its n-grams (ids as digits in base `base`), log10 probabilities and backoffs."""

    def __init__(self, order: int, vocab_size: int) -> None:
        self.order, self.base = order, vocab_size
        if vocab_size**order >= 2**62:
            raise ValueError(f"{order}-grams of {vocab_size} words do not fit 64-bit keys")
        empty = np.zeros(0)
        self.keys = [np.zeros(0, np.int64) for _ in range(order + 1)]
        self.logprobs = [empty for _ in range(order + 1)]
        self.backoffs = [empty for _ in range(order + 1)]

    @classmethod
    def of(cls, lm: NgramLM, ids: Mapping[str, int]) -> _Table:
        table = cls(lm.order, len(ids))
        for n in range(1, lm.order + 1):
            grams = [g for g in lm.logprobs if len(g) == n]
            digits = np.array([[ids[w] for w in g] for g in grams], np.int64).reshape(-1, n)
            table.add(n, table.encode(digits), np.array([lm.logprobs[g] for g in grams]),
                      np.array([lm.backoffs.get(g, 0.0) for g in grams]))  # fmt: skip
        return table

    def add(self, n: int, keys: np.ndarray, logprobs: np.ndarray, backoffs=None) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys[n], self.logprobs[n] = keys[order], logprobs[order]
        self.backoffs[n] = np.zeros(len(keys)) if backoffs is None else backoffs[order]

    def encode(self, grams: np.ndarray) -> np.ndarray:
        """(K, n) word ids -> (K,) keys; -1 where a gram holds an unknown word (id -1)."""
        keys = np.zeros(len(grams), np.int64)
        for column in grams.T:
            keys = keys * self.base + column
        return np.where((grams < 0).any(axis=1), -1, keys)

    def decode(self, keys: np.ndarray, n: int) -> np.ndarray:
        grams = np.zeros((len(keys), n), np.int64)
        for i in range(n - 1, -1, -1):
            keys, grams[:, i] = np.divmod(keys, self.base)
        return grams

    def find(self, n: int, keys: np.ndarray) -> np.ndarray:
        """Index of each key among the n-grams, -1 where absent."""
        table = self.keys[n] if n <= self.order else np.zeros(0, np.int64)
        if not len(table):
            return np.full(len(keys), -1)
        at = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return np.where(table[at] == keys, at, -1)

    def log10_probs(self, grams: np.ndarray) -> np.ndarray:
        """(K, n) ids -> log10 p(last | the others) through the backoff, as `NgramLM.log10_prob`
        (-inf for a word this model does not have)."""
        grams = grams[:, max(0, grams.shape[1] - self.order) :]
        n = grams.shape[1]
        result, penalty = np.full(len(grams), -np.inf), np.zeros(len(grams))
        todo = np.arange(len(grams))
        for start in range(n):  # the longest context first
            at = self.find(n - start, self.encode(grams[todo, start:]))
            hit = at >= 0
            result[todo[hit]] = penalty[todo[hit]] + self.logprobs[n - start][at[hit]]
            todo = todo[~hit]
            if start < n - 1:  # back off past the oldest word of the context
                context = self.find(n - start - 1, self.encode(grams[todo, start:-1]))
                weights = self.backoffs[n - start - 1]
                penalty[todo] += np.where(context >= 0, weights[np.maximum(context, 0)], 0.0)
        return result

    def backoff_weights(self, n: int) -> np.ndarray:
        """log10 backoff of each (n-1)-gram that makes its n-grams' context sum to 1:
        (1 - sum of its n-grams' p) / (1 - sum of their lower-order p)."""
        grams = self.decode(self.keys[n], n)
        context = self.find(n - 1, self.encode(grams[:, :-1]))
        assert (context >= 0).all(), "an n-gram's history is missing"
        size = len(self.keys[n - 1])
        seen = np.bincount(context, 10 ** self.logprobs[n], minlength=size)
        lower = np.bincount(context, 10 ** self.log10_probs(grams[:, 1:]), minlength=size)
        tiny = 1e-12  # a context whose n-grams hold all the mass: never back off there
        return np.log10(np.maximum(1 - seen, tiny) / np.maximum(1 - lower, tiny))

    def to_lm(self, words: Sequence[str]) -> NgramLM:
        lm = NgramLM(self.order)
        for n in range(1, self.order + 1):
            grams = [tuple(words[i] for i in g) for g in self.decode(self.keys[n], n).tolist()]
            lm.logprobs.update(zip(grams, self.logprobs[n].tolist()))
            if n < self.order:
                lm.backoffs.update(zip(grams, self.backoffs[n].tolist()))
        return lm


def read_arpa(path: str | Path) -> NgramLM:
    """An ARPA text file -> `NgramLM`; a malformed line raises ValueError naming it."""
    path = Path(path)
    lm = NgramLM(order=0)
    section = 0
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("ngram ") or line in ("\\data\\", "\\end\\"):
                continue
            if line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1:].split("-")[0])
                lm.order = max(lm.order, section)
                continue
            fields = line.split()
            if section == 0 or len(fields) not in (section + 1, section + 2):
                raise ValueError(f"{path}:{number}: not an ARPA {section}-gram line: {line!r}")
            gram = tuple(fields[1 : section + 1])
            lm.logprobs[gram] = float(fields[0])
            if len(fields) == section + 2:
                lm.backoffs[gram] = float(fields[-1])
    if lm.order == 0:
        raise ValueError(f"{path} holds no n-grams: is it an ARPA file?")
    return lm


def is_arpa(path: str | Path) -> bool:
    """True for an ARPA text model (it starts with `\\data\\`), False for a KenLM binary."""
    with open(path, "rb") as f:
        return f.read(4096).lstrip().startswith(b"\\data\\")


def arpa_words(path: str | Path) -> list[str]:
    """The words of an ARPA model's unigram section, without <s>, </s> and <unk>."""
    words, in_unigrams = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
            elif in_unigrams and line:
                word = line.split()[1]
                if word not in (BOS, EOS, UNK):
                    words.append(word)
    return words
