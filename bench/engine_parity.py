"""Results unchanged, proven: every way of transcribing, hashed, to compare two trees (issue 28).

Runs each transcribing command of today's tree on two test sets and writes, per (command, set),
the sha256 of a canonical form of what it produced: per utterance (sorted by id) the text and
every word with its start and end, rounded to the microsecond. Run it before and after a change
and compare the two JSON files (`--compare OLD.json`): equal hashes mean byte-identical
transcripts and word timings, whatever file layout each command writes.

Test sets: the demo's held-out test voices (eSpeak NG, `make_demo_corpus` with seed 0: 100 test
utterances; its 400 training sentences give the word 3-gram LM and lexicon) and
librispeech-mini (76 utterances of real speech, `../shared/data`; its LM from librispeech-3h's
transcripts), both with the shipped `demo-synthetic-char` model. Commands: `asr transcribe`
(files), `asr evaluate --model`, `asr transcribe --manifest --devices 2`, the server (json and
verbose_json), ONNX fp32, each greedy and with beam search + LM + lexicon (the server started
with the decoding flags, as it takes them once per process); streaming at 640 ms with a
seeded random causal model (the shipped model cannot stream); and the quick demo's trained
weights (`asr demo --quick`, sha256 of the state dict).

    python bench/engine_parity.py --work-dir /tmp/parity --output /tmp/parity-before.json
    python bench/engine_parity.py --work-dir /tmp/parity --output /tmp/parity-after.json \
        --compare /tmp/parity-before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASR_SHARED_DATA", ROOT.parent / "shared" / "data"))
MODEL = "demo-synthetic-char"


def asr(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # The `asr` script beside this Python (Lightning's DDP launcher re-runs sys.argv: no `-c`).
    done = subprocess.run([str(Path(sys.executable).parent / "asr"), *args], capture_output=True,
                          text=True)  # fmt: skip
    if check and done.returncode not in (0,):
        shown = " ".join(args[:12]) + (" ..." if len(args) > 12 else "")
        raise SystemExit(f"asr {shown} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def canonical(records: list[dict[str, Any]], key: str = "id") -> str:
    """sha256 of [(id, text, [(word, start, end)])] sorted by id."""
    rows = []
    for r in records:
        words = [(w["word"], round(w["start"], 6), round(w["end"], 6)) for w in r.get("words", [])]
        rows.append((str(r[key]), r.get("text", ""), words))
    rows.sort()
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stem_id(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "id": Path(record.get("path") or record["id"]).stem}


# --- test sets ------------------------------------------------------------------------------


def demo_set(work: Path) -> dict[str, Path]:
    from asr.corpora.synthetic import CorpusConfig, make_demo_corpus
    from asr.data.manifest import read_manifest
    from asr.inference.lexicon import write_word_lm
    from asr.inference.transcribe import load_model

    corpus = work / "demo-corpus"
    make_demo_corpus(corpus, CorpusConfig(num_train=400, num_val=6, num_test=100, seed=0))
    lm, lexicon = work / "demo-lm.arpa", work / "demo-lexicon.txt"
    if not lm.is_file():
        texts = [u.text for u in read_manifest(corpus / "train.jsonl")]
        write_word_lm(texts, load_model(MODEL).bundle.tokenizer, lm, lexicon, order=3)
    return {"manifest": corpus / "test.jsonl", "lm": lm, "lexicon": lexicon}


def librispeech_set(work: Path) -> dict[str, Path] | None:
    from asr.corpora.librispeech import part_utterances
    from asr.data.manifest import write_manifest
    from asr.inference.lexicon import write_word_lm
    from asr.inference.transcribe import load_model

    mini, three = (
        SHARED / "librispeech-mini" / "LibriSpeech",
        SHARED / "librispeech-3h" / "LibriSpeech",
    )
    if not mini.is_dir() or not three.is_dir():
        return None
    manifest, lm, lexicon = work / "ls-test.jsonl", work / "ls-lm.arpa", work / "ls-lexicon.txt"
    if not manifest.is_file():
        utts = [u for part in sorted(mini.iterdir()) if part.is_dir()
                for u in part_utterances(part, 2)]  # fmt: skip
        write_manifest(utts, manifest)
    if not lm.is_file():
        texts = [u.text for part in sorted(three.iterdir()) if part.is_dir()
                 for u in part_utterances(part, 2)]  # fmt: skip
        write_word_lm(texts, load_model(MODEL).bundle.tokenizer, lm, lexicon, order=3)
    return {"manifest": manifest, "lm": lm, "lexicon": lexicon}


# --- the commands ---------------------------------------------------------------------------


def files_of(manifest: Path) -> list[str]:
    """The manifest's audio paths (relative ones are relative to the manifest's folder)."""
    return [str(manifest.parent / r["audio"]) for r in read_jsonl(manifest)]


def run_transcribe(files: list[str], out: Path, model: str, extra: list[str]) -> str:
    asr("transcribe", "--model", model, "--format", "json", "--output-dir", str(out), *extra,
        *files)  # fmt: skip
    records = [stem_id(json.loads(p.read_text())) for p in sorted(out.rglob("*.json"))]
    assert len(records) == len(files), (len(records), len(files), out)
    return canonical(records)


def run_evaluate(manifest: Path, out: Path, extra: list[str]) -> tuple[str, str | None]:
    """(the hash of the texts, as `asr evaluate` always wrote them; the hash of the whole
    records where it writes the transcript schema of `asr transcribe --manifest`)."""
    asr("evaluate", "--model", MODEL, "--manifest", str(manifest), "--output-dir", str(out), *extra)
    for name in ("transcripts.jsonl", "hypotheses.jsonl"):  # today's name, then the old one
        if (out / name).is_file():
            records = read_jsonl(out / name)
            texts = canonical([{"id": r["id"], "text": r["text"]} for r in records])
            return texts, canonical(records) if "words" in records[0] else None
    raise SystemExit(f"asr evaluate wrote no transcripts in {out}")


def run_manifest(manifest: Path, out: Path, extra: list[str]) -> str:
    asr("transcribe", "--model", MODEL, "--manifest", str(manifest), "--output-dir", str(out),
        "--devices", "2", *extra)  # fmt: skip
    return canonical(read_jsonl(out / "transcripts.jsonl"))


def run_server(files: list[str], work: Path, extra: list[str]) -> dict[str, str]:
    import httpx

    log = work / "server.log"
    command = [sys.executable, "-c", "import sys; from asr.cli import main; sys.exit(main())",
               "serve", "--model", MODEL, "--port", "0", *extra]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (found := re.search(r"^asr serve: (http://\S+)", log.read_text(), re.M)):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"asr serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        url = f"{found[1]}/v1/audio/transcriptions"
        plain, verbose = [], []
        with httpx.Client(timeout=600) as client:
            for path in files:
                for fmt, into in (("json", plain), ("verbose_json", verbose)):
                    with open(path, "rb") as f:
                        data = {"model": MODEL, "response_format": fmt,
                                "timestamp_granularities[]": "word"}  # fmt: skip
                        response = client.post(url, files={"file": f}, data=data)
                    response.raise_for_status()
                    into.append({"id": Path(path).stem, **response.json()})
        return {"json": canonical(plain), "verbose_json": canonical(verbose)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def streaming_model(work: Path) -> Path:
    """A seeded random causal model (as tests/test_streaming.py makes), calibrated to vary."""
    import numpy as np
    import torch

    from asr.audio import LogMelFeatures
    from asr.checkpoint import save_bundle
    from asr.config import EncoderConfig, FeatureConfig
    from asr.model import CtcModel
    from asr.tokenizer import CharTokenizer

    path = work / "stream-model.pt"
    if path.is_file():
        return path
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    config = EncoderConfig.preset("xs", num_layers=3, causal_conv=True,
                                  dynamic_chunk_training=True)  # fmt: skip
    model = CtcModel(config, tokenizer.vocab_size).eval()
    frontend = LogMelFeatures(FeatureConfig(normalize="global"))
    with torch.no_grad():
        frontend.set_global_stats(torch.full((80,), -6.0), torch.full((80,), 3.0))
        rng = np.random.default_rng(1)
        wave = torch.from_numpy((0.3 * rng.standard_normal(48000)).astype(np.float32))[None]
        x, _ = model.encoder(*frontend(wave, torch.tensor([wave.shape[1]])))
        model.head.weight.div_(x[0].std(0)).mul_(5.0)
        model.head.bias.copy_(-model.head.weight @ x[0].mean(0))
    save_bundle(path, model, frontend, tokenizer)
    return path


def demo_weights(work: Path) -> str:
    from asr.checkpoint import load_bundle

    demo = work / "quick-demo"
    model = demo / "exp" / "model.pt"
    if not model.is_file():
        asr("demo", "--quick", "--no-lm", "--work-dir", str(demo))
    state = load_bundle(model).model.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def measure(work: Path) -> dict[str, str]:
    import shutil

    work.mkdir(parents=True, exist_ok=True)
    # What the tree under test makes is made again each run; the test sets and LMs are reused.
    for made in (work / "out", work / "quick-demo", work / "model.onnx"):
        if made.is_dir():
            shutil.rmtree(made)
        elif made.is_file():
            made.unlink()
    out = work / "out"
    sets = {"demo": demo_set(work)}
    if (ls := librispeech_set(work)) is not None:
        sets["librispeech-mini"] = ls
    onnx = work / "model.onnx"
    if not onnx.is_file():
        asr("export", "--model", MODEL, "--format", "onnx", "--output", str(onnx))
    stream = streaming_model(work)
    hashes: dict[str, str] = {}
    for name, data in sets.items():
        manifest, files = data["manifest"], files_of(data["manifest"])
        lm = ["--lm", str(data["lm"]), "--lexicon", str(data["lexicon"])]
        for mode, extra in (("greedy", []), ("lm", lm)):
            print(f"{name} {mode} ...", flush=True)
            d = out / name / mode
            hashes[f"{name}/transcribe/{mode}"] = run_transcribe(files, d / "t", MODEL, extra)
            texts, records = run_evaluate(manifest, d / "e", extra)
            hashes[f"{name}/evaluate/{mode}"] = texts
            if records is not None:  # one schema: the same records as transcribe --manifest
                hashes[f"{name}/evaluate-records/{mode}"] = records
            hashes[f"{name}/manifest-devices2/{mode}"] = run_manifest(manifest, d / "m", extra)
            hashes[f"{name}/onnx-fp32/{mode}"] = run_transcribe(files, d / "o", str(onnx), extra)
            for fmt, digest in run_server(files, work, extra).items():
                hashes[f"{name}/server-{fmt}/{mode}"] = digest
        hashes[f"{name}/streaming-640ms/greedy"] = run_transcribe(
            files[:20], out / name / "stream", str(stream), ["--streaming", "--chunk-ms", "640"]
        )
    hashes["quick-demo/weights"] = demo_weights(work)
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/engine-parity"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="an earlier output: report every difference")
    args = parser.parse_args()
    os.environ.setdefault("ASR_PROGRESS", "0")
    hashes = measure(args.work_dir)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()  # fmt: skip
    args.output.write_text(json.dumps({"commit": commit, "hashes": hashes}, indent=2) + "\n")
    for key, value in hashes.items():
        print(f"{value[:16]}  {key}")
    if args.compare:
        old = json.loads(args.compare.read_text())["hashes"]
        differ = [k for k in sorted(set(old) & set(hashes)) if old[k] != hashes[k]]
        missing, new = sorted(set(old) - set(hashes)), sorted(set(hashes) - set(old))
        print("identical" if not differ else "DIFFERENT: " + ", ".join(differ))
        for label, keys in (("missing now", missing), ("new", new)):
            if keys:
                print(f"{label}: {', '.join(keys)}")
        differ += missing
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
