"""ConformerEncoder and CtcModel: padding invariance, config coverage, gradients, overfitting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asr import ConformerEncoder, CtcModel, EncoderConfig
from asr.model import ctc_loss, ctc_objective
from asr.modules.masks import make_pad_mask
from asr.training.train import CHUNK_DRAW_FIELDS

TINY = EncoderConfig(
    feat_dim=20, d_model=32, num_layers=2, num_heads=4, ff_mult=2, conv_kernel_size=5,
    subsampling_channels=8, dropout=0.1, attn_dropout=0.1,
)  # fmt: skip


def padded_batch(lengths: list[int], feat_dim: int, seed: int = 0) -> tuple[list, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    items = [torch.randn(1, t, feat_dim, generator=gen) for t in lengths]
    batch = torch.zeros(len(lengths), max(lengths), feat_dim)
    for i, item in enumerate(items):
        batch[i, : item.shape[1]] = item[0]
    return items, batch


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        dataclasses.replace(TINY, subsampling_factor=8),
        dataclasses.replace(TINY, style_tokens=True),
        dataclasses.replace(TINY, inter_ctc_layers=(1,), self_conditioning=True),
    ],
    ids=["4x", "8x", "style", "self-conditioned"],
)
def test_each_padded_item_equals_the_item_alone(config: EncoderConfig) -> None:
    torch.manual_seed(0)
    lengths = [97, 60, 31]
    items, batch = padded_batch(lengths, config.feat_dim)
    for module in (ConformerEncoder(config).eval(), CtcModel(config, vocab_size=11).eval()):
        out, out_lengths = module(batch, torch.tensor(lengths))
        for i, item in enumerate(items):
            alone, alone_len = module(item, torch.tensor([lengths[i]]))
            assert int(out_lengths[i]) == int(alone_len[0]) == alone.shape[1]
            torch.testing.assert_close(out[i, : alone.shape[1]], alone[0], atol=1e-4, rtol=1e-4)
        if isinstance(module, ConformerEncoder):  # padded output frames are zero
            assert out[2, int(out_lengths[2]) :].abs().sum() == 0


def test_encoder_output_lengths_match_output_shapes_over_a_grid() -> None:
    encoder = ConformerEncoder(dataclasses.replace(TINY, num_layers=1)).eval()
    for t in range(7, 90, 3):
        out, lengths = encoder(torch.randn(1, t, 20), torch.tensor([t]))
        assert out.shape[1] == int(lengths[0]) == int(encoder.output_lengths(torch.tensor(t)))


# For each field: an alternative value, and a base under which the field matters.
FIELD_CHANGES = {
    "feat_dim": 24, "d_model": 48, "num_layers": 3, "num_heads": 2, "ff_mult": 3,
    "conv_kernel_size": 7, "subsampling_factor": 8, "subsampling_channels": 4, "dropout": 0.3,
    "attn_dropout": 0.5, "activation": "leaky_relu", "conv_norm": "layer_norm",
    "style_tokens": True, "num_style_tokens": 4, "style_token_heads": 2,
    "inter_ctc_layers": (1,), "self_conditioning": True,
    "causal_conv": True, "chunk_conv": True, "dynamic_chunk_training": True, "max_chunk_frames": 2,
    "min_chunk_frames": 3, "full_context_prob": 1.0,
    "subsampling_padding": 1, "xscaling": True, "shared_pos_bias": True,
}  # fmt: skip


def fingerprint(config: EncoderConfig) -> tuple:
    """Parameter names and shapes, plus the train-mode outputs (final and intermediate
    log-probs) of a CtcModel under a fixed seed."""
    torch.manual_seed(0)
    model = CtcModel(config, vocab_size=7).train()
    shapes = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
    torch.manual_seed(1)
    feats = torch.ones(2, 40, config.feat_dim).cumsum(1).sin()
    log_probs, _, inter = model.forward_intermediate(feats, torch.tensor([40, 33]))
    return shapes, [t.detach() for t in (log_probs, *inter)]


def test_every_encoder_config_field_changes_the_model_or_its_output() -> None:
    assert set(FIELD_CHANGES) == {f.name for f in dataclasses.fields(EncoderConfig)}
    for name, value in FIELD_CHANGES.items():
        if name == "min_chunk_frames":
            continue  # the seed here draws the largest chunk: tests/test_streaming.py's draws
        base = dataclasses.replace(
            TINY,
            style_tokens=name.startswith(("num_style", "style_token_")),
            inter_ctc_layers=(1,) if name == "self_conditioning" else (),
            causal_conv=name in ("dynamic_chunk_training", *CHUNK_DRAW_FIELDS),
            dynamic_chunk_training=name in CHUNK_DRAW_FIELDS,
        )
        changed = dataclasses.replace(base, **{name: value})
        if name == "chunk_conv":  # at full context it is the centred conv: compare in chunks
            base = dataclasses.replace(
                TINY, causal_conv=True, dynamic_chunk_training=True, full_context_prob=0.0
            )
            changed = dataclasses.replace(base, causal_conv=False, chunk_conv=True)
        (shapes_a, outs_a), (shapes_b, outs_b) = fingerprint(base), fingerprint(changed)
        same_outputs = len(outs_a) == len(outs_b) and all(
            a.shape == b.shape and torch.allclose(a, b) for a, b in zip(outs_a, outs_b)
        )
        assert shapes_a != shapes_b or not same_outputs, f"changing {name} changed nothing"


def test_default_encoder_has_no_style_weights() -> None:
    names = ConformerEncoder(TINY).state_dict().keys()
    assert not any(name.startswith("style.") for name in names)
    assert any(name.startswith("style.") for name in ConformerEncoder(
        dataclasses.replace(TINY, style_tokens=True)).state_dict())  # fmt: skip


def test_style_tokens_change_the_encoder_output() -> None:
    torch.manual_seed(0)
    plain = ConformerEncoder(TINY).eval()
    styled = ConformerEncoder(dataclasses.replace(TINY, style_tokens=True)).eval()
    styled.load_state_dict(plain.state_dict(), strict=False)
    feats, lengths = torch.randn(2, 50, 20), torch.tensor([50, 40])
    assert not torch.allclose(plain(feats, lengths)[0], styled(feats, lengths)[0], atol=1e-3)


def batch_for_ctc(seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, 80, 20, generator=gen)
    feat_lengths = torch.tensor([80, 70, 52])
    targets = torch.randint(1, 11, (3, 6), generator=gen)
    target_lengths = torch.tensor([6, 5, 3])
    return feats, feat_lengths, targets, target_lengths


@pytest.mark.parametrize("style", [False, True])
def test_gradients_reach_every_parameter(style: bool) -> None:
    model = CtcModel(dataclasses.replace(TINY, style_tokens=style), vocab_size=11).train()
    assert model.condition is None
    feats, feat_lengths, targets, target_lengths = batch_for_ctc()
    log_probs, out_lengths = model(feats, feat_lengths)
    ctc_loss(log_probs, out_lengths, targets, target_lengths).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_intermediate_ctc_is_the_shared_head_on_that_blocks_output() -> None:
    config = dataclasses.replace(TINY, num_layers=3, inter_ctc_layers=(2, 1))
    model = CtcModel(config, vocab_size=11).eval()
    feats, feat_lengths = batch_for_ctc()[:2]
    log_probs, _, inter = model.forward_intermediate(feats, feat_lengths)
    torch.testing.assert_close(log_probs, model(feats, feat_lengths)[0])  # no conditioning
    # Reference: run the blocks by hand and apply the head after blocks 1 and 2.
    x, lengths = model.encoder.subsampling(feats, feat_lengths)
    pad_mask = make_pad_mask(lengths, x.shape[1])
    pos_emb = model.encoder.pos_enc(x.shape[1])
    expected = []
    for block in model.encoder.blocks[:2]:
        x = block(x, pos_emb, pad_mask)
        expected.append(model.head(x).log_softmax(-1))
    assert len(inter) == 2  # in block order, whatever the order in the config
    for got, want in zip(inter, expected):
        torch.testing.assert_close(got, want)


def test_self_conditioning_adds_the_projected_intermediate_posteriors() -> None:
    torch.manual_seed(0)
    plain = CtcModel(dataclasses.replace(TINY, inter_ctc_layers=(1,)), vocab_size=11).eval()
    config = dataclasses.replace(TINY, inter_ctc_layers=(1,), self_conditioning=True)
    conditioned = CtcModel(config, vocab_size=11).eval()
    missing = conditioned.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["condition.weight", "condition.bias"]
    feats, feat_lengths = batch_for_ctc()[:2]
    with torch.no_grad():
        assert not torch.allclose(
            plain(feats, feat_lengths)[0], conditioned(feats, feat_lengths)[0]
        )
        conditioned.condition.weight.zero_()
        conditioned.condition.bias.zero_()  # adds nothing: the plain model again
        torch.testing.assert_close(
            plain(feats, feat_lengths)[0], conditioned(feats, feat_lengths)[0]
        )


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_objective_mixes_final_and_intermediate_ctc_by_the_weight(weight: float) -> None:
    config = dataclasses.replace(TINY, num_layers=3, inter_ctc_layers=(1, 2))
    model = CtcModel(config, vocab_size=11).eval()
    feats, feat_lengths, targets, target_lengths = batch_for_ctc()
    loss, parts = ctc_objective(model, feats, feat_lengths, targets, target_lengths, weight)
    log_probs, out_lengths, inter = model.forward_intermediate(feats, feat_lengths)
    final = ctc_loss(log_probs, out_lengths, targets, target_lengths)
    mean_inter = sum(ctc_loss(lp, out_lengths, targets, target_lengths) for lp in inter) / 2
    torch.testing.assert_close(loss, (1 - weight) * final + weight * mean_inter)
    torch.testing.assert_close(parts["inter_ctc"], mean_inter)
    assert not torch.allclose(final, mean_inter)  # the weight matters
    plain = CtcModel(TINY, vocab_size=11).eval()  # no intermediate layers: plain CTC
    loss, parts = ctc_objective(plain, feats, feat_lengths, targets, target_lengths, weight)
    torch.testing.assert_close(loss, ctc_loss(*plain(feats, feat_lengths), targets, target_lengths))
    assert set(parts) == {"ctc"}


def test_log_probs_are_normalized_and_blank_is_id_zero() -> None:
    model = CtcModel(TINY, vocab_size=11).eval()
    log_probs, _ = model(*batch_for_ctc()[:2])
    assert log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))


@pytest.mark.parametrize("self_conditioned", [False, True], ids=["plain", "self-conditioned"])
def test_tiny_model_overfits_one_batch(self_conditioned: bool) -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, dropout=0.0, attn_dropout=0.0)
    if self_conditioned:  # trained with the intermediate loss, as `asr train` does
        config = dataclasses.replace(config, inter_ctc_layers=(1,), self_conditioning=True)
    model = CtcModel(config, vocab_size=11).train()
    feats, feat_lengths, targets, target_lengths = batch_for_ctc()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss, parts = ctc_objective(model, feats, feat_lengths, targets, target_lengths, 0.5)
        loss.backward()
        optimizer.step()
        losses.append(parts["ctc"].item())  # the final CTC loss
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    best = model(feats, feat_lengths)[0].argmax(-1)  # greedy CTC decode of item 0
    tokens = [int(t) for i, t in enumerate(best[0]) if t != 0 and (i == 0 or t != best[0][i - 1])]
    assert tokens == targets[0].tolist()


def test_presets_have_the_papers_dimensions() -> None:
    dims = {n: EncoderConfig.preset(n) for n in ("s", "m", "l")}
    assert [(c.d_model, c.num_layers, c.num_heads) for c in dims.values()] == [
        (144, 16, 4), (256, 16, 4), (512, 17, 8)]  # fmt: skip
    assert all(c.conv_kernel_size == 31 and c.ff_mult == 4 for c in dims.values())
    with pytest.raises(ValueError, match="preset"):
        EncoderConfig.preset("xxl")
