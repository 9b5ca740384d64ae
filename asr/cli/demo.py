"""`asr demo`: the built-in demo (`asr.demo.run_demo`) from the command line."""

from __future__ import annotations

import argparse

from asr.demo import run_demo


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr demo`."""
    parser.add_argument("--work-dir", default="demo", help="where the corpus, model, reports go")
    parser.add_argument("--quick", action="store_true", help="tiny corpus, few steps (tests)")
    parser.add_argument("--seed", type=int, default=0, help="corpus and training seed")
    parser.add_argument("--no-lm", action="store_true", help="greedy decoding only")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value changes to demo.yaml")


def demo_command(args: argparse.Namespace) -> int:
    run_demo(args.work_dir, quick=args.quick, seed=args.seed, overrides=args.overrides,
             lm=not args.no_lm)  # fmt: skip
    return 0
