"""Progress of long jobs: the columns of every bar, and `progress`, the one helper for a job.

`progress(total, label, unit)` shows a rich bar on a terminal and, where stderr is a log file or
a pipe (no terminal to redraw), a plain line every ~10 s or every 10% of the work, each with
done/total, the rate and the time left; the same job reads well in both.

Kept apart from `asr.training.progress`, which imports Lightning, so that making a corpus or
transcribing does not pay for importing it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Advance = Callable[[float], None]


def stage_columns(label: str, unit: str | None = None) -> tuple[ProgressColumn, ...]:
    """label, bar, done/total [unit], elapsed, "eta" and the time remaining."""
    units = (TextColumn(unit),) if unit else ()
    return (TextColumn(label), BarColumn(), MofNCompleteColumn(), *units, TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn())  # fmt: skip


class RateColumn(ProgressColumn):
    """The rate of a task: "12.3 utterances/s"."""

    def __init__(self, unit: str = "") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.3g} {self.unit}/s".replace(" /", "/"))


@contextmanager
def progress(
    total: float,
    label: str,
    unit: str = "",
    *,
    show: bool = True,
    stream: TextIO | None = None,
    every_seconds: float = 10.0,
) -> Iterator[Advance]:
    """A progress display for `total` units of work; yields `advance(n)`, to call as n more are
    done. On a terminal (`stream`, default stderr, is a TTY): a rich bar with done/total, the
    rate, elapsed time and ETA. Elsewhere: a line when `every_seconds` have passed or another
    tenth of `total` is done since the last one (checked at each `advance`), and one at the end:

        packing: 40/120 utterances (33%), 3.1 utterances/s, eta 0:00:26
        packing: 120/120 utterances (100%) in 0:00:38, 3.2 utterances/s

    `show=False`: nothing at all (`advance` still may be called)."""
    stream = stream or sys.stderr
    if not show:
        yield lambda n=1: None
    elif stream.isatty():
        with Progress(*stage_columns(label, unit), RateColumn(unit),
                      console=Console(file=stream)) as bar:  # fmt: skip
            task = bar.add_task(label, total=total)
            yield lambda n=1: bar.advance(task, n)
    else:
        lines = _Lines(total, label, unit, stream, every_seconds)
        yield lines.advance
        lines.finish()


class _Lines:
    """The plain-line display of `progress` (see there)."""

    def __init__(self, total: float, label: str, unit: str, stream: TextIO, every: float) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream, self.every = stream, every
        self.done = 0.0
        self.began = self.shown_at = time.monotonic()
        self.next_tenth = 1

    def advance(self, n: float = 1) -> None:
        self.done += n
        now = time.monotonic()
        tenth = int(10 * self.done / self.total) if self.total > 0 else 0
        if now - self.shown_at >= self.every or tenth >= self.next_tenth:
            self.shown_at, self.next_tenth = now, tenth + 1
            if self.done < self.total:  # the last line says the rest
                rate = self.done / max(now - self.began, 1e-9)
                eta = _clock((self.total - self.done) / rate) if rate > 0 else "?"
                self._print(f"{self._count()}, {self._rate(rate)}, eta {eta}")

    def finish(self) -> None:
        seconds = time.monotonic() - self.began
        self._print(f"{self._count()} in {_clock(seconds)}, "
                    f"{self._rate(self.done / max(seconds, 1e-9))}")  # fmt: skip

    def _count(self) -> str:
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total > 0 else ""
        return f"{self.done:g}/{self.total:g}{f' {self.unit}' if self.unit else ''}{share}"

    def _rate(self, rate: float) -> str:
        return f"{rate:.3g} {self.unit}/s" if self.unit else f"{rate:.3g}/s"

    def _print(self, text: str) -> None:
        print(f"{self.label}: {text}", file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
