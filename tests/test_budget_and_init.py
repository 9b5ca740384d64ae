"""Training for a wall-clock budget (trainer.max_time), precision "auto", and fine-tuning from a
bundle (init_from): same weights, a new tokenizer's fresh head, exact resume, clear errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from asr.checkpoint import load_bundle
from asr.config import load_config, max_time_seconds
from asr.tokenizer import CharTokenizer
from asr.training import hardware
from asr.training import train as train_module
from asr.training.hardware import resolve_precision
from asr.training.system import lr_lambda
from asr.training.train import train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs/tiny.yaml"


def overrides(corpus: Path, exp_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.train_manifest={corpus}",
        f"data.val_manifest={corpus}",
        f"exp_dir={exp_dir}",
        "trainer.val_every_n_steps=2",
        "trainer.progress_bar=false",
        "data.num_workers=0",
        "data.max_batch_seconds=8",
        *extra,
    ]


def test_max_time_parses_lightning_format_and_names_the_key_when_wrong():
    assert max_time_seconds("00:00:30:00") == 1800
    assert max_time_seconds("01:02:03:04") == 93784
    for bad in ("30", "00:30:00", "00:00:xx:00", "00:00:00:00"):
        with pytest.raises(ValueError, match="trainer.max_time"):
            load_config(None, [f"trainer.max_time={bad}"])


def test_cosine_follows_the_larger_of_step_and_time_progress():
    args = dict(warmup=10, schedule="cosine", max_steps=1000, min_ratio=0.0)
    assert lr_lambda(4, **args, time_fraction=0.9) == pytest.approx(0.5)  # warm-up: steps only
    assert lr_lambda(59, **args, time_fraction=0.5) == pytest.approx(0.5)
    assert lr_lambda(59, **args, time_fraction=1.0) == pytest.approx(0.0)
    assert lr_lambda(59, **args, time_fraction=None) == lr_lambda(59, **args)
    # no step budget at all: time alone
    no_steps = dict(args, max_steps=-1)
    for fraction in (0.0, 0.25, 0.75):
        expected = 0.5 * (1 + math.cos(math.pi * fraction))
        assert lr_lambda(500, **no_steps, time_fraction=fraction) == pytest.approx(expected)


def test_auto_precision_is_bf16_only_where_bf16_is_fast(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_bf16_isa", lambda: "avx512_bf16")
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(hardware, "cpu_bf16_isa", lambda: None)
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"


# No step or epoch limit: only the budget can end this run. The timeout is a deadline for a
# budget that never stops it (which would otherwise hang), not a measure of speed.
@pytest.mark.timeout(1800)
def test_training_stops_when_the_time_budget_is_spent_and_still_exports(corpus, tmp_path, capsys):
    # The last 2 checkpoints are averaged.
    args = ["trainer.max_steps=-1", "trainer.max_time=00:00:00:04", "trainer.average_last_k=2",
            "trainer.progress_bar=true"]  # fmt: skip
    config = load_config(TINY, overrides(corpus, tmp_path / "exp", *args))
    model_path = train(config)
    assert "4/4 s" in capsys.readouterr().out  # the bar counts the budget, not steps
    info = load_bundle(model_path).info
    assert info["trained_steps"] > 0
    # At least the budget, however fast the machine; how much more is one step's and one
    # validation's time, which depends on the machine, so it is not bounded here.
    assert info["train_seconds"] >= 4
    assert info["cpu"] and info["precision"] in ("32-true", "bf16-mixed")


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("pre") / "exp"
    return train(load_config(TINY, overrides(corpus, exp, "trainer.max_steps=4")))


def test_init_from_starts_from_the_bundle_weights(corpus, tmp_path, pretrained):
    # lr 0: the fine-tuned model must still be exactly the pretrained one
    args = ["trainer.max_steps=2", f"init_from={pretrained}", "optim.lr=1e-30"]
    tuned = train(load_config(TINY, overrides(corpus, tmp_path / "ft", *args)))
    before, after = load_bundle(pretrained), load_bundle(tuned)
    assert after.tokenizer.to_dict() == before.tokenizer.to_dict()
    for key, value in before.model.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(after.model.state_dict()[key], value, rtol=0, atol=1e-20)


def test_init_from_with_another_tokenizer_keeps_the_encoder_and_starts_a_new_head(
    corpus, tmp_path, pretrained
):
    tokens = tmp_path / "tokenizer.json"
    CharTokenizer("abcdefghijklmnopqrstuvwxyz'").save(tokens)
    args = ["trainer.max_steps=1", f"init_from={pretrained}", f"tokenizer.path={tokens}",
            "optim.lr=1e-30"]  # fmt: skip
    config = load_config(TINY, overrides(corpus, tmp_path / "ft", *args))
    new_tokens = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    system = train_module.AsrSystem(config, new_tokens)
    head_before = system.model.head.weight.detach().clone()
    bundle = load_bundle(pretrained)
    fresh = train_module.initialize_from(system, pretrained)
    old_pieces = {bundle.tokenizer.id_to_piece(i) for i in range(bundle.tokenizer.vocab_size)}
    assert fresh == [p for p in map(new_tokens.id_to_piece, range(29)) if p not in old_pieces]
    assert fresh and "'" in fresh  # the tone corpus has no apostrophe
    source = bundle.model.state_dict()
    for key, value in system.model.state_dict().items():
        if key.startswith("encoder."):
            torch.testing.assert_close(value, source[key], rtol=0, atol=0, msg=key)
    head = system.model.head
    for i in range(new_tokens.vocab_size):  # shared pieces inherit their row, new ones stay
        piece = new_tokens.id_to_piece(i)
        if piece in old_pieces:
            j = next(j for j in range(bundle.tokenizer.vocab_size)
                     if bundle.tokenizer.id_to_piece(j) == piece)  # fmt: skip
            torch.testing.assert_close(head.weight[i], source["head.weight"][j], msg=piece)
            torch.testing.assert_close(head.bias[i], source["head.bias"][j], msg=piece)
        else:
            torch.testing.assert_close(head.weight[i], head_before[i], msg=piece)
    assert head.weight.shape[0] == 29 != source["head.weight"].shape[0]
    assert load_bundle(train(config)).model.vocab_size == 29


def test_init_from_a_model_of_another_shape_names_the_field(corpus, tmp_path, pretrained):
    args = ["trainer.max_steps=1", f"init_from={pretrained}", "encoder.num_layers=3"]
    with pytest.raises(ValueError, match=r"init_from .*encoder.num_layers"):
        train(load_config(TINY, overrides(corpus, tmp_path / "ft", *args)))


def test_fine_tuning_resumes_exactly(corpus, tmp_path, pretrained):
    def run(folder: str, steps: int) -> Path:
        args = [f"trainer.max_steps={steps}", f"init_from={pretrained}"]
        return train(load_config(TINY, overrides(corpus, tmp_path / folder, *args)))

    run("a", 4)
    run("b", 2)
    run("b", 4)  # resumes from b's last.ckpt
    a = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_a_shipped_bundle_loads_by_name_and_an_unknown_name_is_named():
    from asr.checkpoint import BundleError, pretrained_names

    assert "demo-synthetic-char" in pretrained_names()
    bundle = load_bundle("demo-synthetic-char")
    assert bundle.model.config.d_model == 96 and bundle.tokenizer.kind == "char"
    with pytest.raises(BundleError, match="no-such-model.*demo-synthetic-char"):
        load_bundle("no-such-model")


def test_the_shipped_streaming_bundle_goes_live_and_fine_tunes_into_a_live_model():
    """demo-synthetic-char-streaming: causal, dynamic chunks, running normalization, so its
    Stream opens; the AN4 config with the streaming overrides starts from all of its weights."""
    bundle = load_bundle("demo-synthetic-char-streaming")
    encoder = bundle.model.config
    assert encoder.causal_conv and encoder.dynamic_chunk_training
    assert bundle.frontend.config.normalize == "running"
    from asr.inference.transcribe import load_model

    stream = load_model("demo-synthetic-char-streaming").stream(chunk_ms=640, left_seconds=10)
    stream.accept(torch.zeros(16000))
    assert stream.finish().text == ""
    config = load_config(REPO / "configs/an4.yaml", [
        "init_from=demo-synthetic-char-streaming", "encoder.causal_conv=true",
        "encoder.chunk_conv=false"])  # fmt: skip
    system = train_module.AsrSystem(config, bundle.tokenizer)
    assert train_module.initialize_from(system, config.init_from) == []
    source = bundle.model.state_dict()
    for key, value in system.model.state_dict().items():
        torch.testing.assert_close(value, source[key], rtol=0, atol=0, msg=key)


CHUNK_OVERRIDES = ["encoder.chunk_conv=true", "encoder.dynamic_chunk_training=true",
                   "encoder.min_chunk_frames=8", "features.normalize=running"]  # fmt: skip


@pytest.mark.parametrize("source", ["demo-synthetic-char-chunk", "demo-synthetic-char"])
def test_a_chunk_convolution_model_starts_from_all_weights_of_either_bundle(source):
    """A chunk-convolution model has the offline architecture, so the AN4 config with the live
    overrides starts from every weight of the offline bundle, or of the shipped chunk bundle,
    which itself goes live."""
    bundle = load_bundle(source)
    config = load_config(REPO / "configs/an4.yaml", [f"init_from={source}", *CHUNK_OVERRIDES])
    system = train_module.AsrSystem(config, bundle.tokenizer)
    assert train_module.initialize_from(system, config.init_from) == []
    weights = bundle.model.state_dict()
    for key, value in system.model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)
    if source == "demo-synthetic-char-chunk":
        assert bundle.model.config.chunk_conv and bundle.frontend.config.normalize == "running"
        from asr.inference.transcribe import load_model

        stream = load_model(source).stream(chunk_ms=640, left_seconds=10)
        stream.accept(torch.zeros(16000))
        assert stream.finish().text == ""


def test_the_an4_config_fine_tunes_the_shipped_model():
    config = load_config(REPO / "configs/an4.yaml")
    tokens = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")  # real transcripts have apostrophes
    system = train_module.AsrSystem(config, tokens)
    assert train_module.initialize_from(system, config.init_from) == ["'"]
    source = load_bundle(config.init_from).model.state_dict()
    for key, value in system.model.state_dict().items():
        if key.startswith("encoder."):
            torch.testing.assert_close(value, source[key], rtol=0, atol=0, msg=key)


def test_init_from_can_add_style_tokens_that_start_silent_and_then_learn(corpus, pretrained):
    config = load_config(TINY, ["encoder.style_tokens=true", f"init_from={pretrained}"])
    bundle = load_bundle(pretrained)
    system = train_module.AsrSystem(config, bundle.tokenizer)
    assert train_module.initialize_from(system, pretrained) == []
    model, reference = system.model.eval(), bundle.model.eval()
    torch.manual_seed(0)
    feats, lengths = torch.randn(2, 120, 80), torch.tensor([120, 77])
    with torch.no_grad():
        out, out_lengths = model(feats, lengths)
        expected, expected_lengths = reference(feats, lengths)
    assert torch.equal(out_lengths, expected_lengths)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)  # the new layer adds 0
    # ... but it is trainable: the zeroed value projection gets a gradient
    model.train()
    out, _ = model(feats, lengths)
    out.logsumexp(-1).sum().backward()
    value = model.encoder.style.attention.value.weight
    assert value.grad is not None and value.grad.abs().sum() > 0
    # only style tokens may be added; other shape changes are still refused
    other = load_config(TINY, ["encoder.style_tokens=true", "encoder.num_heads=1"])
    with pytest.raises(ValueError, match="encoder.num_heads"):
        train_module.initialize_from(train_module.AsrSystem(other, bundle.tokenizer), pretrained)


# sherpa-onnx's front end (asr.export.sherpa): other framing, pre-emphasis, mel scale, log guard
SHERPA_FRONT_END = ["features.framing=kaldi", "features.preemphasis=0.97",
                    "features.mel_scale=slaney", "features.log_guard=clamp",
                    "features.log_offset=1.1920928955078125e-07"]  # fmt: skip


def test_init_from_may_change_the_normalization_but_not_the_features(pretrained, caplog):
    bundle = load_bundle(pretrained)
    assert bundle.frontend.config.normalize == "utterance"
    # global or per-utterance statistics: features of the same scale, the weights carry over
    for normalize in ("global", "per_feature"):
        config = load_config(TINY, [f"features.normalize={normalize}"])
        system = train_module.AsrSystem(config, bundle.tokenizer)
        assert train_module.initialize_from(system, pretrained) == []
        for key, value in bundle.model.state_dict().items():
            assert torch.equal(system.model.state_dict()[key], value), key
    # sherpa-onnx's variant of the log-mel front end: same bands and frame rate, normalized to
    # the same scale, so the weights carry over, with a warning naming each field that differs
    config = load_config(TINY, SHERPA_FRONT_END)
    system = train_module.AsrSystem(config, bundle.tokenizer)
    with caplog.at_level("WARNING", logger="asr.training.train"):
        assert train_module.initialize_from(system, pretrained) == []
    warned = " ".join(r.getMessage() for r in caplog.records)
    for change in SHERPA_FRONT_END:
        assert change.split("=")[0] in warned, warned
    assert torch.equal(system.model.head.weight, bundle.model.head.weight)
    # un-normalized log-mels (whatever else changes), or other bands or frame rates, are refused
    # with the field named
    refused = {
        "features.normalize=none": "features.normalize: 'utterance' in the bundle, 'none' here",
        "features.hop_ms=20.0": "features.hop_ms: 10.0 in the bundle, 20.0 here",
        "features.n_mels=64": "features.n_mels: 80 in the bundle, 64 here",
    }
    for change, message in refused.items():
        config = load_config(TINY, [change])
        system = train_module.AsrSystem(config, bundle.tokenizer)
        with pytest.raises(ValueError, match=r"init_from .*: " + re.escape(message)):
            train_module.initialize_from(system, pretrained)
    system = train_module.AsrSystem(
        load_config(TINY, [*SHERPA_FRONT_END, "features.normalize=none"]), bundle.tokenizer
    )
    with pytest.raises(ValueError, match=r"init_from .*: features\.normalize: "):
        train_module.initialize_from(system, pretrained)


def test_init_from_gives_its_tokenizer_only_when_it_is_of_the_kind_asked_for(corpus, tmp_path):
    """A character bundle fine-tuned with `tokenizer.kind: unigram` gets a new SentencePiece
    tokenizer of its training transcripts, not the bundle's letters silently; with the default
    kind, the bundle's own tokenizer is kept (for a NeMo BPE bundle too: tests/test_nemo.py)."""
    bundle = load_bundle("demo-synthetic-char").tokenizer
    (tmp_path / "a").mkdir()
    same = load_config(TINY, overrides(corpus, tmp_path / "a", "init_from=demo-synthetic-char"))
    assert train_module.prepare_tokenizer(same, tmp_path / "a").to_dict() == bundle.to_dict()
    (tmp_path / "b").mkdir()
    other = load_config(TINY, overrides(corpus, tmp_path / "b", "init_from=demo-synthetic-char",
                                        "tokenizer.kind=unigram", "tokenizer.vocab_size=20"))  # fmt: skip
    tokenizer = train_module.prepare_tokenizer(other, tmp_path / "b")
    assert tokenizer.kind == "unigram" and tokenizer.vocab_size == 20
