"""Models on the Hugging Face Hub: `hf://` model paths, model cards, and `asr push-to-hub`.

`hf://OWNER/REPO[@REVISION][/FILE]` names a file of a model repository: FILE when given, else
the repository's `model.pt`, else its one `*.nemo` file (an NVIDIA NeMo checkpoint, converted on
load by `asr.interop.nemo`). REVISION is a branch, tag or commit hash (`refs/pr/1` is written
`refs%2Fpr%2F1`, as in huggingface_hub's own `hf://` paths). `resolve_hf` fetches the file into
the Hugging Face cache (`HF_HUB_CACHE`, by default ~/.cache/huggingface/hub) and returns its
path there; with `HF_HUB_OFFLINE=1` it is found in the cache without any network.

`push_to_hub` uploads a bundle as `model.pt` with a generated model card (`model_card`) in one
commit. Every failure of huggingface_hub (no such repository, revision or file, a gated one, no
network, not cached while offline, no token, no permission) becomes one `BundleError` line that
names the repository.

huggingface_hub is imported inside the functions: it is slow to import, and loading a local
model never needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from asr.checkpoint import BundleError, ModelBundle, bundle_path, load_bundle

HF_PREFIX = "hf://"
BUNDLE_FILE = "model.pt"
NEMO_PATTERN = "*.nemo"
SYNTAX = "hf://OWNER/REPO[@REVISION][/FILE]"
# Results a bundle's info may hold: (key, label, unit). `asr train` records `best_val_wer`,
# the lowest validation WER (in percent) it saw (asr.training.system logs 100 * WER).
RESULT_KEYS = (("best_val_wer", "best validation WER seen during training", "%"),)
TRAINING_KEYS = (
    ("trained_steps", "steps"),
    ("train_seconds", "training time"),
    ("cpu", "CPU"),
    ("data", "data"),
    ("precision", "precision"),
)


def is_hf_path(model: str | Path) -> bool:
    """Whether `model` names a file on the Hugging Face Hub (`hf://...`)."""
    return isinstance(model, str) and model.startswith(HF_PREFIX)


def parse_hf(spec: str) -> tuple[str, str | None, str | None]:
    """`hf://OWNER/REPO[@REVISION][/FILE]` -> (repo id, revision or None, file or None)."""
    owner, _, rest = spec.removeprefix(HF_PREFIX).partition("/")
    name, _, filename = rest.partition("/")
    name, at, revision = name.partition("@")
    if not spec.startswith(HF_PREFIX) or not owner or not name or (at and not revision):
        raise BundleError(f"{spec}: not a Hugging Face Hub model path, expected {SYNTAX}")
    return f"{owner}/{name}", unquote(revision) if at else None, filename.strip("/") or None


def resolve_hf(spec: str) -> Path:
    """The local file (in the Hugging Face cache) of `hf://...`, downloaded when not cached:
    FILE when named, else `model.pt`, else the repository's one `*.nemo` file."""
    repo_id, revision, filename = parse_hf(spec)
    import huggingface_hub as hub

    if filename:
        return Path(_hub_call(spec, hub.hf_hub_download, repo_id, filename, revision=revision))
    patterns = [BUNDLE_FILE, NEMO_PATTERN]
    folder = Path(
        _hub_call(spec, hub.snapshot_download, repo_id, revision=revision, allow_patterns=patterns)
    )
    if (folder / BUNDLE_FILE).is_file():
        return folder / BUNDLE_FILE
    nemo = sorted(p for p in folder.rglob(NEMO_PATTERN) if p.is_file())
    if len(nemo) == 1:
        return nemo[0]
    pick = f"{spec.rstrip('/')}/FILE"
    if nemo:
        names = ", ".join(str(p.relative_to(folder)) for p in nemo)
        raise BundleError(f"{spec} holds several .nemo files ({names}); name one: {pick}")
    holds = _repo_files(repo_id, revision, folder)
    raise BundleError(
        f"{spec} has neither {BUNDLE_FILE} nor a .nemo file ({holds}); name the file: {pick}"
    )


def _repo_files(repo_id: str, revision: str | None, folder: Path) -> str:
    """What the repository holds, from the Hub, or offline from its cached snapshot folder."""
    import huggingface_hub as hub

    try:
        files = hub.HfApi().list_repo_files(repo_id, revision=revision)
        where = "it holds"
    except Exception:  # offline or unreachable: the cache is all there is to go by
        files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        where = "its cached files are"
    return f"{where}: {', '.join(sorted(files)) or 'nothing'}"


def _hub_call(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs); any failure becomes one BundleError line "<what>: <why>".

    Everything is caught: huggingface_hub raises its own errors, but also those of its HTTP
    client (httpx or requests, by version) and of the file system, and a user gets one line
    whichever it was.
    """
    try:
        return call(*args, **kwargs)
    except Exception as err:
        raise BundleError(f"{what}: {_explain(err)}") from None


def _explain(err: Exception) -> str:
    """One line saying why a huggingface_hub call failed and what to do about it."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "log in with `hf auth login`, set HF_TOKEN or pass a token"
    # Subclasses before their bases: GatedRepoError is a RepositoryNotFoundError and
    # LocalEntryNotFoundError an EntryNotFoundError.
    if isinstance(err, GatedRepoError):
        return f"a gated repository: accept its conditions on its Hub page, then {login}"
    if isinstance(err, RepositoryNotFoundError):
        return f"no such model repository on the Hugging Face Hub (if it is private: {login})"
    if isinstance(err, RevisionNotFoundError):
        return "no such revision (branch, tag or commit) in the repository"
    if isinstance(err, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return (
                "not in the local Hugging Face cache and HF_HUB_OFFLINE is set; run once online "
                "or unset HF_HUB_OFFLINE"
            )
        return (
            f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) and not in the local cache "
            f"({constants.HF_HUB_CACHE}); check the network"
        )
    if isinstance(err, EntryNotFoundError):
        return "no such file in the repository"
    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set; unset it to reach the Hugging Face Hub"
    if isinstance(err, HfHubHTTPError):
        status = getattr(err.response, "status_code", None)
        if status == 401:
            return f"the Hugging Face Hub refused the token (HTTP 401): {login}"
        if status == 403:
            return "permission denied (HTTP 403): the token may not write to this repository"
        return f"the Hugging Face Hub answered HTTP {status}: {_first_line(err)}"
    if _is_network_error(err):
        return f"cannot reach the Hugging Face Hub at {constants.ENDPOINT}: {_first_line(err)}"
    return _first_line(err)


def _is_network_error(err: Exception) -> bool:
    # huggingface_hub 0.x talks through requests, 1.x and later through httpx: neither's
    # exceptions are a common base of the other's, so their modules tell them apart.
    client = type(err).__module__.split(".")[0] in ("requests", "urllib3", "httpx", "httpx2")
    return client or isinstance(err, ConnectionError | TimeoutError)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def model_card(bundle: ModelBundle | str | Path, repo_id: str) -> str:
    """A README.md for the Hub: YAML front matter, then architecture, tokenizer, features,
    training, results and usage. Every number comes from the bundle; what its info does not
    record is said to be not recorded, never guessed."""
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    info = bundle.info
    sections = [
        _card_title(bundle, repo_id),
        _card_architecture(bundle),
        _card_tokenizer(bundle),
        _card_features(bundle),
        _card_training(info),
        _card_results(info),
        _card_usage(repo_id),
    ]
    front = yaml.safe_dump(_front_matter(info, repo_id), sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n\n".join(sections) + "\n"


def _front_matter(info: dict[str, Any], repo_id: str) -> dict[str, Any]:
    front: dict[str, Any] = {
        "library_name": "asr",
        "pipeline_tag": "automatic-speech-recognition",
        "tags": ["conformer", "ctc", "speech-recognition"],
    }
    if isinstance(info.get("license"), str):
        front["license"] = info["license"]
    metrics = [
        {"type": key.rsplit("_", 1)[-1], "value": round(float(info[key]), 2), "name": label}
        for key, label, _ in RESULT_KEYS
        if _is_number(info.get(key))
    ]
    if metrics:
        # The Hub wants a dataset per result; a bundle records no more than "validation".
        dataset = {"name": "validation set of the training run", "type": "custom"}
        task = {"type": "automatic-speech-recognition", "name": "Speech Recognition"}
        results = [{"task": task, "dataset": dataset, "metrics": metrics}]
        front["model-index"] = [{"name": repo_id.split("/")[-1], "results": results}]
    return front


def _card_title(bundle: ModelBundle, repo_id: str) -> str:
    lines = [
        f"# {repo_id}",
        "",
        "A Conformer-CTC speech recognition model (Gulati et al. 2020: Conformer encoder, CTC "
        "head) for the `asr` toolkit: a self-contained `model.pt` bundle holding the weights, "
        "the log-mel front end and the tokenizer, loaded with `torch.load(weights_only=True)`.",
    ]
    if bundle.info.get("source") == "nemo":
        nemo = bundle.info.get("nemo_file", "a .nemo file")
        lines += ["", f"Converted from the NVIDIA NeMo checkpoint `{nemo}` by `asr import-nemo`."]
    return "\n".join(lines)


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def _card_architecture(bundle: ModelBundle) -> str:
    config = bundle.model.config
    parameters = sum(p.numel() for p in bundle.model.parameters())
    rows = [
        ("`d_model`", config.d_model),
        ("`num_layers`", config.num_layers),
        ("`num_heads`", config.num_heads),
        ("`conv_kernel_size`", config.conv_kernel_size),
        ("`subsampling_factor`", config.subsampling_factor),
        ("`causal_conv` (streaming)", str(config.causal_conv).lower()),
        ("`chunk_conv` (streaming)", str(config.chunk_conv).lower()),
        ("parameters", f"{parameters:,}"),
    ]
    return "## Architecture\n\n" + _table(rows)


def _card_tokenizer(bundle: ModelBundle) -> str:
    tokenizer = bundle.tokenizer
    rows = [("kind", tokenizer.kind), ("vocabulary size (CTC outputs, blank included)",
                                      tokenizer.vocab_size)]  # fmt: skip
    return "## Tokenizer\n\n" + _table(rows)


def _card_features(bundle: ModelBundle) -> str:
    config = bundle.frontend.config
    rows = [
        ("sample rate", f"{config.sample_rate} Hz"),
        ("mel bins (`n_mels`)", config.n_mels),
        ("window / hop", f"{config.win_ms:g} ms / {config.hop_ms:g} ms"),
        ("normalization", config.normalize),
    ]
    return "## Features\n\n" + _table(rows)


def _card_training(info: dict[str, Any]) -> str:
    rows = []
    for key, label in TRAINING_KEYS:
        value = info.get(key)
        if value is None or value == "":
            value = "not recorded"
        elif key == "train_seconds" and _is_number(value):
            value = f"{value:.0f} s ({value / 3600:.2f} h)"
        rows.append((label, value))
    return "## Training\n\n" + _table(rows)


def _card_results(info: dict[str, Any]) -> str:
    rows = [(label, f"{info[key]:.2f}{unit}") for key, label, unit in RESULT_KEYS
            if _is_number(info.get(key))]  # fmt: skip
    if not rows:
        return "## Results\n\nNo results are recorded in this bundle."
    return "## Results\n\n" + _table(rows)


def _card_usage(repo_id: str) -> str:
    return (
        "## Usage\n\n"
        "```bash\n"
        "pip install .   # in a checkout of the asr toolkit\n"
        f"asr transcribe --model hf://{repo_id} audio.wav\n"
        "```\n\n"
        "```python\n"
        "import asr\n\n"
        f'model = asr.load_model("hf://{repo_id}")\n'
        'print(model.transcribe(["audio.wav"])[0].text)\n'
        "```"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def push_to_hub(
    model: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload asr model bundle",
) -> str:
    """Upload the bundle `model` (a model.pt or a shipped model's name) as `model.pt`, with its
    model card as README.md, in one commit to the model repository `repo_id` (OWNER/NAME or
    hf://OWNER/NAME), creating the repository (and the branch `revision`) when missing.

    The bundle is loaded first, so a file that is not one fails before any network. Returns
    the repository's URL.
    """
    import huggingface_hub as hub

    repo_id = repo_id.removeprefix(HF_PREFIX)
    owner, _, name = repo_id.partition("/")
    if not owner or not name or "/" in name or "@" in repo_id:
        raise ValueError(f"repository {repo_id!r}: expected OWNER/NAME")
    path = bundle_path(model)
    if path.suffix.lower() == ".nemo":
        raise BundleError(f"{path} is a NeMo checkpoint: convert it first with "
                          f"`asr import-nemo {path} --output model.pt`")  # fmt: skip
    bundle = load_bundle(path)
    what = f"cannot push to hf://{repo_id}"
    token = token or hub.get_token()
    if not token:
        raise BundleError(f"{what}: no Hugging Face token; log in with `hf auth login` or set "
                          f"HF_TOKEN")  # fmt: skip
    api = hub.HfApi(token=token)
    # Without --private an organization's default visibility applies (None), not "public".
    url = _hub_call(what, api.create_repo, repo_id, private=private or None, exist_ok=True)
    if revision:
        _hub_call(what, api.create_branch, repo_id, branch=revision, exist_ok=True)
    card = model_card(bundle, repo_id).encode("utf-8")
    operations = [
        hub.CommitOperationAdd(path_in_repo=BUNDLE_FILE, path_or_fileobj=str(path)),
        hub.CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card),
    ]
    _hub_call(what, api.create_commit, repo_id, operations=operations,
              commit_message=commit_message, revision=revision)  # fmt: skip
    return f"{url}/tree/{revision}" if revision else str(url)
