"""The columns of every progress bar the toolkit shows (corpus synthesis, training, evaluation).

Kept apart from `asr.training.progress`, which imports Lightning, so that making a corpus or transcribing
does not pay for importing it.
"""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def stage_columns(label: str, unit: str | None = None) -> tuple[ProgressColumn, ...]:
    """label, bar, done/total [unit], elapsed, "eta" and the time remaining."""
    units = (TextColumn(unit),) if unit else ()
    return (TextColumn(label), BarColumn(), MofNCompleteColumn(), *units, TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn())  # fmt: skip
