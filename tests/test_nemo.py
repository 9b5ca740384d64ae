"""`asr import-nemo` against NVIDIA NeMo's own outputs, bad archives, and fine-tuning.

tests/fixtures/nemo was made by bench/nemo_parity.py with NeMo installed (see its README):
a tiny NeMo Conformer-CTC with random weights, two real LibriSpeech utterances, and NeMo's
features, log-probs and greedy transcripts for them. NeMo itself is not needed here.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml

import asr
from asr.audio import load_audio
from asr.checkpoint import load_bundle
from asr.cli import main
from asr.config import load_config
from asr.inference.decoding import greedy_decode
from asr.interop.nemo import (
    CONFIG_MEMBER,
    WEIGHTS_MEMBER,
    NemoImportError,
    import_nemo,
    read_nemo,
)
from asr.interop.sources import open_bundle
from asr.model import ctc_loss
from asr.training.train import train

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nemo"
NEMO = FIXTURE / "tiny.nemo"


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURE / "tiny.nemo-outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def bundle():
    return import_nemo(NEMO)


def run_model(bundle, utt: str):
    wave = load_audio(FIXTURE / f"{utt}.flac", 16000)[None]
    with torch.inference_mode():
        feats, feat_len = bundle.frontend(wave, torch.tensor([wave.shape[1]]))
        log_probs, out_len = bundle.model(feats, feat_len)
    return feats[0], log_probs[0], out_len


def test_features_log_probs_and_transcripts_match_nemo(bundle, expected):
    assert len(expected) == 2
    for utt, theirs in expected.items():
        feats, log_probs, out_len = run_model(bundle, utt)
        assert feats.shape == theirs["feats"].shape
        # A log of a near-silent bin amplifies float32 rounding, which differs between CPUs
        # (1.2e-4 at one of 16240 values on an AMD EPYC): a loose bound on every value, a
        # tight one on the mean, which any real front-end difference would exceed.
        torch.testing.assert_close(feats, theirs["feats"], rtol=0, atol=1e-3)
        assert (feats - theirs["feats"]).abs().mean() < 1e-5
        # NeMo's blank is its last output, ours the first
        nemo_order = torch.cat([log_probs[:, 1:], log_probs[:, :1]], dim=1)
        torch.testing.assert_close(nemo_order, theirs["log_probs"], rtol=0, atol=1e-4)
        text = bundle.tokenizer.decode(greedy_decode(log_probs[None], out_len)[0])
        assert text == theirs["text"] and text  # random weights: NeMo's garbage, exactly


def test_the_cli_writes_a_bundle_that_transcribes_like_nemo(tmp_path, expected, capsys):
    out, config = tmp_path / "model.pt", tmp_path / "finetune.yaml"
    assert main(["import-nemo", str(NEMO), "--output", str(out),
                 "--train-config", str(config)]) == 0  # fmt: skip
    assert "EncDecCTCModelBPE" in capsys.readouterr().err
    loaded = load_bundle(out)
    assert loaded.info["source"] == "nemo"
    cfg = loaded.model.config
    assert (cfg.subsampling_padding, cfg.xscaling, cfg.shared_pos_bias) == (1, True, False)
    assert loaded.frontend.config.normalize == "per_feature" and loaded.frontend.config.center
    utt = sorted(expected)[0]
    assert main(["transcribe", "--model", str(out), str(FIXTURE / f"{utt}.flac")]) == 0
    assert capsys.readouterr().out.strip().endswith(expected[utt]["text"])
    written = yaml.safe_load(config.read_text())
    assert written["init_from"] == str(out) and written["encoder"]["xscaling"] is True
    assert load_config(config).encoder_config() == cfg  # the config describes the model


def test_the_tokenizer_keeps_nemo_ids_one_up(bundle):
    import sentencepiece as spm

    with tarfile.open(NEMO) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("tokenizer.model"))
        sp = spm.SentencePieceProcessor(model_proto=tar.extractfile(member).read())
    assert bundle.tokenizer.vocab_size == sp.get_piece_size() + 1
    text = "the quick brown fox jumps over a lazy dog"
    assert bundle.tokenizer.encode(text) == [i + 1 for i in sp.encode(text)]
    assert bundle.tokenizer.decode([i + 1 for i in sp.encode(text)]) == text


def rewrite(tmp_path: Path, change, name: str = "bad.nemo") -> Path:
    """A copy of the fixture with its members passed through change(name, bytes)."""
    out = tmp_path / name
    with tarfile.open(NEMO) as src, tarfile.open(out, "w") as dst:
        for member in (m for m in src.getmembers() if m.isfile()):
            data = src.extractfile(member).read()
            for new_name, new_data in change(member.name, data):
                info = tarfile.TarInfo(new_name)
                info.size = len(new_data)
                dst.addfile(info, io.BytesIO(new_data))
    return out


def with_config(edit):
    def change(name, data):
        if name.endswith("model_config.yaml"):
            cfg = yaml.safe_load(data)
            edit(cfg)
            data = yaml.safe_dump(cfg).encode()
        return [(name, data)]

    return change


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda n, d: [(n, d), ("../../escape.txt", b"x")], r"refused member '\.\./\.\./escape"),
        (
            lambda n, d: [(n, pickle.dumps({"w": RunsCode()}) if n.endswith(".ckpt") else d)],
            r"refusing to load .*pickled code",
        ),
        (
            with_config(lambda c: c["encoder"].update(subsampling="dw_striding")),
            r"unsupported subsampling 'dw_striding'.*FastConformer",
        ),
        (
            with_config(
                lambda c: c.update(target="nemo.collections.asr.models.EncDecHybridRNNTCTCBPEModel")
            ),
            r"unsupported NeMo model EncDecHybridRNNTCTCBPEModel \(a hybrid",
        ),
        (
            with_config(lambda c: c["encoder"].update(att_context_size=[70, 13])),
            r"unsupported att_context_size",
        ),
        (
            with_config(lambda c: c["preprocessor"].update(normalize="all_features")),
            r"unsupported feature normalization 'all_features'",
        ),
    ],
    ids=["path-escape", "pickle-code", "fastconformer", "hybrid", "limited-context", "norm"],
)
def test_bad_archives_fail_with_one_line_and_write_nothing(tmp_path, capsys, change, message):
    bad = rewrite(tmp_path, change)
    out = tmp_path / "model.pt"
    with pytest.raises(NemoImportError, match=message):
        import_nemo(bad, out)
    assert main(["import-nemo", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr()
    assert "this must never run" not in err.out + err.err
    assert err.err.count("\n") == 1 and err.err.startswith("asr: error: ")
    assert not out.exists() and not (tmp_path / "escape.txt").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_truncated_or_foreign_file_is_named(tmp_path, capsys):
    truncated = tmp_path / "cut.nemo"
    truncated.write_bytes(NEMO.read_bytes()[: NEMO.stat().st_size // 2])
    for path, message in [(truncated, "not a readable .nemo archive"),
                          (FIXTURE / "manifest.jsonl", "not a readable .nemo archive"),
                          (tmp_path / "missing.nemo", "not found")]:  # fmt: skip
        assert main(["import-nemo", str(path), "--output", str(tmp_path / "m.pt")]) == 2
        err = capsys.readouterr().err
        assert message in err and str(path.name) in err and err.count("\n") == 1
    assert not (tmp_path / "m.pt").exists()


# --------------------------------------------------------------------------------------------
# Hostile archives: a gzip bomb stops at the caps, before its member is in memory

GiB = 1 << 30
ZEROS = 16 << 20  # one gzip member of 16 MiB of zeros compresses to 16 kB


def gzip_tar(path: Path, members: list[tuple[str, bytes | int, bytes]]) -> Path:
    """A tar.gz of (name, data or that many zero bytes, tar type) members, written as a chain of
    gzip members (one gzip file may hold many): gigabytes of zeros cost megabytes of disk and
    no memory to make, and the tar headers declare the true (uncompressed) sizes."""
    zeros = gzip.compress(bytes(ZEROS), mtime=0)
    with open(path, "wb") as f:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, data if isinstance(data, int) else len(data)
            f.write(gzip.compress(info.tobuf(tarfile.USTAR_FORMAT), mtime=0))
            if isinstance(data, int):  # the data and its padding to the next 512-byte block
                count, rest = divmod(data + (-data % tarfile.BLOCKSIZE), ZEROS)
                f.write(zeros * count + gzip.compress(bytes(rest), mtime=0))
            else:
                f.write(gzip.compress(data + bytes(-len(data) % tarfile.BLOCKSIZE), mtime=0))
        f.write(gzip.compress(bytes(2 * tarfile.BLOCKSIZE), mtime=0))  # end of archive
    return path


def peak_python_memory(call) -> tuple[Exception, int]:
    """The exception `call()` raised and the peak bytes Python allocated meanwhile."""
    tracemalloc.start()
    try:
        call()
    except Exception as err:  # returned for the caller to check
        raised = err
    else:
        raise AssertionError("the hostile archive was read without an error")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


CONFIG = (CONFIG_MEMBER, b"target: EncDecCTCModelBPE\n", tarfile.REGTYPE)


def test_a_gzip_bomb_member_fails_fast_naming_it_without_reading_it(tmp_path):
    size = 4 * GiB + 512 * (1 << 20)  # over the 4 GiB default limit
    bomb = gzip_tar(tmp_path / "bomb.nemo", [CONFIG, (WEIGHTS_MEMBER, size, tarfile.REGTYPE)])
    assert bomb.stat().st_size < 6_000_000
    err, peak = peak_python_memory(lambda: read_nemo(bomb))
    assert isinstance(err, NemoImportError), repr(err)
    assert str(err) == (
        f"{bomb}: member 'model_weights.ckpt' is 4.5 GiB uncompressed, over the limit of 4.0 GiB "
        f"per member (asr.interop.nemo.MAX_MEMBER_BYTES)"
    )
    assert peak < 32 << 20  # bytes, while reading the member would have taken 4.5 GiB


def test_a_bomb_in_a_pax_header_is_refused_before_tarfile_reads_it(tmp_path):
    # tarfile reads an extended header into memory whole, before read_nemo sees any member
    pax = ("././@PaxHeader", 4 * GiB + 512 * (1 << 20), tarfile.XHDTYPE)
    bomb = gzip_tar(tmp_path / "pax.nemo", [pax])
    err, peak = peak_python_memory(lambda: read_nemo(bomb))
    assert isinstance(err, NemoImportError), repr(err)
    assert "a tar header of 4.5 GiB, over the limit of 4.0 GiB per member" in str(err)
    assert peak < 32 << 20


def test_members_that_together_pass_the_total_limit_are_refused(tmp_path):
    members = [CONFIG, (WEIGHTS_MEMBER, b"w", tarfile.REGTYPE)]
    members += [(f"part{i}.bin", 3 << 20, tarfile.REGTYPE) for i in range(3)]
    archive = gzip_tar(tmp_path / "many.nemo", members)
    with pytest.raises(NemoImportError) as err:
        read_nemo(archive, max_total_bytes=8 << 20)
    assert str(err.value) == (
        f"{archive}: member 'part2.bin' (3.0 MiB) brings the archive to 9.0 MiB uncompressed, "
        f"over the limit of 8.0 MiB for a whole archive (asr.interop.nemo.MAX_TOTAL_BYTES)"
    )
    names = {CONFIG_MEMBER, WEIGHTS_MEMBER, "part0.bin", "part1.bin", "part2.bin"}
    assert set(read_nemo(archive, max_total_bytes=10 << 20)) == names
    # What tarfile reads by itself, an extended header here, counts towards the total too.
    pax = gzip_tar(tmp_path / "pax.nemo", [("././@PaxHeader", 3 << 20, tarfile.XHDTYPE)])
    with pytest.raises(
        NemoImportError,
        match=r"pax\.nemo is over 2\.0 MiB uncompressed, the "
        r"limit for a whole archive \(asr\.interop\.nemo\.MAX_TOTAL_BYTES\)",
    ):
        read_nemo(pax, max_total_bytes=2 << 20)


def test_an_archive_of_countless_members_is_refused(tmp_path):
    # each member costs a TarInfo in memory however small the archive is
    members = [CONFIG, (WEIGHTS_MEMBER, b"w", tarfile.REGTYPE)]
    members += [(f"empty{i}", b"", tarfile.REGTYPE) for i in range(20)]
    archive = gzip_tar(tmp_path / "countless.nemo", members)
    limit = r"more than 10 members \(asr\.interop\.nemo\.MAX_MEMBERS\): 'empty8' is number 11"
    with pytest.raises(NemoImportError, match=limit):
        read_nemo(archive, max_members=10)
    assert len(read_nemo(archive, max_members=22)) == 22


def test_a_nemo_file_is_imported_on_load_and_by_the_public_function(tmp_path, expected):
    utt = sorted(expected)[0]
    out = tmp_path / "model.pt"
    for bundle in (open_bundle(NEMO), asr.import_nemo(str(NEMO), str(out)), load_bundle(out)):
        _, log_probs, _ = run_model(bundle, utt)
        nemo_order = torch.cat([log_probs[:, 1:], log_probs[:, :1]], dim=1)
        torch.testing.assert_close(nemo_order, expected[utt]["log_probs"], rtol=0, atol=1e-4)


def finetune_overrides(tmp_path: Path, model: Path, folder: str, steps: int, *extra: str):
    manifest = FIXTURE / "manifest.jsonl"
    return [
        f"exp_dir={tmp_path / folder}", f"init_from={model}", f"trainer.max_steps={steps}",
        f"data.train_manifest={manifest}", f"data.val_manifest={manifest}",
        "data.num_workers=0", "data.max_batch_seconds=10", "trainer.val_every_n_steps=2",
        "trainer.progress_bar=false", "optim.freeze_blocks=1", "optim.encoder_lr_scale=0.5",
        "augment.freq_masks=0", "augment.time_masks=0", "augment.speed_factors=[1.0]",
        *extra,
    ]  # fmt: skip


def utterance_loss(bundle) -> float:
    """Mean CTC loss of the fixture's utterances under `bundle` (eval mode)."""
    losses = []
    for line in (FIXTURE / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        wave = load_audio(FIXTURE / row["audio"], 16000)[None]
        with torch.inference_mode():
            feats, feat_len = bundle.frontend(wave, torch.tensor([wave.shape[1]]))
            log_probs, out_len = bundle.model(feats, feat_len)
        tokens = torch.tensor([bundle.tokenizer.encode(row["text"])])
        losses.append(float(ctc_loss(log_probs, out_len, tokens, torch.tensor([tokens.shape[1]]))))
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("imported")
    model, config = folder / "model.pt", folder / "ft.yaml"
    assert main(["import-nemo", str(NEMO), "--output", str(model),
                 "--train-config", str(config)]) == 0  # fmt: skip
    return model, config


def test_fine_tuning_the_imported_model_lowers_its_loss(tmp_path, imported):
    model, config = imported
    fast = ("optim.warmup_steps=0", "optim.lr=3e-3")
    tuned = train(load_config(config, finetune_overrides(tmp_path, model, "a", 4, *fast)))
    before, after = load_bundle(model), load_bundle(tuned)
    assert utterance_loss(after) < utterance_loss(before)
    assert after.tokenizer.to_dict() == before.tokenizer.to_dict()
    old, new = before.model.state_dict(), after.model.state_dict()
    for key in old:  # the subsampling and block 0 are frozen, the rest learned
        if key.startswith(("encoder.subsampling.", "encoder.blocks.0.")) and "running" not in key:
            torch.testing.assert_close(new[key], old[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(new["encoder.blocks.1.ff1.net.1.weight"],
                           old["encoder.blocks.1.ff1.net.1.weight"])  # fmt: skip


def test_fine_tuning_the_imported_model_resumes_exactly(tmp_path, imported):
    # 2 batches an epoch: the interrupted run stops at an epoch's end, the hardest resume point
    model, config = imported
    for folder, steps in [("a", 4), ("b", 2), ("b", 4)]:  # b resumes from its last.ckpt
        train(load_config(config, finetune_overrides(tmp_path, model, folder, steps)))
    a = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_the_imported_model_exports_to_onnx_with_its_own_front_end(tmp_path, expected, imported):
    pytest.importorskip("onnxruntime")
    model, _ = imported
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--model", str(model), "--format", "onnx",
                 "--output", str(onnx_path)]) == 0  # fmt: skip
    onnx_bundle = asr.load_model(str(onnx_path)).bundle
    for name, value in load_bundle(model).frontend.state_dict().items():  # window, filterbank
        assert torch.equal(onnx_bundle.frontend.state_dict()[name], value), name
    for utt, theirs in expected.items():
        wave = load_audio(FIXTURE / f"{utt}.flac", 16000)[None]
        feats, feat_len = onnx_bundle.frontend(wave, torch.tensor([wave.shape[1]]))
        log_probs, out_len = onnx_bundle.model(feats, feat_len)
        valid = log_probs[0, : int(out_len[0])]
        nemo_order = torch.cat([valid[:, 1:], valid[:, :1]], dim=1)
        torch.testing.assert_close(nemo_order, theirs["log_probs"], rtol=0, atol=1e-4)
