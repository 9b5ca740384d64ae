"""`asr import-nemo`: an NVIDIA NeMo Conformer-CTC `.nemo` file -> a model bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def add_import_nemo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr import-nemo`."""
    parser.description = (
        "Convert a NeMo Conformer-CTC checkpoint (e.g. stt_en_conformer_ctc_small.nemo) into a "
        "model.pt that asr transcribe, asr evaluate, asr serve and fine-tuning (init_from) use "
        "as is. The archive is read without extracting it and no pickled code runs."
    )
    parser.add_argument("nemo", help="the .nemo file")
    parser.add_argument("--output", required=True, metavar="FILE", help="the model.pt to write")
    parser.add_argument("--train-config", metavar="YAML",
                        help="also write a fine-tuning config: init_from the new model.pt, its "
                        "encoder and front end; add data.train_manifest and data.val_manifest "
                        "and run asr train --config YAML")  # fmt: skip


def import_nemo_command(args: argparse.Namespace) -> int:
    from asr.config import to_dict
    from asr.interop.nemo import import_nemo

    output = Path(args.output)
    if output.suffix == ".nemo":
        raise ValueError(f"--output {output} would overwrite a .nemo file; name a model.pt")
    bundle = import_nemo(args.nemo, output)
    config = bundle.model.config
    print(
        f"asr import-nemo: {args.nemo} -> {output}: {bundle.info['nemo_model']}, "
        f"{config.num_layers} blocks of width {config.d_model}, {bundle.info['parameters']:,} "
        f"parameters, {bundle.tokenizer.kind} tokenizer of {bundle.tokenizer.vocab_size - 1} "
        f"pieces",
        file=sys.stderr,
    )
    if args.train_config:
        finetune = {
            "exp_dir": str(output.with_suffix("")) + "-finetune",
            "init_from": str(output),
            "encoder": to_dict(config),
            "features": to_dict(bundle.frontend.config),
            "data": {"train_manifest": None, "val_manifest": None},
            "optim": {"lr": 1e-4, "warmup_steps": 200, "schedule": "cosine",
                      "encoder_lr_scale": 0.5},
            "trainer": {"max_steps": 2000, "val_every_n_steps": 200},
        }  # fmt: skip
        Path(args.train_config).write_text(yaml.safe_dump(finetune, sort_keys=False))
        print(f"asr import-nemo: fine-tuning config {args.train_config} (set its data manifests)",
              file=sys.stderr)  # fmt: skip
    return 0
