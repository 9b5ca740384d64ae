"""`asr push-to-hub`: a model bundle -> a Hugging Face Hub model repository (model.pt + card)."""

from __future__ import annotations

import argparse


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr push-to-hub`."""
    parser.description = (
        "Upload a model bundle to a Hugging Face Hub model repository as model.pt, with a "
        "model card (README.md) made from the bundle, in one commit; the repository is created "
        "when missing. The token is --token, else HF_TOKEN, else the one `hf auth login` saved. "
        "Load it back anywhere with --model hf://OWNER/NAME."
    )
    parser.add_argument("model", metavar="MODEL",
                        help="the model bundle (model.pt) or a shipped model's name")  # fmt: skip
    parser.add_argument("repo", metavar="OWNER/NAME", help="the model repository")
    parser.add_argument("--private", action="store_true",
                        help="create the repository private (an existing one keeps its visibility)")  # fmt: skip
    parser.add_argument("--token", help="a Hugging Face token with write access")
    parser.add_argument("--revision", help="the branch to commit to (created when missing; default main)")  # fmt: skip


def push_command(args: argparse.Namespace) -> int:
    from asr.interop.hf_hub import push_to_hub

    url = push_to_hub(
        args.model, args.repo, private=args.private, token=args.token, revision=args.revision
    )
    print(url)
    return 0
