"""What every recipe's `run.py` shares: numbered stages run from `--stage` to `--stop-stage`,
`asr` commands printed and run in-process, and the test that decides whether a stage's output
must be made again.

A recipe (recipes/<corpus>/run.py) lists its stages as (name, function) pairs; `run_stages`
checks the range, prints a header per stage and runs them in order, with the `asr` loggers at
INFO so each stage's own messages show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path


def run_stages(stages: Sequence[tuple[str, Callable[[], object]]], first: int, last: int) -> int:
    """Run stages[first - 1 : last] (numbered from 1) in order; 0 when all of them finished."""
    if not 1 <= first <= last <= len(stages):
        raise SystemExit(f"need 1 <= --stage <= --stop-stage <= {len(stages)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asr").setLevel(logging.INFO)
    for number in range(first, last + 1):
        name, stage = stages[number - 1]
        print(f"\n== stage {number}: {name}", flush=True)
        stage()
    return 0


def run_asr(command: list[str]) -> None:
    """One `asr` command, printed first (so a run can be replayed by hand), run in this process."""
    from asr.cli import main

    print("asr " + " ".join(command), flush=True)
    if main(command) != 0:
        raise SystemExit(f"failed: asr {' '.join(command)}")


def up_to_date(output: Path, source: Path) -> bool:
    """Whether `output` exists and was written after `source` (e.g. a WER summary and its model)."""
    return output.is_file() and output.stat().st_mtime >= source.stat().st_mtime
