"""Parity of `asr import-nemo` against NVIDIA NeMo's own code, and a speed comparison.

One command runs both halves:

    python bench/nemo_parity.py --nemo-python /work/nemo-env/bin/python \
        --audio ../shared/data/librispeech-mini --output bench/results/nemo_parity.json

1. NeMo's half runs under `--nemo-python`, a separate environment with `nemo-toolkit[asr]`
   installed (never a dependency of this package). For each variant it trains a SentencePiece
   BPE tokenizer with NeMo's own `create_spt_model` on the librispeech-3h transcripts, builds an
   `EncDecCTCModelBPE` from a NeMo config with random weights (seeded; biases, u/v and batch norm
   statistics randomized too, so that no mapping error hides behind a zero), saves it as
   `.nemo`, and records for each test utterance (alone, batch of one, as NeMo's transcribe
   runs) the preprocessor's features, the log-probs and NeMo's greedy CTC transcript, plus the
   time of NeMo's forward pass over all utterances on 2 threads.
2. Our half (this interpreter) imports each `.nemo` with `asr.interop.nemo.import_nemo` and
   compares: features and log-probs (max abs difference over valid frames), frame argmax
   agreement, identical greedy transcripts, and the time of the same forward pass.

`--fixture DIR` also writes the tiny variant's `.nemo`, two utterances and NeMo's outputs for
them into DIR (tests/fixtures/nemo), which tests/test_nemo.py checks without NeMo installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# NeMo encoder settings of each variant; the rest is NeMo's conformer_ctc_bpe.yaml.
VARIANTS = {
    # the fixture: as small as a Conformer gets
    "tiny": dict(d_model=64, n_layers=2, n_heads=2, conv_kernel_size=15, vocab=48),
    # stt_en_conformer_ctc_small's encoder (13M parameters), untied and tied u/v biases
    "small": dict(d_model=176, n_layers=16, n_heads=4, conv_kernel_size=31, vocab=256),
    "small-tied": dict(d_model=176, n_layers=16, n_heads=4, conv_kernel_size=31, vocab=256,
                       untie_biases=False),
    # stt_en_conformer_ctc_medium's encoder (30M parameters)
    "medium": dict(d_model=256, n_layers=18, n_heads=4, conv_kernel_size=31, vocab=256),
}  # fmt: skip


def nemo_config(variant: dict, tokenizer_dir: str) -> dict:
    v = dict(variant)
    vocab = v.pop("vocab")
    del vocab  # the tokenizer decides the decoder's size
    encoder = {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": 80, "feat_out": -1, "subsampling": "striding", "subsampling_factor": 4,
        "subsampling_conv_channels": -1, "ff_expansion_factor": 4,
        "self_attention_model": "rel_pos", "att_context_size": [-1, -1], "xscaling": True,
        "untie_biases": True, "pos_emb_max_len": 5000, "conv_norm_type": "batch_norm",
        "conv_context_size": None, "dropout": 0.1, "dropout_pre_encoder": 0.1,
        "dropout_emb": 0.0, "dropout_att": 0.1,
    }  # fmt: skip
    encoder.update(v)
    return {
        "sample_rate": 16000,
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": 80,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 0.00001,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": encoder,
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": encoder["d_model"],
            "num_classes": -1,
            "vocabulary": [],
        },
        "optim": {"name": "adamw", "lr": 1e-3},
    }


def test_utterances(audio_root: Path, count: int) -> list[tuple[str, str, str]]:
    """(id, flac path, transcript) of the first `count` utterances, sorted by id."""
    rows = []
    for trans in sorted(audio_root.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            if line.strip():
                utt, text = line.split(" ", 1)
                flac = trans.parent / f"{utt}.flac"
                if flac.is_file():
                    rows.append((utt, str(flac), text.lower()))
    return sorted(rows)[:count]


# ------------------------------------------------------------------------------ NeMo's half
def nemo_side(args: argparse.Namespace) -> None:
    import soundfile
    import torch
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model
    from omegaconf import OmegaConf

    torch.set_num_threads(2)
    work = Path(args.work)
    texts = work / "train_text.txt"
    lines = []
    for trans in sorted(Path(args.train_text).rglob("*.trans.txt")):
        lines += [line.split(" ", 1)[1].lower() for line in trans.read_text().splitlines() if line]
    texts.write_text("\n".join(lines) + "\n")
    utts = json.loads(Path(args.utterance_list).read_text())
    results: dict = {"nemo_version": __import__("nemo").__version__, "variants": {}}
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        tok_dir = work / f"tokenizer-{name}"
        tok_dir.mkdir(parents=True, exist_ok=True)
        create_spt_model(str(texts), variant["vocab"], sample_size=-1, do_lower_case=True,
                         tokenizer_type="bpe", output_dir=str(tok_dir))  # fmt: skip
        torch.manual_seed(1234)
        model = EncDecCTCModelBPE(cfg=OmegaConf.create(nemo_config(variant, str(tok_dir))))
        with torch.no_grad():  # randomize what NeMo initializes to constants
            for key, tensor in model.state_dict().items():
                if key.endswith(("pos_bias_u", "pos_bias_v", ".bias")) and "featurizer" not in key:
                    tensor.copy_(torch.randn_like(tensor) * 0.1)
                elif key.endswith("running_mean"):
                    tensor.copy_(torch.randn_like(tensor) * 0.2)
                elif key.endswith("running_var"):
                    tensor.copy_(torch.rand_like(tensor) + 0.5)
        nemo_path = work / f"{name}.nemo"
        model.save_to(str(nemo_path))
        model.eval()
        model.preprocessor.featurizer.dither = 0.0  # as NeMo's transcribe() does
        model.preprocessor.featurizer.pad_to = 0
        per_utt = {}
        waves = {}
        for utt, flac, _ in utts:
            wave, _ = soundfile.read(flac, dtype="float32")
            waves[utt] = torch.from_numpy(wave)[None]
        with torch.inference_mode():
            for utt, _, _ in utts:
                wave = waves[utt]
                length = torch.tensor([wave.shape[1]])
                feats, feat_len = model.preprocessor(input_signal=wave, length=length)
                log_probs, enc_len, _ = model.forward(input_signal=wave, input_signal_length=length)
                hyps = model.decoding.ctc_decoder_predictions_tensor(
                    log_probs, decoder_lengths=enc_len, return_hypotheses=False
                )
                hyp = hyps[0] if isinstance(hyps, list) else hyps[0][0]
                text = hyp.text if hasattr(hyp, "text") else str(hyp)
                per_utt[utt] = {
                    "feats": feats[0, :, : int(feat_len[0])].T.contiguous(),  # (T, F)
                    "log_probs": log_probs[0, : int(enc_len[0])].contiguous(),  # (T', V+1)
                    "text": text,
                }
            timings = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                for utt, _, _ in utts:
                    wave = waves[utt]
                    model.forward(
                        input_signal=wave, input_signal_length=torch.tensor([wave.shape[1]])
                    )
                timings.append(time.perf_counter() - start)
        torch.save(per_utt, work / f"{name}.nemo-outputs.pt")
        results["variants"][name] = {
            "nemo": str(nemo_path),
            "outputs": str(work / f"{name}.nemo-outputs.pt"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "forward_seconds": timings,
        }
        print(f"nemo side: {name} done", file=sys.stderr)
    Path(args.nemo_result).write_text(json.dumps(results, indent=1))


# ------------------------------------------------------------------------------ our half
def compare(name: str, entry: dict, utts: list, rounds: int) -> dict:
    import torch

    from asr.audio import load_audio
    from asr.inference.decoding import greedy_decode
    from asr.interop.nemo import import_nemo

    torch.set_num_threads(2)
    bundle = import_nemo(entry["nemo"])
    expected = torch.load(entry["outputs"], weights_only=True)
    feat_diff = prob_diff = 0.0
    frames = agree = 0
    same_text = []
    waves = {utt: load_audio(flac, 16000) for utt, flac, _ in utts}
    with torch.inference_mode():
        for utt, _, _ in utts:
            wave = waves[utt][None]
            feats, feat_len = bundle.frontend(wave, torch.tensor([wave.shape[1]]))
            log_probs, out_len = bundle.model(feats, feat_len)
            theirs = expected[utt]
            t = int(feat_len[0])
            assert theirs["feats"].shape == (t, feats.shape[2]), (theirs["feats"].shape, t)
            feat_diff = max(feat_diff, (feats[0, :t] - theirs["feats"]).abs().max().item())
            mine = log_probs[0, : int(out_len[0])]
            # NeMo's blank is its last column, ours the first: compare in NeMo's order.
            mine_nemo_order = torch.cat([mine[:, 1:], mine[:, :1]], dim=1)
            assert mine_nemo_order.shape == theirs["log_probs"].shape
            prob_diff = max(prob_diff, (mine_nemo_order - theirs["log_probs"]).abs().max().item())
            frames += mine.shape[0]
            agree += int((mine_nemo_order.argmax(-1) == theirs["log_probs"].argmax(-1)).sum())
            ids = greedy_decode(log_probs, out_len)[0]
            same_text.append(bundle.tokenizer.decode(ids) == theirs["text"])
        timings = []
        for _ in range(rounds):
            start = time.perf_counter()
            for utt, _, _ in utts:
                wave = waves[utt][None]
                feats, feat_len = bundle.frontend(wave, torch.tensor([wave.shape[1]]))
                bundle.model(feats, feat_len)
            timings.append(time.perf_counter() - start)
    return {
        "parameters": sum(p.numel() for p in bundle.model.parameters()),
        "nemo_parameters": entry["parameters"],
        "max_abs_diff_features": feat_diff,
        "max_abs_diff_log_probs": prob_diff,
        "argmax_agreement": agree / max(frames, 1),
        "identical_transcripts": f"{sum(same_text)}/{len(same_text)}",
        "nemo_forward_seconds": min(entry["forward_seconds"]),
        "asr_forward_seconds": min(timings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nemo-python", default="/work/nemo-env/bin/python")
    parser.add_argument("--audio", default=str(ROOT.parent / "shared/data/librispeech-mini"))
    parser.add_argument("--train-text", default=str(ROOT.parent / "shared/data/librispeech-3h"))
    parser.add_argument("--utterances", type=int, default=20, help="test utterances (sorted ids)")
    parser.add_argument("--variants", default="tiny,small,small-tied,medium")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/nemo-parity")
    parser.add_argument("--output", help="JSON results")
    parser.add_argument("--fixture", help="write the tiny variant's fixture into this folder")
    parser.add_argument("--nemo-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nemo-result", help=argparse.SUPPRESS)
    parser.add_argument("--utterance-list", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nemo_side:
        nemo_side(args)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    utts = test_utterances(Path(args.audio), args.utterances)
    if not utts:
        sys.exit(f"no LibriSpeech utterances under {args.audio}")
    (work / "utterances.json").write_text(json.dumps(utts))
    nemo_result = work / "nemo_result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": ""}
    subprocess.run(
        [args.nemo_python, __file__, "--nemo-side", "--work", str(work), "--variants",
         args.variants, "--utterance-list", str(work / "utterances.json"), "--train-text",
         args.train_text, "--rounds", str(args.rounds), "--nemo-result", str(nemo_result)],
        check=True, env=env,
    )  # fmt: skip
    nemo = json.loads(nemo_result.read_text())
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": __import__("asr.training.hardware").training.hardware.cpu_model(),
        "threads": 2,
        "nemo_version": nemo["nemo_version"],
        "utterances": len(utts),
        "audio_seconds": round(sum(audio_seconds(f) for _, f, _ in utts), 1),
        "command": "python " + " ".join(sys.argv),
        "variants": {},
    }
    for name, entry in nemo["variants"].items():
        report["variants"][name] = compare(name, entry, utts, args.rounds)
        print(name, json.dumps(report["variants"][name]), file=sys.stderr)
    if args.fixture and "tiny" in nemo["variants"]:
        shortest = sorted(utts, key=lambda u: audio_seconds(u[1]))[:2]
        write_fixture(Path(args.fixture), nemo["variants"]["tiny"], shortest)
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


def write_fixture(folder: Path, entry: dict, utts: list) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(entry["nemo"], folder / "tiny.nemo")
    outputs = torch.load(entry["outputs"], weights_only=True)
    kept, lines = {}, []
    for utt, flac, text in utts:
        shutil.copy(flac, folder / f"{utt}.flac")
        kept[utt] = outputs[utt]
        lines.append(json.dumps({"audio": f"{utt}.flac", "text": text, "id": utt,
                                 "duration": round(audio_seconds(flac), 3)}))  # fmt: skip
    torch.save(kept, folder / "tiny.nemo-outputs.pt")
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "README.md").write_text(
        "# NeMo parity fixture\n\nMade by `python bench/nemo_parity.py --variants tiny "
        "--fixture tests/fixtures/nemo` with NVIDIA NeMo installed in a separate environment:\n"
        "`tiny.nemo` is a NeMo `EncDecCTCModelBPE` (Conformer, d_model 64, 2 layers, random "
        "weights), `tiny.nemo-outputs.pt` holds NeMo's own features, log-probs (blank last) and "
        "greedy transcripts for the two LibriSpeech utterances beside it (CC BY 4.0, from "
        "librispeech-mini; their reference transcripts in manifest.jsonl). tests/test_nemo.py checks `asr import-nemo` against them.\n"
    )


def audio_seconds(path: str) -> float:
    import soundfile

    return soundfile.info(path).duration


if __name__ == "__main__":
    main()
