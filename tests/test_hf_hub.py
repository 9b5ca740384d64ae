"""Tests for asr/interop/hf_hub.py and asr/interop/sources.py: `hf://` model paths served from a
Hugging Face cache with the Hub out of reach, one-line errors naming the repository, model
cards made of the bundle's own numbers, and `asr push-to-hub`.

Nothing here touches the network. In-process tests switch huggingface_hub offline (then any
HTTP request it tries fails at once); subprocess tests either do the same through the
environment or point HF_ENDPOINT at a closed port on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from huggingface_hub import HfApi, constants

import asr
from asr.audio import LogMelFeatures
from asr.checkpoint import PRETRAINED_DIR, BundleError, load_bundle, save_bundle
from asr.cli import main
from asr.config import EncoderConfig, FeatureConfig
from asr.interop.hf_hub import TRAINING_KEYS, model_card, parse_hf, push_to_hub, resolve_hf
from asr.interop.nemo import import_nemo
from asr.interop.sources import open_bundle
from asr.model import CtcModel
from asr.tokenizer import CharTokenizer

DEMO = PRETRAINED_DIR / "demo-synthetic-char.pt"
MAIN = "import sys; from asr.cli import main; sys.exit(main())"  # `asr ...` in a fresh process
COMMIT = "4f3c2b1a" * 5  # a commit hash as the Hub writes them: 40 hex digits
OLD_COMMIT = "0d9e8f7a" * 5
OFFLINE_ERROR = (
    "not in the local Hugging Face cache and HF_HUB_OFFLINE is set; run once online or unset "
    "HF_HUB_OFFLINE"
)


def cache_repo(
    cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT, refs=("main",)
) -> Path:
    """Lay `files` out as huggingface_hub caches a download of `repo_id` at `commit` (see
    huggingface_hub/file_download.py): models--OWNER--NAME/blobs/<sha256> holds the bytes,
    snapshots/<commit>/<file> links to its blob, refs/<branch> holds the commit. Returns the
    snapshot folder."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (folder / "refs" / ref).write_text(commit)
    return snapshot


def tiny_bundle(path: Path, **info) -> bytes:
    """The bytes of a one-block model.pt whose info is `info` (it tells files apart)."""
    tokenizer = CharTokenizer("abc")
    config = EncoderConfig(d_model=16, num_layers=1, num_heads=2, subsampling_channels=8)
    model = CtcModel(config, tokenizer.vocab_size)
    save_bundle(path, model, LogMelFeatures(FeatureConfig()), tokenizer, info)
    return path.read_bytes()


def log_probs(bundle, wave: np.ndarray) -> torch.Tensor:
    samples = torch.from_numpy(wave)[None]  # (1, N)
    with torch.no_grad():
        feats, feat_lengths = bundle.frontend(samples, torch.tensor([samples.shape[1]]))
        return bundle.model(feats, feat_lengths)[0]  # (1, T', V)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, with the Hub switched off, for one test.

    huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE once, when imported, into
    `huggingface_hub.constants`: the environment is set for subprocesses, the constants for
    this process.
    """
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def wave() -> np.ndarray:
    """2.5 s of noise under an envelope that changes every 0.1 s, at 16 kHz."""
    rng = np.random.default_rng(0)
    envelope = np.repeat(rng.uniform(0, 1, 25), 1600)
    return (0.3 * envelope * rng.standard_normal(envelope.size)).astype(np.float32)


@pytest.fixture(scope="module")
def wav(tmp_path_factory, wave) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    soundfile.write(path, wave, 16000)
    return path


def test_an_hf_path_loads_from_the_cache_offline_exactly_like_the_file(hub_cache, wave, wav):
    cache_repo(hub_cache, "acme/demo-asr", {"model.pt": DEMO.read_bytes(), "README.md": b"# x\n"})
    direct, hub = asr.load_model(str(DEMO)), asr.load_model("hf://acme/demo-asr")
    assert hub.bundle.info == direct.bundle.info
    assert torch.equal(log_probs(hub.bundle, wave), log_probs(direct.bundle, wave))
    assert hub.transcribe([wav])[0].text == direct.transcribe([wav])[0].text


def test_a_revision_or_a_file_in_the_path_picks_what_it_names(hub_cache, tmp_path):
    newest = cache_repo(hub_cache, "acme/demo-asr", {
        "model.pt": DEMO.read_bytes(),
        "variants/other.pt": tiny_bundle(tmp_path / "a.pt", which="other"),
    })  # fmt: skip
    old = cache_repo(hub_cache, "acme/demo-asr", {"model.pt": tiny_bundle(tmp_path / "b.pt", which="v1")},
                     commit=OLD_COMMIT, refs=("v1",))  # fmt: skip
    assert resolve_hf("hf://acme/demo-asr") == newest / "model.pt"
    assert resolve_hf(f"hf://acme/demo-asr@{OLD_COMMIT}") == old / "model.pt"
    assert open_bundle(f"hf://acme/demo-asr@{OLD_COMMIT}").info == {"which": "v1"}
    assert open_bundle("hf://acme/demo-asr@v1").info == {"which": "v1"}
    assert open_bundle("hf://acme/demo-asr/variants/other.pt").info == {"which": "other"}
    assert open_bundle("hf://acme/demo-asr").info == load_bundle(DEMO).info


def test_hf_paths_parse_into_repo_revision_and_file():
    assert parse_hf("hf://acme/m") == ("acme/m", None, None)
    assert parse_hf("hf://acme/m@v1/sub/x.pt") == ("acme/m", "v1", "sub/x.pt")
    assert parse_hf("hf://acme/m@refs%2Fpr%2F3") == ("acme/m", "refs/pr/3", None)


@pytest.mark.parametrize("spec", ["hf://", "hf://acme", "hf://acme/", "hf:///m", "hf://acme/m@"])
def test_a_malformed_hf_path_is_refused_naming_it(spec):
    with pytest.raises(BundleError) as caught:
        resolve_hf(spec)
    assert str(caught.value) == (
        f"{spec}: not a Hugging Face Hub model path, expected hf://OWNER/REPO[@REVISION][/FILE]"
    )


def test_offline_and_not_cached_is_one_line_naming_the_repo(hub_cache):
    with pytest.raises(BundleError) as caught:
        asr.load_model("hf://x/y")
    assert str(caught.value) == f"hf://x/y: {OFFLINE_ERROR}"
    cache_repo(hub_cache, "acme/demo-asr", {"model.pt": DEMO.read_bytes()})
    for spec in ("hf://acme/demo-asr@v2", "hf://acme/demo-asr/missing.pt"):
        with pytest.raises(BundleError) as caught:
            open_bundle(spec)
        assert str(caught.value) == f"{spec}: {OFFLINE_ERROR}"


def test_cli_transcribe_with_an_uncached_hf_model_says_so_in_one_line(hub_cache, wav, capsys):
    # A model that cannot be loaded is a user error, as a missing model.pt: status 2, one line.
    assert main(["transcribe", "--model", "hf://x/y", str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"asr: error: hf://x/y: {OFFLINE_ERROR}"]


def test_cli_transcribes_an_hf_model_in_a_fresh_offline_process(tmp_path, wav):
    cache = tmp_path / "hf-cache"
    cache_repo(cache, "acme/demo-asr", {"model.pt": DEMO.read_bytes()})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "hf-home")}  # fmt: skip
    command = [sys.executable, "-c", MAIN, "transcribe", "--model", "hf://acme/demo-asr", str(wav)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    text = asr.load_model(str(DEMO)).transcribe([wav])[0].text
    assert text and out.stdout.strip() == text


def test_loading_a_local_model_never_imports_huggingface_hub():
    script = "import sys, asr; asr.load_model('demo-synthetic-char'); print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "'huggingface_hub'" not in out.stdout and "'asr.checkpoint'" in out.stdout


def test_a_repo_without_a_model_is_refused_listing_its_files(hub_cache):
    cache_repo(hub_cache, "acme/weights", {"README.md": b"# x\n", "config.json": b"{}"})
    with pytest.raises(BundleError) as caught:
        resolve_hf("hf://acme/weights")
    assert str(caught.value) == (
        "hf://acme/weights has neither model.pt nor a .nemo file (its cached files are: "
        "README.md, config.json); name the file: hf://acme/weights/FILE"
    )
    cache_repo(hub_cache, "acme/two", {"a.nemo": b"1", "b.nemo": b"2"})
    with pytest.raises(BundleError, match=r"^hf://acme/two holds several \.nemo files \(a\.nemo,"):
        resolve_hf("hf://acme/two")


def test_a_nemo_file_from_the_hub_or_disk_is_imported_on_load(hub_cache, tmp_path):
    # The real importer on the NeMo-made fixture (tests/fixtures/nemo): from a Hub repo that
    # holds only a .nemo (as nvidia/stt_* do) and from disk, the same weights as importing it.
    fixture = Path(__file__).resolve().parent / "fixtures" / "nemo" / "tiny.nemo"
    data = fixture.read_bytes()
    snapshot = cache_repo(hub_cache, "nvidia/stt_tiny", {"stt_tiny.nemo": data, "README.md": b""})
    assert resolve_hf("hf://nvidia/stt_tiny") == snapshot / "stt_tiny.nemo"
    expected = import_nemo(fixture).model.state_dict()
    for loaded in (open_bundle("hf://nvidia/stt_tiny"), asr.load_model(str(fixture)).bundle):
        assert loaded.info["source"] == "nemo"
        for key, value in expected.items():
            assert torch.equal(loaded.model.state_dict()[key], value), key


def card_parts(card: str) -> tuple[dict, dict[str, str]]:
    """(the YAML front matter, {section title: its text})."""
    _, front, body = card.split("---\n", 2)
    sections = dict(re.findall(r"^## (\w+)\n\n(.*?)(?=^## |\Z)", body, flags=re.M | re.S))
    return yaml.safe_load(front), sections


def test_the_model_card_states_the_bundles_own_architecture():
    bundle = load_bundle(DEMO)
    front, sections = card_parts(model_card(bundle, "acme/demo-asr"))
    assert front["library_name"] == "asr"
    assert front["pipeline_tag"] == "automatic-speech-recognition"
    assert front["tags"] == ["conformer", "ctc", "speech-recognition"]
    config = bundle.model.config
    parameters = sum(p.numel() for p in bundle.model.parameters())
    for row in (f"| `d_model` | {config.d_model} |", f"| `num_layers` | {config.num_layers} |",
                f"| `num_heads` | {config.num_heads} |", f"| parameters | {parameters:,} |",
                f"| `conv_kernel_size` | {config.conv_kernel_size} |",
                f"| `subsampling_factor` | {config.subsampling_factor} |"):  # fmt: skip
        assert row in sections["Architecture"]
    vocabulary = (
        f"| vocabulary size (CTC outputs, blank included) | {bundle.tokenizer.vocab_size} |"
    )
    assert vocabulary in sections["Tokenizer"]
    assert f"| sample rate | {bundle.frontend.config.sample_rate} Hz |" in sections["Features"]
    assert "hf://acme/demo-asr" in sections["Usage"]


def test_the_model_card_shows_no_number_the_bundle_does_not_record():
    bundle = dataclasses.replace(load_bundle(DEMO), info={})
    front, sections = card_parts(model_card(bundle, "acme/demo-asr"))
    assert "model-index" not in front and "license" not in front
    assert not re.search(r"\d", sections["Results"])
    assert sections["Training"].count("| not recorded |") == len(TRAINING_KEYS)


def test_the_model_card_reports_recorded_results_and_training():
    info = {"best_val_wer": 12.5049, "trained_steps": 300, "precision": "32-true", "license": "mit"}
    bundle = dataclasses.replace(load_bundle(DEMO), info=info)
    front, sections = card_parts(model_card(bundle, "acme/demo-asr"))
    assert front["license"] == "mit"
    [result] = front["model-index"][0]["results"]
    assert result["metrics"] == [
        {"type": "wer", "value": 12.5, "name": "best validation WER seen during training"}
    ]
    assert "| best validation WER seen during training | 12.50% |" in sections["Results"]
    training = sections["Training"]
    assert "| steps | 300 |" in training and "| precision | 32-true |" in training
    assert training.count("| not recorded |") == len(TRAINING_KEYS) - 2


def test_push_uploads_the_bundle_and_its_card_in_one_commit(hub_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(
        ("create_repo", repo_id, kw)) or f"https://huggingface.co/{repo_id}")  # fmt: skip
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **kw: calls.append(
        ("create_branch", repo_id, kw)))  # fmt: skip
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, **kw: calls.append(
        ("create_commit", repo_id, kw)))  # fmt: skip
    url = push_to_hub("demo-synthetic-char", "hf://acme/demo-asr", token="hf_dummy", revision="dev")
    assert url == "https://huggingface.co/acme/demo-asr/tree/dev"
    assert [(name, repo) for name, repo, _ in calls] == [
        ("create_repo", "acme/demo-asr"), ("create_branch", "acme/demo-asr"),
        ("create_commit", "acme/demo-asr"),
    ]  # fmt: skip
    assert calls[0][2]["private"] is None and calls[1][2]["branch"] == "dev"
    commit = calls[2][2]
    assert commit["revision"] == "dev"
    files = {op.path_in_repo: op.path_or_fileobj for op in commit["operations"]}
    assert sorted(files) == ["README.md", "model.pt"]
    assert Path(files["model.pt"]).read_bytes() == DEMO.read_bytes()
    assert files["README.md"] == model_card(load_bundle(DEMO), "acme/demo-asr").encode()


def test_push_refuses_a_bad_bundle_repo_or_missing_token_before_any_network(
    hub_cache, tmp_path, monkeypatch
):
    def no_network(self, *args, **kwargs):
        pytest.fail("push_to_hub reached the network")

    for method in ("create_repo", "create_branch", "create_commit"):
        monkeypatch.setattr(HfApi, method, no_network)
    notes = tmp_path / "notes.pt"
    notes.write_text("not a model\n")
    with pytest.raises(BundleError, match=re.escape(f"cannot read {notes}: not a model file")):
        push_to_hub(notes, "acme/demo-asr", token="hf_dummy")
    for repo in ("acme", "acme/a/b", "acme/m@v1"):
        with pytest.raises(ValueError, match="expected OWNER/NAME"):
            push_to_hub(DEMO, repo, token="hf_dummy")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(BundleError, match="^cannot push to hf://acme/demo-asr: no Hugging Face"):
        push_to_hub(DEMO, "acme/demo-asr")


def closed_port() -> int:
    """A local TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_push_to_an_unreachable_hub_fails_in_one_line_naming_the_repo(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "-c", MAIN, "push-to-hub", str(DEMO), "acme/demo-asr",
               "--token", "hf_dummy"]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    prefix = "asr: error: cannot push to hf://acme/demo-asr: cannot reach the Hugging Face Hub"
    assert line.startswith(f"{prefix} at {endpoint}: "), line
