"""How every command reports a user error: one line `asr: error: MESSAGE` on stderr, status 2.

A user error is a bad input: a missing or unreadable file, a bad option or config value, a model
that is not one, settings Lightning refuses. Their exceptions are listed in `user_errors`;
anything else is a bug and keeps its traceback. A message of several lines (a YAML parser's, a
tar reader's) is joined into one by `one_line`, never cut.
"""

from __future__ import annotations

import argparse
import sys

USER_ERROR = 2  # the exit status of every user error, as argparse's own


class UsageError(SystemExit):
    """argparse refused the command line (an unknown option, a value of the wrong type); its
    line is already printed. A `SystemExit`, as argparse's own, for callers of `parse_args`."""


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` that reports a bad command line like every other user error, in one
    line, instead of a usage block."""

    def error(self, message: str) -> None:  # argparse's hook; never returns
        report(f"{message} (see `{self.prog} --help`)")
        raise UsageError(USER_ERROR)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are user errors. Lightning's and training's are matched only once
    loaded: a command that never imported them cannot raise them, and importing Lightning to
    report a missing audio file would take seconds."""
    from asr.audio import AudioError
    from asr.checkpoint import BundleError
    from asr.extras import MissingExtraError

    found: list[type[BaseException]] = [
        AudioError,  # a ValueError, as are BundleError and the other user errors of the library
        BundleError,
        MissingExtraError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    ]
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None:  # bad Trainer settings, e.g. from a config's trainer section
        found.append(lightning.MisconfigurationException)
    system = sys.modules.get("asr.training.system")
    if system is not None:  # the loss stayed NaN: the learning rate, not the code
        found.append(system.NonFiniteLossError)
    return tuple(found)


def one_line(message: str) -> str:
    """`message` on one line: its lines stripped, blank ones and a parser's `^` markers dropped,
    joined by "; " (by a space after a line ending in ":", which introduces the next)."""
    lines = [line.strip() for line in message.splitlines()]
    out = ""
    for line in lines:
        if not line.strip("^ "):
            continue
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def describe(err: BaseException) -> str:
    """The one-line message of an exception: its text, else its type's name."""
    return one_line(str(err)) or type(err).__name__


def report(message: str) -> int:
    """Print `message` as one `asr: error:` line on stderr; returns the user-error status."""
    print(f"asr: error: {one_line(message)}", file=sys.stderr, flush=True)
    return USER_ERROR
