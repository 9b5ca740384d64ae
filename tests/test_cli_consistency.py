"""One name per thing across the commands: `--device` is the torch device everywhere (the same
values, the same one-line refusal), `--output` is a file and `--output-dir` a folder, `--workers`
is `asr serve`'s model workers and `--processes` the processes of `asr pack` and `make-corpus`;
renamed flags still work and warn; long jobs show progress as plain lines in a log."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import soundfile

import asr.bars
from asr.bars import progress
from asr.cli import build_parser, main
from asr.data.manifest import Utterance, write_manifest

# Each value and whether --device takes it.
DEVICES = {"auto": True, "cpu": True, "cuda": True, "cuda:0": True, "cuda:12": True,
           "gpu": False, "tpu": False, "CUDA": False, "cuda:": False, "cuda:x": False,
           "mps": False, "": False}  # fmt: skip


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of `parser` that --help shows -> its action."""
    return {s: a for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def with_device() -> list[str]:
    return [name for name, p in commands().items() if "--device" in options(p)]


def test_the_commands_that_load_a_model_take_device():
    assert {"transcribe", "serve", "listen"} <= set(with_device())


@pytest.mark.parametrize("command", with_device())
def test_every_device_flag_takes_the_same_values_with_the_same_help(command):
    action = options(commands()[command])["--device"]
    reference = options(commands()["transcribe"])["--device"]
    accepted = {}
    for value in DEVICES:
        try:
            accepted[value] = action.type(value) == value
        except argparse.ArgumentTypeError:
            accepted[value] = False
    assert accepted == DEVICES
    assert (action.default, action.metavar, action.help) == (
        "auto", reference.metavar, reference.help)  # fmt: skip


@pytest.mark.parametrize("command", with_device())
def test_device_gpu_is_refused_in_one_line(command, capsys):
    assert main([command, "--device", "gpu"]) == 2  # refused while parsing, before any work
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "asr: error: argument --device: expected auto, cpu, cuda or cuda:N, got 'gpu'"
    ), err


def test_output_is_a_file_and_output_dir_a_folder_in_every_command():
    seen = {}
    for name, parser in commands().items():
        for action in parser._actions:
            if "--output" in action.option_strings:
                assert action.metavar == "FILE", (name, action.metavar)
                seen[name] = "--output"
            if action.dest == "output_dir":
                assert (action.metavar or "OUTPUT_DIR") == "OUTPUT_DIR", (name, action.metavar)
                seen[name] = "--output-dir"
    assert seen == {"transcribe": "--output-dir", "evaluate": "--output-dir",
                    "pack": "--output-dir", "make-corpus": "--output-dir", "export": "--output",
                    "train-tokenizer": "--output", "import-nemo": "--output"}  # fmt: skip


# Other names of things that have one: each command says --device, --output-dir, --processes...
SYNONYMS = {"--gpu", "--gpus", "--cuda", "--out", "--outdir", "--out-dir", "--output-folder",
            "--num-workers", "--jobs", "--nj", "--model-path", "--checkpoint-path"}  # fmt: skip


def test_no_command_names_a_thing_by_another_name():
    for name, parser in commands().items():
        assert not SYNONYMS & set(options(parser)), name


def test_workers_are_model_workers_and_processes_are_processes():
    shown = {name: set(options(parser)) for name, parser in commands().items()}
    assert "--workers" in shown["serve"] and "--processes" not in shown["serve"]
    for name in ("pack", "make-corpus"):
        assert "--processes" in shown[name] and "--workers" not in shown[name], name


def test_listen_takes_the_microphone_as_input_device_and_the_torch_device_as_device():
    args = build_parser().parse_args(["listen", "--model", "m.pt", "--input-device", "2",
                                      "--device", "cuda:1"])  # fmt: skip
    assert (args.input_device, args.device) == ("2", "cuda:1")


@pytest.mark.parametrize(
    "argv, renamed",
    [
        (["pack", "--manifest", "m.jsonl", "--output", "o", "--workers", "3"],
         {"output_dir": "o", "processes": 3}),
        (["make-corpus", "c", "--workers", "4"], {"processes": 4}),
    ],
)  # fmt: skip
def test_renamed_flags_still_work_warn_and_are_hidden(argv, renamed, capsys):
    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in renamed} == renamed
    warnings = capsys.readouterr().err.splitlines()
    news = {"output_dir": "--output-dir", "processes": "--processes"}
    assert warnings == [
        f"asr: warning: {old} is deprecated and will be removed; use {news[dest]}"
        for old, dest in zip([a for a in argv if a in ("--output", "--workers")], renamed)
    ]
    help_text = commands()[argv[0]].format_help()
    assert "--workers" not in help_text and "--output " not in help_text


def tiny_manifest(folder) -> str:
    utts = []
    for i in range(3):
        path = folder / f"{i}.wav"
        wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        soundfile.write(path, wave.astype(np.float32), 16000)
        utts.append(Utterance(str(i), str(path), "a", 1.0))
    write_manifest(utts, folder / "m.jsonl")
    return str(folder / "m.jsonl")


def test_pack_by_its_old_flags_packs_and_shows_progress_lines_in_a_log(tmp_path, capsys):
    argv = ["pack", "--manifest", tiny_manifest(tmp_path), "--output", str(tmp_path / "p"),
            "--workers", "1", "--shard-size", "40KB"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "p" / "index.json").is_file()
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("asr: warning:") for line in err) == 2
    # 3 shards of one utterance: a line at each third, the last with the time taken
    progress_lines = [line for line in err if line.startswith("packing train: ")]
    assert [line.split(",")[0] for line in progress_lines[:2]] == [
        "packing train: 1/3 utterances (33%)", "packing train: 2/3 utterances (67%)"]  # fmt: skip
    assert "utterances/s, eta " in progress_lines[0]
    assert len(progress_lines) == 3
    assert progress_lines[2].startswith("packing train: 3/3 utterances (100%) in 0:00:")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_off_a_terminal_prints_a_line_each_tenth_with_rate_and_eta(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(asr.bars.time, "monotonic", clock)
    log = io.StringIO()  # not a TTY, as a log file or a pipe
    with progress(20, "packing", "utterances", stream=log) as advance:
        for _ in range(20):
            clock.now += 0.5
            advance(1)
    lines = log.getvalue().splitlines()
    assert lines[0] == "packing: 2/20 utterances (10%), 2 utterances/s, eta 0:00:09"
    assert lines[4] == "packing: 10/20 utterances (50%), 2 utterances/s, eta 0:00:05"
    assert len(lines) == 10  # 9 tenths, then the end
    assert lines[-1] == "packing: 20/20 utterances (100%) in 0:00:10, 2 utterances/s"


def test_progress_off_a_terminal_prints_a_line_every_ten_seconds(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(asr.bars.time, "monotonic", clock)
    log = io.StringIO()
    with progress(1000, "transcribing", stream=log) as advance:
        for _ in range(8):
            clock.now += 3.0
            advance(1)
    assert log.getvalue().splitlines() == [
        "transcribing: 4/1000 (0%), 0.333/s, eta 0:49:48",  # 12 s after the start
        "transcribing: 8/1000 (1%), 0.333/s, eta 0:49:36",  # at 24 s
        "transcribing: 8/1000 (1%) in 0:00:24, 0.333/s",
    ]


def test_progress_on_a_terminal_is_a_bar_and_show_false_prints_nothing():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with progress(4, "packing", "utterances", stream=screen) as advance:
        for _ in range(4):
            advance(1)
    assert "packing" in screen.getvalue() and "4/4" in screen.getvalue()
    quiet = io.StringIO()
    with progress(4, "packing", stream=quiet, show=False) as advance:
        advance(4)
    assert quiet.getvalue() == ""
