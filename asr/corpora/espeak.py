"""eSpeak NG speech synthesis for the demo corpus: libespeak-ng through ctypes (the library and
voice data of the `espeakng-loader` wheel, no root needed) or the `espeak-ng` program.

`find_synthesizer()` picks what works here; `Synthesizer.open().synthesize(Speech(...))` returns
(T,) int16 samples at `ESPEAK_SAMPLE_RATE`. The same request always gives the same samples,
whatever was synthesized before it (see `_Library.synthesize`).
"""

from __future__ import annotations

import _ctypes
import ctypes
import dataclasses
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ESPEAK_SAMPLE_RATE = 22050
_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8, _DONT_EXIT = 2, 1, 1, 0x8000
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER
_AMPLITUDE = 40  # eSpeak's 0-200 volume: at its default 100 some variants saturate inside
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class Speech:
    """One request to eSpeak NG: voice name ("en-us+m3"), text, words a minute, pitch and
    pitch range (0-99), and the seed of the voice's random noise (breathy variants)."""

    voice: str
    text: str
    rate: int
    pitch: int
    pitch_range: int
    seed: int


@dataclass(frozen=True)
class Synthesizer:
    """Where eSpeak NG is: kind "library" (libespeak-ng + its data folder) or "program"."""

    kind: str
    path: str
    data_path: str | None = None
    version: str = ""

    def open(self) -> _Library | _Program:
        return (
            _Library(self.path, self.data_path) if self.kind == "library" else _Program(self.path)
        )


def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    c = ctypes
    lib.espeak_Initialize.argtypes = [c.c_int, c.c_int, c.c_char_p, c.c_int]
    lib.espeak_Synth.argtypes = [c.c_char_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint, c.c_uint,
                                 c.c_void_p, c.c_void_p]  # fmt: skip
    lib.espeak_Info.restype = c.c_char_p
    return lib


class _Library:
    """libespeak-ng through ctypes; `synthesize` returns (T,) int16 samples at 22050 Hz."""

    def __init__(self, path: str, data_path: str | None) -> None:
        self.path, self.data_path = path, (data_path or "").encode()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as self

    def _collect(self, wav, num_samples: int, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = go on

    def synthesize(self, speech: Speech) -> np.ndarray:
        # libespeak-ng keeps synthesis state (pitch-flutter phase, filter memories) in static
        # variables, so a request would sound different depending on what was said before it.
        # Unloading and reloading the library resets them (about 3 ms): identical requests give
        # identical audio whatever the order and the number of workers.
        lib = _load(self.path)
        try:
            if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path, _DONT_EXIT) < 0:
                raise RuntimeError(f"libespeak-ng {self.path} found no data in {self.data_path}")
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(speech.voice.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {speech.voice!r} in {self.data_path}")
            lib.espeak_SetParameter(_RATE, speech.rate, 0)
            lib.espeak_SetParameter(_VOLUME, _AMPLITUDE, 0)
            lib.espeak_SetParameter(_PITCH, speech.pitch, 0)
            lib.espeak_SetParameter(_RANGE, speech.pitch_range, 0)
            if hasattr(lib, "espeak_ng_SetRandSeed"):  # breathy voices draw random noise
                lib.espeak_ng_SetRandSeed(ctypes.c_long(speech.seed))
            ctypes.CDLL(None).srand(ctypes.c_uint(speech.seed))
            self._chunks.clear()
            text = speech.text.encode()
            if lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None):
                raise RuntimeError(f"libespeak-ng failed on {speech}")
            lib.espeak_Synchronize()
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        finally:
            lib.espeak_Terminate()
            _unload(lib)

    def version(self) -> str:
        lib = _load(self.path)
        try:
            return lib.espeak_Info(None).decode()
        finally:
            _unload(lib)


def _unload(lib: ctypes.CDLL) -> None:
    _ctypes.dlclose(lib._handle)
    try:  # RTLD_NOLOAD succeeds only if another handle keeps the library (and its state) alive
        handle = _ctypes.dlopen(lib._name, os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return
    _ctypes.dlclose(handle)
    message = f"{lib._name} stays loaded elsewhere: its audio may depend on earlier requests"
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class _Program:
    """The `espeak-ng` program, one process per utterance (it cannot set the pitch range)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def synthesize(self, speech: Speech) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "speech.wav"
            args = [self.path, "-v", speech.voice, "-s", str(speech.rate), "-p", str(speech.pitch)]
            args += ["-a", str(_AMPLITUDE), "-w", str(wav), speech.text]
            done = subprocess.run(args, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
            pcm, sample_rate = sf.read(wav, dtype="int16")
        if sample_rate != ESPEAK_SAMPLE_RATE:
            raise RuntimeError(f"{self.path} wrote {sample_rate} Hz, expected {ESPEAK_SAMPLE_RATE}")
        return pcm

    def version(self) -> str:
        return subprocess.run([self.path, "--version"], capture_output=True, text=True).stdout


# Fixed sentences for listening to a model on eSpeak NG speech (the serving tests and load
# benchmark): written for it, not drawn from the demo corpus's grammar.
PROBE_SENTENCES = (
    "the old man walked slowly along the river",
    "she found a small green box under the table",
    "we will meet at the station after lunch",
    "the children played in the garden until dark",
    "a cold wind came down from the hills",
    "he wrote a long letter to his brother",
    "the market was busy on saturday morning",
    "please close the window before you leave",
)


def speak(texts: Iterable[str], pause_seconds: float = 0.4) -> np.ndarray:
    """eSpeak NG saying `texts` one after another (en-us at 160 words a minute, the i-th text in
    voice variant i), each followed by `pause_seconds` of silence: float32 in [-1, 1) at
    `ESPEAK_SAMPLE_RATE`. RuntimeError when no synthesizer works here."""
    synthesizer = find_synthesizer().open()
    silence = np.zeros(round(pause_seconds * ESPEAK_SAMPLE_RATE), np.float32)
    pieces = []
    for i, text in enumerate(texts):
        pcm = synthesizer.synthesize(Speech("en-us", text, 160, 50, 50, i))
        pieces += [pcm.astype(np.float32) / 32768, silence]
    return np.concatenate(pieces)


def find_synthesizer() -> Synthesizer:
    """libespeak-ng from the espeakng-loader wheel, else `espeak-ng` on PATH, else RuntimeError."""
    problems = []
    try:
        import espeakng_loader

        found = Synthesizer(
            "library", espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        )
        backend = found.open()
        backend.synthesize(Speech("en-us", "hello", 175, 50, 50, 0))
        return dataclasses.replace(found, version=backend.version().strip())
    except ImportError:
        problems.append("the Python package espeakng-loader is not installed")
    except (OSError, RuntimeError, ValueError) as err:
        problems.append(f"espeakng-loader does not work here ({err})")
    program = shutil.which("espeak-ng")
    if program is not None:
        return Synthesizer("program", program, None, _Program(program).version().strip())
    problems.append("there is no espeak-ng program on PATH")
    raise RuntimeError(
        "The demo corpus needs the eSpeak NG speech synthesizer, but "
        + "; ".join(problems)
        + ". Install one of them: `pip install espeakng-loader` (no root needed; it is in "
        "`pip install 'asr[demo]'`), or the program (`sudo apt-get install espeak-ng`, "
        "`brew install espeak-ng`)."
    )
