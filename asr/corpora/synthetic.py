"""The built-in demo corpus: sentences from a 1300-word grammar, spoken by eSpeak NG voices.

`make_demo_corpus(out_dir, CorpusConfig())` writes, with no download and no root,

    out_dir/corpus.json                      generation settings, voices per split, counts
    out_dir/{train,val,test}.jsonl           {"audio", "text", "duration", "speaker"} per line
    out_dir/audio/{split}/{split}-00000.wav  16 kHz mono 16-bit PCM

A voice is (accent, variant, base pitch, pitch range, speaking rate), e.g. "en-gb-scotland+f2"
at pitch 63; each utterance jitters rate and pitch. The variants (the timbres) are split
disjointly, so test and validation speakers are never heard in training, and test sentences
never occur in train or validation. Background noise (white, pink, brown or babble of other
voices of the same split) is mixed in at a random SNR with probability `noise_prob`.

Synthesis goes through libespeak-ng from the `espeakng-loader` wheel (ctypes), or else the
`espeak-ng` program on PATH. The word lists and the grammar live in `asr.corpora.sentences`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from rich.progress import Progress

from asr.bars import stage_columns
from asr.corpora.espeak import ESPEAK_SAMPLE_RATE, Speech, Synthesizer, find_synthesizer
from asr.corpora.sentences import generate_sentences, vocabulary

__all__ = [
    "CorpusConfig",
    "Synthesizer",
    "find_synthesizer",
    "generate_sentences",
    "make_demo_corpus",
    "vocabulary",
]

SAMPLE_RATE = 16000
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
NOISE_KINDS = ("white", "pink", "brown", "babble")
ACCENTS = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)  # fmt: skip
# Human-sounding variants of espeak-ng-data/voices/!v. Left out: whisper, whisperf and caleb
# (unvoiced), the robots and heavy-echo voices (robosoft*, UniRobot, RicishayMax*, announcer,
# anikaRobot, Demonic, Tweaky), and zac (pitch above 240 Hz).
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "croak", "grandpa", "Alex", "Andy", "Denis",
    "Gene", "Jacky", "Lee", "Mario", "Mike", "antonio", "boris", "ed", "gustave", "iven3",
    "marcelo", "max", "michel", "paul", "quincy", "robert", "travis", "victor", "klatt", "klatt2",
    "klatt3", "klatt4", "edward", "david", "adam", "f1", "f2", "f3", "f4", "f5", "Andrea",
    "Annie", "aunty", "belinda", "grandma", "linda", "shelby", "steph", "anika",
)  # fmt: skip


@dataclass(frozen=True)
class CorpusConfig:
    """Size, speakers and noise of the demo corpus; `num_workers` does not change the output."""

    num_train: int = 4000
    num_val: int = 200
    num_test: int = 200
    # Split into train/val/test voices disjointly. 400 uses nearly every (accent, variant) pair:
    # 300 training voices instead of 36 lowered the test greedy CER from 9.69% to 8.52% (same
    # sentences and steps; BENCHMARKS.md), and 60 test voices make the test score steadier.
    num_voices: int = 400
    test_voice_fraction: float = 0.15
    val_voice_fraction: float = 0.1
    noise_prob: float = 0.0  # probability of mixing background noise into an utterance
    noise_snr_db: tuple[float, float] = (15.0, 30.0)
    seed: int = 0
    num_workers: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_snr_db", tuple(float(x) for x in self.noise_snr_db))
        if self.num_train < 1 or self.num_val < 0 or self.num_test < 0:
            raise ValueError(f"corpus sizes must be num_train >= 1, num_val/num_test >= 0: {self}")
        for name in ("test_voice_fraction", "val_voice_fraction"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")
        if self.num_voices < 3 or self.num_voices > len(VARIANTS) * len(ACCENTS):
            raise ValueError(f"num_voices must be in [3, {len(VARIANTS) * len(ACCENTS)}]")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")
        low, high = self.noise_snr_db
        if len(self.noise_snr_db) != 2 or low > high:
            raise ValueError(f"noise_snr_db must be (low, high) with low <= high: {low, high}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")


@dataclass(frozen=True)
class Voice:
    """One corpus speaker: an eSpeak NG accent + variant at a base pitch, range and rate."""

    accent: str
    variant: str
    pitch: int  # eSpeak pitch 0-99 (within the variant's own base frequency)
    pitch_range: int  # eSpeak intonation range 0-99 (0 = monotone)
    rate: int  # words per minute

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"

    @property
    def id(self) -> str:
        return f"{self.name}-p{self.pitch}-r{self.pitch_range}-s{self.rate}"


@dataclass(frozen=True)
class _Job:
    """Everything needed to render one file, drawn up front so workers never share a RNG."""

    path: str
    speaker: str
    speech: Speech
    level_db: float  # RMS of the speech, dBFS
    pad_s: tuple[float, float]  # silence before and after
    noise: str | None
    snr_db: float
    babble: tuple[Speech, ...]


def _split_counts(total: int, config: CorpusConfig) -> dict[str, int]:
    test = max(1, round(total * config.test_voice_fraction))
    val = max(1, round(total * config.val_voice_fraction))
    if total - test - val < 1:
        raise ValueError(f"{total} is too few to give train, val and test their own share")
    return {"train": total - test - val, "val": val, "test": test}


def make_voices(config: CorpusConfig) -> dict[str, list[Voice]]:
    """The voices of each split; no variant (timbre) is shared between splits."""
    rng = random.Random(f"voices-{config.seed}")
    variants = list(VARIANTS)
    rng.shuffle(variants)
    variant_counts = _split_counts(len(variants), config)
    pools = {"test": variants[: variant_counts["test"]]}
    pools["val"] = variants[variant_counts["test"] : variant_counts["test"] + variant_counts["val"]]
    pools["train"] = variants[variant_counts["test"] + variant_counts["val"] :]
    voices: dict[str, list[Voice]] = {}
    for split, count in _split_counts(config.num_voices, config).items():
        accents = {v: rng.sample(ACCENTS, len(ACCENTS)) for v in pools[split]}
        combos = [(accents[v][k], v) for k in range(len(ACCENTS)) for v in pools[split]]
        if count > len(combos):
            raise ValueError(f"num_voices={config.num_voices} is too many for {split}'s variants")
        voices[split] = [
            Voice(accent, variant, rng.randint(20, 80), rng.randint(25, 85), rng.randint(145, 200))
            for accent, variant in combos[:count]
        ]
    return voices


def _speech(voice: Voice, text: str, rng: random.Random) -> Speech:
    rate = round(voice.rate * rng.uniform(0.9, 1.1))
    pitch = min(99, max(0, voice.pitch + rng.randint(-6, 6)))
    return Speech(voice.name, text, rate, pitch, voice.pitch_range, rng.randrange(2**31))


def _plan(config: CorpusConfig, voices: dict[str, list[Voice]]) -> dict[str, list[_Job]]:
    rng = random.Random(config.seed)
    sizes = {"test": config.num_test, "val": config.num_val, "train": config.num_train}
    texts: dict[str, list[str]] = {}
    for split in ("test", "val", "train"):  # test first: the others exclude its sentences
        taken = [s for other in texts.values() for s in other]
        texts[split] = generate_sentences(sizes[split], rng, exclude=taken)
    jobs: dict[str, list[_Job]] = {}
    for split in SPLITS:
        jobs[split] = []
        for i, text in enumerate(texts[split]):
            voice = voices[split][i % len(voices[split])]
            noisy = rng.random() < config.noise_prob
            noise = rng.choice(NOISE_KINDS) if noisy else None
            babble = tuple(
                _speech(rng.choice(voices[split]), s, rng)
                for s in (generate_sentences(3, rng) if noise == "babble" else [])
            )
            jobs[split].append(
                _Job(
                    path=f"audio/{split}/{split}-{i:05d}.wav",
                    speaker=voice.id,
                    speech=_speech(voice, text, rng),
                    level_db=rng.uniform(-32.0, -22.0),
                    pad_s=(rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)),
                    noise=noise,
                    snr_db=rng.uniform(*config.noise_snr_db),
                    babble=babble,
                )
            )
    return jobs


# --- rendering (runs in worker processes) -------------------------------------------------

_WORKER: dict = {}


def _init_worker(synthesizer: Synthesizer, root: str) -> None:
    # One thread: resampling a few seconds takes 1 ms, and with threads on a busy machine 50.
    torch.set_num_threads(1)
    _WORKER["backend"] = synthesizer.open()
    _WORKER["resample"] = torchaudio.transforms.Resample(ESPEAK_SAMPLE_RATE, SAMPLE_RATE)
    _WORKER["root"] = Path(root)


def _speak(speech: Speech) -> np.ndarray:
    """(T,) float32 at 16 kHz."""
    pcm = _WORKER["backend"].synthesize(speech)
    if pcm.size == 0:
        raise RuntimeError(f"eSpeak NG produced no audio for {speech}")
    wave = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    with torch.no_grad():
        return _WORKER["resample"](wave).numpy()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-9


def _noise(job: _Job, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(T,) noise of unit RMS."""
    if job.noise == "babble":
        noise = np.zeros(num_samples, np.float32)
        for talker in job.babble:
            voice = _speak(talker)
            voice = np.roll(np.resize(voice, num_samples), rng.integers(num_samples))
            noise += voice / _rms(voice)
        return noise / _rms(noise)
    white = rng.standard_normal(num_samples)
    if job.noise == "white":
        return (white / _rms(white)).astype(np.float32)
    exponent = {"pink": 1.0, "brown": 2.0}[job.noise]
    freqs = np.fft.rfftfreq(num_samples)
    freqs[0] = freqs[1] if num_samples > 1 else 1.0
    colored = np.fft.irfft(np.fft.rfft(white) / freqs ** (exponent / 2), n=num_samples)
    return (colored / _rms(colored)).astype(np.float32)


def _render(job: _Job) -> tuple[str, float]:
    """Synthesize, level, pad, add noise and write one file; returns (path, duration)."""
    rng = np.random.default_rng(job.speech.seed)
    speech = _speak(job.speech)
    speech *= 10 ** (job.level_db / 20) / _rms(speech)
    lead, trail = (round(s * SAMPLE_RATE) for s in job.pad_s)
    audio = np.pad(speech, (lead, trail))
    # A floor 55 dB under the speech: eSpeak's pauses are digital zeros, which no microphone makes.
    audio += rng.standard_normal(audio.size).astype(np.float32) * 10 ** ((job.level_db - 55) / 20)
    if job.noise is not None:
        noise = _noise(job, audio.size, rng)
        audio += noise * (10 ** (job.level_db / 20) / 10 ** (job.snr_db / 20))
    peak = float(np.abs(audio).max())
    if peak > 0.95:  # keep the level drawn for the speech unless it would clip
        audio *= 0.95 / peak
    path = _WORKER["root"] / job.path
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return job.path, audio.size / SAMPLE_RATE


# --- the corpus on disk ---------------------------------------------------------------------


def _config_key(config: CorpusConfig) -> dict:
    """The settings that determine the corpus, as JSON types (`num_workers` does not)."""
    settings = dataclasses.asdict(config)
    settings.pop("num_workers")
    return json.loads(json.dumps(settings))


def _existing_corpus(out_dir: Path, config: CorpusConfig) -> bool:
    """True when out_dir holds a corpus made with `config`; raises if it holds anything else."""
    meta_path = out_dir / "corpus.json"
    if not meta_path.is_file():
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} is not empty and has no corpus.json; "
                                  "choose another folder for the demo corpus")  # fmt: skip
        return False
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION or meta.get("config") != _config_key(config):
        raise FileExistsError(
            f"{out_dir} holds a demo corpus made with other settings ({meta.get('config')} in "
            f"{meta_path}); delete it or choose another folder for {config}"
        )
    missing = [s for s in SPLITS if not (out_dir / f"{s}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir} lacks {missing} manifests; delete it and run again")
    return True


def _render_all(jobs: list[_Job], synthesizer: Synthesizer, root: Path, config: CorpusConfig,
                progress: bool) -> dict[str, float]:  # fmt: skip
    """Render every job into root; returns {relative path: duration}."""
    durations: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        if config.num_workers == 1:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            _init_worker(synthesizer, str(root))
            results = map(_render, jobs)
        else:
            # fork, as torch's DataLoader does: spawned workers would re-import torch (seconds
            # each) and need a `__main__` guard in the caller's script.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            init = (synthesizer, str(root))
            pool = ProcessPoolExecutor(config.num_workers, context, _init_worker, init)
            stack.callback(pool.shutdown, cancel_futures=True)  # Ctrl-C stops at once
            results = pool.map(_render, jobs, chunksize=8)  # workers start before any thread
        bar = stack.enter_context(
            Progress(*stage_columns("synthesizing corpus"), disable=not progress)
        )
        task = bar.add_task("synthesize", total=len(jobs))
        for path, duration in results:
            durations[path] = duration
            bar.advance(task)
    return durations


def _write_manifest(path: Path, jobs: list[_Job], durations: dict[str, float]) -> None:
    with path.open("w") as f:
        for job in jobs:
            line = {"audio": job.path, "text": job.speech.text,
                    "duration": round(durations[job.path], 6), "speaker": job.speaker}  # fmt: skip
            f.write(json.dumps(line) + "\n")


def make_demo_corpus(
    out_dir: str | Path, config: CorpusConfig = CorpusConfig(), progress: bool = True
) -> Path:
    """Write audio + train/val/test JSONL manifests into out_dir; returns out_dir. Idempotent:
    if out_dir already holds a complete corpus made with the same config (check corpus.json),
    return at once. Files are written to `<out_dir>.partial` and renamed at the end, so an
    interrupted run never leaves a corpus that looks complete."""
    out_dir = Path(out_dir).resolve()
    if _existing_corpus(out_dir, config):
        return out_dir
    synthesizer = find_synthesizer()
    voices = make_voices(config)
    jobs = _plan(config, voices)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():  # left by an interrupted run
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    start = time.perf_counter()
    all_jobs = [job for split in SPLITS for job in jobs[split]]
    durations = _render_all(all_jobs, synthesizer, partial, config, progress)
    seconds = time.perf_counter() - start
    for split in SPLITS:
        _write_manifest(partial / f"{split}.jsonl", jobs[split], durations)
    audio_seconds = sum(durations.values())
    meta = {
        "format_version": FORMAT_VERSION,
        "config": _config_key(config),
        "num_workers": config.num_workers,
        "sample_rate": SAMPLE_RATE,
        "synthesizer": dataclasses.asdict(synthesizer),
        "voices": {split: [v.id for v in voices[split]] for split in SPLITS},
        "counts": {split: len(jobs[split]) for split in SPLITS},
        "hours": {s: round(sum(durations[j.path] for j in jobs[s]) / 3600, 3) for s in SPLITS},
        "noisy": {s: sum(j.noise is not None for j in jobs[s]) for s in SPLITS},
        "vocabulary_size": len(vocabulary()),
        "synthesis_seconds": round(seconds, 2),
        "utterances_per_second": round(len(all_jobs) / seconds, 1),
        "audio_seconds_per_second": round(audio_seconds / seconds, 1),
    }
    (partial / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
        out_dir.rmdir()  # empty: checked by _existing_corpus
    os.replace(partial, out_dir)
    return out_dir
