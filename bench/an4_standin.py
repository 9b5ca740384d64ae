"""Does the AN4 recipe finish every stage within 30 minutes on 2 cores, with its defaults?

    python bench/an4_standin.py                                   # work dir /tmp/an4-standin
    python bench/an4_standin.py --work-dir /tmp/an4-smoke --train-minutes-audio 2 \\
        --test-utterances 4 trainer.max_time=00:00:00:20 trainer.max_steps=-1 \\
        trainer.val_every_n_steps=10 trainer.progress_bar=false        # a smoke run, ~1.5 min

AN4 cannot be downloaded here, so a stand-in of its size is built from real speech: an AN4-layout
folder (`WORK_DIR/data/an4/`: `etc/an4_{train,test}.{fileids,transcription}`, 16 kHz 16-bit
`wav/`) holding LibriSpeech utterances (`--train-data`) with their own texts. Training: whole
speakers (sorted, shuffled with seed 0) until `--train-minutes-audio` (AN4: about 50 minutes);
test: `--test-utterances` drawn with seed 0 from the other speakers (default 32, about 7 minutes
of LibriSpeech audio: the length of AN4's 130 short test utterances). An existing
folder is reused. Then `recipes/an4/run.py --work-dir W --data-dir W/data` runs as a new user
would run it (extra arguments are its config overrides), one subprocess per stage, each timed.

Writes `WORK_DIR/standin.json` (seconds per stage, total minutes, the machine, the commands, the
corpus sizes and the recipe's `exp/RESULTS.json`) and prints the row for BENCHMARKS.md. The
recipe reuses what its work dir holds, so only a fresh `--work-dir` times every stage.

Where the stand-in differs from AN4: LibriSpeech utterances last ~13 s (AN4's ~3 s) and come from
few speakers, so the validation speaker the recipe holds out is a larger share of the audio.
Training time is set by configs/an4.yaml's wall-clock budget (trainer.max_time), not by the
corpus size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import soundfile

from asr.corpora.an4 import split_utterances
from asr.corpora.librispeech import find_librispeech_dir, part_utterances
from asr.data.manifest import Utterance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "an4" / "run.py"
RATE = 16000
BUDGET_MINUTES = 30.0
FOLDERS = {"train": "an4_clstk", "test": "an4test_clstk"}  # AN4's speaker-folder parents


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/an4-standin"))
    p.add_argument("--train-data", type=Path, default=REPO.parent / "shared/data/librispeech-3h")
    p.add_argument("--train-minutes-audio", type=float, default=50.0, help="AN4: about 50")
    p.add_argument("--test-utterances", type=int, default=32, help="~7 min, AN4's test length")
    p.add_argument("overrides", nargs="*", help="passed to recipes/an4/run.py: key=value")
    return p.parse_args()


def choose_split(
    utts: list[Utterance], minutes: float, num_test: int, seed: int = 0
) -> dict[str, list[Utterance]]:
    """Whole training speakers (at least the 2 the recipe's validation hold-out needs) until
    `minutes` of audio; `num_test` test utterances drawn from the other speakers."""
    seconds = Counter()  # speaker -> seconds of audio
    for u in utts:
        seconds[u.speaker] += u.duration
    speakers = sorted(seconds)
    random.Random(seed).shuffle(speakers)
    take = 2  # the recipe holds whole training speakers out for validation: at least one
    while take < len(speakers) - 1 and sum(seconds[s] for s in speakers[:take]) < 60 * minutes:
        take += 1
    train = [u for u in utts if u.speaker in speakers[:take]]
    rest = [u for u in utts if u.speaker in speakers[take:]]
    if len(speakers) <= take or len(rest) < num_test:
        raise SystemExit(f"{len(speakers)} speakers, {len(utts)} utterances: too few for "
                         f"{minutes} min of training and {num_test} test utterances")  # fmt: skip
    test = sorted(random.Random(seed).sample(rest, num_test), key=lambda u: u.id)
    return {"train": train, "test": test}


def write_split(an4: Path, split: str, utts: list[Utterance]) -> None:
    """wav/<fileid>.wav (16-bit PCM as LibriSpeech stores it), then the fileids and the
    transcription (written last: its presence marks a finished split)."""
    fileids = [f"{FOLDERS[split]}/{u.speaker}/{u.id}" for u in utts]
    for fileid, utt in zip(fileids, utts):
        audio, rate = soundfile.read(utt.audio, dtype="int16")
        if rate != RATE:
            raise ValueError(f"{utt.audio}: {rate} Hz, AN4 is {RATE} Hz")
        (an4 / "wav" / fileid).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(an4 / "wav" / f"{fileid}.wav", audio, RATE, subtype="PCM_16")
    (an4 / "etc").mkdir(parents=True, exist_ok=True)
    (an4 / "etc" / f"an4_{split}.fileids").write_text("\n".join(fileids) + "\n")
    lines = [f"<s> {u.text} </s> ({u.id})" for u in utts]
    (an4 / "etc" / f"an4_{split}.transcription").write_text("\n".join(lines) + "\n")


def build_an4(data_dir: Path, librispeech: Path, minutes: float, num_test: int) -> Path:
    an4 = data_dir / "an4"
    if all((an4 / "etc" / f"an4_{split}.transcription").is_file() for split in FOLDERS):
        print(f"reusing the stand-in corpus {an4}")
        return an4
    corpus = find_librispeech_dir(librispeech)
    if not corpus.is_dir():
        raise SystemExit(f"LibriSpeech folder not found: {corpus} (--train-data)")
    utts = [u for part in sorted(corpus.iterdir()) if part.is_dir()
            for u in part_utterances(part)]  # fmt: skip
    for split, chosen in choose_split(utts, minutes, num_test).items():
        write_split(an4, split, chosen)
    return an4


def corpus_sizes(an4: Path) -> dict[str, dict[str, float]]:
    sizes = {}
    for split in FOLDERS:
        utts = split_utterances(an4, split)
        sizes[split] = {"utterances": len(utts), "speakers": len({u.speaker for u in utts}),
                        "minutes": round(sum(u.duration for u in utts) / 60, 1)}  # fmt: skip
    return sizes


def recipe_stages() -> tuple[str, ...]:
    """STAGES of recipes/an4/run.py, loaded from its file (recipes/ is not a package)."""
    spec = importlib.util.spec_from_file_location("recipe_an4", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STAGES


def time_stages(command: list[str], stages: tuple[str, ...]) -> dict[str, float]:
    """Each stage in its own process (the machine's default threads); name -> wall seconds."""
    seconds = {}
    for number, name in enumerate(stages, start=1):
        start = time.perf_counter()
        step = [*command, "--stage", str(number), "--stop-stage", str(number)]
        if subprocess.run(step, cwd=REPO).returncode != 0:
            raise SystemExit(f"stage {number} ({name}) failed: {shlex.join(step)}")
        seconds[name] = round(time.perf_counter() - start, 1)
    return seconds


def table_row(result: dict[str, Any]) -> str:
    def scores(decoding: str) -> str:
        s = result["results"].get("test", {}).get(decoding)
        return f"{s['wer']:.2f} / {s['cer']:.2f}" if s else "-"

    stages = ", ".join(f"{name} {s:.0f}" for name, s in result["stage_seconds"].items())
    return (f"| {result['machine']['date']} | {result['machine']['cpu']} | "
            f"{result['total_minutes']:.1f} | {stages} | {scores('greedy')} | {scores('lm')} | "
            f"`{result['command']}` |")  # fmt: skip


def main() -> int:
    args = parse_args()
    measured_on = machine()  # the date the run started and the load before it
    work, data = args.work_dir.resolve(), args.work_dir.resolve() / "data"
    an4 = build_an4(data, args.train_data, args.train_minutes_audio, args.test_utterances)
    fresh = not (work / "manifests").exists()
    command = [sys.executable, str(RECIPE), "--work-dir", str(work), "--data-dir", str(data),
               *args.overrides]  # fmt: skip
    seconds = time_stages(command, recipe_stages())
    total = sum(seconds.values()) / 60
    result = {
        "machine": measured_on,
        "stage_seconds": seconds,
        "total_minutes": round(total, 2),
        "within_30_min": total <= BUDGET_MINUTES,
        "fresh_work_dir": fresh,  # False: some stages reused earlier outputs
        "command": shlex.join(["python", "bench/an4_standin.py", *sys.argv[1:]]),
        "recipe_command": shlex.join(command),
        "corpus": corpus_sizes(an4),
        "results": json.loads((work / "exp" / "RESULTS.json").read_text()),
    }
    write_json(work / "standin.json", result)
    print(table_row(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
