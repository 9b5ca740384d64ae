"""Tests for asr/report.py: report files, worst list, confusions, HTML escaping and rendering."""

from __future__ import annotations

import json
import shutil
import subprocess

import matplotlib.image
import pytest

from asr.scoring.metrics import score
from asr.scoring.report import confusions, render_html, worst_utterances, write_report
from asr.text import TextNormalizer

REFS = {
    "u1": "the cat sat on the mat",
    "u2": "a b c d",
    "u3": "hello world",
    "u4": "one two three four five six seven eight nine ten",
}
HYPS = {
    "u1": "the cat sat mat",  # 2 deletions, WER 2/6
    "u2": "a x c d e",  # 1 substitution + 1 insertion, WER 2/4
    "u3": "hello world",
    "u4": "one two tree four five six seven eight nine ten",  # 1 substitution
}


def test_report_files_hold_the_scored_numbers(tmp_path):
    result = score(REFS, HYPS, num_resamples=200)
    write_report(result, tmp_path, worst_n=2)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["wer"] == pytest.approx(5 / 22)
    assert summary["words"] == {
        "hits": 18, "substitutions": 2, "deletions": 2, "insertions": 1,
        "ref_words": 22, "hyp_words": 21,
    }  # fmt: skip
    assert summary["wer_ci95"][0] <= summary["wer"] <= summary["wer_ci95"][1]
    assert summary["sentence_error_rate"] == pytest.approx(3 / 4)
    assert summary["normalizer"] == {
        "lowercase": True, "remove_punctuation": True, "unicode_form": "NFKC",
    }  # fmt: skip
    assert summary["comparison"] is None
    lines = [json.loads(line) for line in (tmp_path / "utterances.jsonl").read_text().splitlines()]
    assert [d["id"] for d in lines] == ["u1", "u2", "u3", "u4"]
    assert lines[1]["alignment"] == [
        ["equal", "a", "a"], ["sub", "b", "x"], ["equal", "c", "c"], ["equal", "d", "d"],
        ["ins", None, "e"],
    ]  # fmt: skip
    assert lines[0]["wer"] == pytest.approx(2 / 6)


def test_worst_list_orders_by_errors_then_wer(tmp_path):
    result = score(REFS, HYPS, num_resamples=0)
    # u1 and u2 both have 2 errors; u2 has the higher WER (2/4 > 2/6); u3 is correct.
    assert [u.id for u in worst_utterances(result, 10)] == ["u2", "u1", "u4"]
    write_report(result, tmp_path, worst_n=2)
    worst = (tmp_path / "worst.txt").read_text()
    assert worst.index("u2  WER 50.0%") < worst.index("u1  WER 33.3%")
    assert "u4" not in worst
    assert (
        "REF: the cat sat ON THE mat\nHYP: the cat sat ** *** mat\n                 D  D" in worst
    )
    assert "REF: a B c d *\nHYP: a X c d E\n       S     I" in worst


def test_confusions_count_substitution_pairs_deletions_insertions():
    refs = {"a": "to be or not", "b": "two be"}
    hyps = {"a": "two be or knot", "b": "to be uh"}
    subs, dels, ins = confusions(score(refs, hyps, num_resamples=0))
    assert subs == {"to → two": 1, "not → knot": 1, "two → to": 1}
    assert (dels, ins) == ({}, {"uh": 1})


def test_html_escapes_transcripts_and_ids():
    keep_markup = TextNormalizer(remove_punctuation=False)
    refs = {"<b>id</b>": "say <script>alert(1)</script> now", "ok": "fine & dandy"}
    hyps = {"<b>id</b>": "say <script>alert(2)</script> now", "ok": "fine & dandy"}
    page = render_html(score(refs, hyps, normalizer=keep_markup, num_resamples=0))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "<b>id</b>" not in page
    assert "&lt;b&gt;id&lt;/b&gt;" in page and "fine &amp; dandy" in page


def test_html_puts_errorful_utterances_first_and_correct_ones_collapsed():
    page = render_html(score(REFS, HYPS, num_resamples=0))
    assert page.index("<b>u2</b>") < page.index("<b>u1</b>") < page.index("<b>u4</b>")
    details = page[page.index("<details>") :]
    assert "Correct utterances (1)" in details and "<b>u3</b> hello world" in details
    assert '<span class="sub"><del>b</del>→<ins>x</ins></span>' in page
    assert '<del class="del">on</del>' in page and '<ins class="ins">e</ins>' in page
    assert page.count("data:image/png;base64,") == 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH to render report.html")
    refs = {f"utt{i:04d}": f"{REFS['u4']} {i}" for i in range(300)}
    hyps = {k: v.replace("three", "tree") if i % 3 else v for i, (k, v) in enumerate(refs.items())}
    refs["x"], hyps["x"] = "<script>alert(1)</script>", "</script>"
    write_report(score(refs, hyps, num_resamples=100), tmp_path)
    shot = tmp_path / "shot.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1200,2000", "--enable-logging=stderr", "--v=0",
        (tmp_path / "report.html").as_uri(),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot: {run.stderr[-2000:]}"
    assert "Uncaught" not in run.stderr and "CONSOLE" not in run.stderr
    pixels = matplotlib.image.imread(shot)[..., :3]  # (H, W, 3) in [0, 1]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05  # not blank: text, tables and plots drawn
    assert (pixels < 0.5).mean() > 0.01  # dark text/plot pixels cover part of the page
