"""Evaluation reports: summary.json, utterances.jsonl, worst.txt and a self-contained report.html.

`write_report` turns a `ScoreResult` (`asr.scoring.metrics`) into files a person wants to read. The
HTML page is self-contained (inline CSS, no JavaScript, plots as base64 PNG drawn with
matplotlib's Agg canvas) and stays readable for thousands of utterances: utterances with errors
come first, worst first; correct ones sit in a collapsed section.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from collections import Counter
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from asr.scoring.metrics import AlignOp, Comparison, ScoreResult, UtteranceScore

# Reference-length bins (words) for the WER-by-length plot: (label, lowest, highest).
_LENGTH_BINS = [("1-5", 1, 5), ("6-10", 6, 10), ("11-20", 11, 20), ("21-40", 21, 40),
                ("41-80", 41, 80), ("81+", 81, 10**9)]  # fmt: skip
_TOP_CONFUSIONS = 15


def summary_dict(result: ScoreResult, compare: Comparison | None = None) -> dict:
    """Every number of summary.json."""
    compare = compare if compare is not None else result.comparison
    return {
        "wer": result.wer,
        "wer_ci95": list(result.wer_ci),
        "cer": result.cer,
        "cer_ci95": list(result.cer_ci),
        "sentence_error_rate": result.sentence_error_rate,
        "num_utterances": result.num_utterances,
        "num_utterances_with_errors": sum(u.words.errors > 0 for u in result.utterances),
        "words": result.words.to_dict(),
        "chars": result.chars.to_dict(),
        "bootstrap": {"num_resamples": result.num_resamples, "seed": result.seed, "level": 0.95},
        "normalizer": dataclasses.asdict(result.normalizer),
        "comparison": dataclasses.asdict(compare) if compare is not None else None,
        "definitions": {
            "wer": "(S + D + I) / max(N_ref_words, 1), counts summed over all utterances",
            "cer": "same on characters of the normalized text, spaces between words included",
            "sentence_error_rate": "fraction of utterances with at least one word error",
        },
    }


def worst_utterances(result: ScoreResult, n: int) -> list[UtteranceScore]:
    """The n utterances with the most word errors, then the highest WER, then by id."""
    wrong = [u for u in result.utterances if u.words.errors > 0]
    return sorted(wrong, key=lambda u: (-u.words.errors, -u.wer, u.id))[:n]


def write_report(
    result: ScoreResult,
    output_dir: str | Path,
    worst_n: int = 20,
    compare: Comparison | None = None,
) -> Path:
    """Write summary.json, utterances.jsonl, worst.txt and report.html; return the folder."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    compare = compare if compare is not None else result.comparison
    summary = summary_dict(result, compare)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with open(out / "utterances.jsonl", "w", encoding="utf-8") as f:
        for utt in result.utterances:
            f.write(json.dumps(utt.to_dict(), ensure_ascii=False) + "\n")
    worst = [_worst_block(u) for u in worst_utterances(result, worst_n)]
    (out / "worst.txt").write_text("\n\n".join(worst) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_html(result, compare), encoding="utf-8")
    return out


def _utt_counts(u: UtteranceScore) -> str:
    w = u.words
    return (
        f"WER {100 * u.wer:.1f}%  errors {w.errors} "
        f"(S={w.substitutions} D={w.deletions} I={w.insertions}) / N={w.ref_words}"
    )


def _worst_block(u: UtteranceScore) -> str:
    """sclite-style: errors upper-cased, '*' fills the missing side, S/D/I marks below."""
    ref, hyp, marks = ["REF:"], ["HYP:"], ["    "]
    for op, r, h in u.alignment:
        r_txt = (r or "").upper() if op != "equal" else r
        h_txt = (h or "").upper() if op != "equal" else h
        width = max(len(r or ""), len(h or ""), 1)
        ref.append((r_txt or "*" * width).ljust(width))
        hyp.append((h_txt or "*" * width).ljust(width))
        marks.append({"equal": "", "sub": "S", "del": "D", "ins": "I"}[op].ljust(width))
    lines = [f"{u.id}  {_utt_counts(u)}", " ".join(ref), " ".join(hyp), " ".join(marks).rstrip()]
    return "\n".join(line.rstrip() for line in lines)


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_wer_by_length(result: ScoreResult) -> str:
    """Bar chart (base64 PNG) of summed WER per reference-length bin, utterance counts on top."""
    labels, rates, sizes = [], [], []
    for label, low, high in _LENGTH_BINS:
        utts = [u for u in result.utterances if low <= u.words.ref_words <= high]
        if utts:
            labels.append(label)
            rates.append(
                100 * sum(u.words.errors for u in utts) / sum(u.words.ref_words for u in utts)
            )
            sizes.append(len(utts))
    empty = sum(u.words.ref_words == 0 for u in result.utterances)
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    bars = ax.bar(labels, rates, color="#4c72b0")
    ax.bar_label(bars, labels=[f"n={n}" for n in sizes], fontsize=8)
    ax.set_xlabel("reference length (words)")
    ax.set_ylabel("WER (%)")
    note = f" ({empty} empty references not shown)" if empty else ""
    ax.set_title("WER by utterance length" + note, fontsize=10)
    ax.margins(y=0.15)
    return _png(fig)


def confusions(result: ScoreResult) -> tuple[Counter, Counter, Counter]:
    """Counts of substitution pairs "ref -> hyp", deleted words and inserted words."""
    subs: Counter = Counter()
    dels: Counter = Counter()
    ins: Counter = Counter()
    for u in result.utterances:
        for op, r, h in u.alignment:
            if op == "sub":
                subs[f"{r} → {h}"] += 1
            elif op == "del":
                dels[r] += 1
            elif op == "ins":
                ins[h] += 1
    return subs, dels, ins


def plot_confusions(result: ScoreResult) -> str:
    """Three horizontal bar charts (base64 PNG): top substitutions, deletions, insertions."""
    fig = Figure(figsize=(12, 4.5))
    titles = ("substitutions (ref → hyp)", "deletions", "insertions")
    for k, (counter, title) in enumerate(zip(confusions(result), titles), start=1):
        ax = fig.add_subplot(1, 3, k)
        top = counter.most_common(_TOP_CONFUSIONS)[::-1]
        if top:
            ax.barh(
                [t for t, _ in top],
                [c for _, c in top],
                color=["#dd8452", "#c44e52", "#55a868"][k - 1],
            )
            ax.tick_params(axis="y", labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_title(f"most frequent {title}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .8em;text-align:left;
border-bottom:1px solid #eee}th{font-weight:600;background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:.5em 0}
.utt{padding:.4em .6em;margin:.35em 0;border-left:3px solid #ccc;background:#fafafa}
.meta{font-size:.85em;color:#555}.meta b{color:#222}
.al{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;word-wrap:break-word}
.sub{background:#fde2c8;border-radius:3px;padding:0 2px}
.sub del{color:#a33;text-decoration:line-through}.sub ins{text-decoration:none;font-weight:600}
.del{background:#f8d0d0;color:#a00;text-decoration:line-through;border-radius:3px;padding:0 2px}
.ins{background:#d3f0d3;color:#060;text-decoration:underline;border-radius:3px;padding:0 2px}
details summary{cursor:pointer;font-weight:600;margin:.6em 0}
.ok{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88em;color:#444}
"""


def _alignment_html(alignment: list[AlignOp]) -> str:
    e = html.escape
    parts = []
    for op, r, h in alignment:
        if op == "equal":
            parts.append(e(r))
        elif op == "sub":
            parts.append(f'<span class="sub"><del>{e(r)}</del>→<ins>{e(h)}</ins></span>')
        elif op == "del":
            parts.append(f'<del class="del">{e(r)}</del>')
        else:
            parts.append(f'<ins class="ins">{e(h)}</ins>')
    return " ".join(parts) or "<i>(empty reference and hypothesis)</i>"


def _img(alt: str, png_base64: str) -> str:
    return f"<img alt='{alt}' src='data:image/png;base64,{png_base64}'>"


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td class=num>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _summary_rows(result: ScoreResult) -> list[tuple[str, str]]:
    w, c = result.words, result.chars
    pct = "{:.2f}%".format
    return [
        ("WER", pct(100 * result.wer)),
        ("WER 95% CI", f"{pct(100 * result.wer_ci[0])} – {pct(100 * result.wer_ci[1])}"),
        ("CER", pct(100 * result.cer)),
        ("CER 95% CI", f"{pct(100 * result.cer_ci[0])} – {pct(100 * result.cer_ci[1])}"),
        ("sentence error rate", pct(100 * result.sentence_error_rate)),
        (
            "substitutions / deletions / insertions",
            f"{w.substitutions} / {w.deletions} / {w.insertions}",
        ),
        ("correct words (hits)", str(w.hits)),
        ("reference / hypothesis words", f"{w.ref_words} / {w.hyp_words}"),
        ("reference characters / character errors", f"{c.ref_words} / {c.errors}"),
        ("utterances", str(result.num_utterances)),
        (
            "normalizer",
            ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(result.normalizer).items()),
        ),
        ("bootstrap", f"{result.num_resamples} resamples of utterances, seed {result.seed}"),
    ]


def _comparison_html(cmp: Comparison) -> str:
    rows = [
        ("baseline (A)", cmp.baseline),
        ("WER A → B (this run)", f"{100 * cmp.wer_a:.2f}% → {100 * cmp.wer_b:.2f}%"),
        ("mean difference B − A", f"{100 * cmp.mean_diff:+.2f} points"),
        ("95% CI of difference", f"{100 * cmp.diff_ci[0]:+.2f} to {100 * cmp.diff_ci[1]:+.2f}"),
        ("P(B better than A)", f"{cmp.prob_b_better:.3f}"),
        ("paired resamples / utterances", f"{cmp.num_resamples} / {cmp.num_utterances}"),
    ]
    return "<h2>Comparison (paired bootstrap)</h2>" + _table(rows)


def render_html(result: ScoreResult, compare: Comparison | None = None) -> str:
    """The whole report page as one self-contained HTML string."""
    e = html.escape
    wrong = worst_utterances(result, len(result.utterances))
    right = [u for u in result.utterances if u.words.errors == 0]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>ASR evaluation: WER {100 * result.wer:.2f}%</title><style>{_CSS}</style></head>",
        f"<body><h1>ASR evaluation: WER {100 * result.wer:.2f}%</h1>",
        "<h2>Summary</h2>",
        _table(_summary_rows(result)),
        _comparison_html(compare) if compare is not None else "",
        "<h2>Plots</h2>",
        _img("WER by utterance length", plot_wer_by_length(result)),
        _img("most frequent confusions", plot_confusions(result)),
        f"<h2>Utterances with errors ({len(wrong)}), worst first</h2>",
        "<p class=meta>Legend: plain = correct, ",
        '<span class="sub"><del>ref</del>→<ins>hyp</ins></span> substitution, ',
        '<del class="del">ref</del> deletion, <ins class="ins">hyp</ins> insertion.</p>',
    ]
    for u in wrong:
        parts.append(
            f"<div class=utt><div class=meta><b>{e(u.id)}</b> &middot; {e(_utt_counts(u))}</div>"
            f"<div class=al>{_alignment_html(u.alignment)}</div></div>"
        )
    parts.append(f"<details><summary>Correct utterances ({len(right)})</summary>")
    parts += [f"<div class=ok><b>{e(u.id)}</b> {e(u.reference)}</div>" for u in right]
    parts.append("</details></body></html>\n")
    return "\n".join(parts)
