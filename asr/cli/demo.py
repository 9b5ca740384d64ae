"""`asr demo`: the built-in demo (`asr.demo.run_demo`) from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from asr.demo import CONFIG, QUICK_OVERRIDES, run_demo


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr demo`."""
    parser.add_argument("--work-dir", default="demo", help="where the corpus, model, reports go")
    parser.add_argument("--quick", action="store_true", help="tiny corpus, few steps (tests)")
    parser.add_argument("--seed", type=int, default=0, help="corpus and training seed")
    parser.add_argument("--no-lm", action="store_true", help="greedy decoding only")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value changes to demo.yaml")


def demo_command(args: argparse.Namespace) -> int:
    """Check the work folder and the config overrides (what training will be given), then run
    the demo: a bad value fails in a second, not after synthesizing the corpus."""
    from asr.config import load_config
    from asr.training.checks import check_training_config

    work_dir = Path(args.work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise ValueError(f"--work-dir {work_dir} exists and is not a folder")
    quick = QUICK_OVERRIDES if args.quick else ()
    check_training_config(load_config(CONFIG, [*quick, *args.overrides]))
    run_demo(args.work_dir, quick=args.quick, seed=args.seed, overrides=args.overrides,
             lm=not args.no_lm)  # fmt: skip
    return 0
