"""Configs: YAML + dotted overrides, round trip, and clear errors for bad keys and values."""

from __future__ import annotations

import pytest

from asr.config import EncoderConfig, TrainConfig, load_config, save_config


def test_yaml_and_overrides_build_nested_dataclasses(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: s\nencoder:\n  num_layers: 4\noptim:\n  lr: 1e-3\n")
    config = load_config(path, ["trainer.max_steps=7", "data.train_manifest=t.jsonl"])
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)
    assert config.trainer.max_steps == 7 and config.data.train_manifest == "t.jsonl"
    enc = config.encoder_config()
    assert (enc.d_model, enc.num_layers) == (144, 4)


def test_config_round_trips_through_yaml(tmp_path) -> None:
    config = load_config(None, ["augment.speed_factors=[0.95, 1.05]", "exp_dir=x"])
    save_config(config, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == config
    assert config.augment.speed_factors == (0.95, 1.05)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
        ("trainer.max_step=3", r"did you mean 'trainer.max_steps'"),
        ("encoder.num_layer=3", r"unknown config key 'encoder.num_layer'"),
        ("trainer.max_steps=many", r"'trainer.max_steps' expects int"),
        ("optim.betas=[0.9]", r"'optim.betas' expects 2 values"),
        ("encoder.num_heads=5", r"d_model=64 is not divisible by encoder.num_heads=5"),
        ("encoder.conv_kernel_size=4", "conv_kernel_size must be a positive odd number"),
        ("model=huge", "unknown encoder preset 'huge'"),
        ("optim.schedule=linear", "schedule must be one of"),
        (
            "encoder.inter_ctc_layers=[2]",
            r"inter_ctc_layers must be distinct blocks in .* = \[1, 1\], got \[2\]",
        ),
        ("encoder.inter_ctc_layers=[1,1]", r"got \[1, 1\]"),
        ("encoder.self_conditioning=true", "self_conditioning needs encoder.inter_ctc_layers"),
        ("optim.inter_ctc_weight=1.5", "optim.inter_ctc_weight"),
    ],
)
def test_bad_configs_fail_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_missing_or_malformed_config_file_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        load_config(bad)


def test_encoder_config_is_frozen_and_validated() -> None:
    config = EncoderConfig()
    with pytest.raises(AttributeError):
        config.d_model = 8  # type: ignore[misc]
    with pytest.raises(ValueError, match="dropout"):
        EncoderConfig(dropout=1.5)
    assert TrainConfig().encoder_config() == EncoderConfig.preset("xs")
