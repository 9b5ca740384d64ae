"""The package's import structure: no cycles, and each path loads only what it needs.

The static graph holds every `import` of every module of `asr`, including the ones inside
functions (a lazy import is still a dependency), so a cycle or a heavy import cannot hide
behind a function body. The runtime checks load a real model and transcribe in a fresh process.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "asr"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(eager_only: bool = False) -> dict[str, set[str]]:
    """module -> the modules (of asr or outside) it imports anywhere in its body, or only at
    module level (`eager_only`: what importing the module runs)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = _module_level(tree) if eager_only else ast.walk(tree)
        edges = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from asr.cli import demo` names a submodule: depend on it, not the package
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                edges.update(subs or {node.module})
        graph[name] = {e for e in edges if e != "__future__"}
    return graph


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """The statements run on import: everything outside function bodies and TYPE_CHECKING."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle among the package's own modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def reachable(start: str) -> set[str]:
    """Every module that code of `start` may import, transitively.

    Lazy imports count: a function may run. Importing `a.b.c` also runs `a/__init__` and
    `a/b/__init__`, but only their module-level imports (their functions are not called).
    Outside packages appear by their top-level name.
    """
    lazy, eager = import_graph(), import_graph(eager_only=True)
    seen: set[str] = set()
    todo = [(start, lazy)]
    while todo:
        node, graph = todo.pop()
        if (node, id(graph)) in seen:
            continue
        seen.add((node, id(graph)))
        parts = node.split(".")
        parents = [".".join(parts[:k]) for k in range(1, len(parts))]
        todo += [(p, eager) for p in parents if p in lazy]
        todo += [(n, graph) for n in graph.get(node, ())]
    names = {node for node, _ in seen}
    return {n if n in lazy else n.split(".")[0] for n in names}


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {find_cycle(import_graph())}"


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c", "numpy"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("heavy", ["lightning", "pytorch_lightning", "matplotlib"])
def test_inference_can_never_import_lightning_or_matplotlib(heavy):
    for entry in ("asr.inference.transcribe", "asr.inference.formats", "asr.inference.lm",
                  "asr.inference.onnx", "asr.export.onnx", "asr.serving.app"):  # fmt: skip
        assert heavy not in reachable(entry), f"{entry} may import {heavy}"


def test_training_can_never_import_matplotlib():
    for entry in ("asr.training.train", "asr.cli.train"):
        assert "matplotlib" not in reachable(entry), f"{entry} may import matplotlib"


@pytest.mark.parametrize("outside", ["lightning", "pytorch_lightning"])
def test_only_training_and_corpus_jobs_import_lightning(outside):
    users = {
        m for m, edges in import_graph().items() if any(e.split(".")[0] == outside for e in edges)
    }
    assert {u.split(".")[1] for u in users} <= {"training", "jobs"}, sorted(users)


# The rooms of the package, bottom to top: a room may import only rooms on a lower floor (same
# floor: neither imports the other). The package's own __init__ (the public API) is outside.
FLOORS = [
    {"asr.config_io", "asr.text", "asr.extras", "asr.bars", "asr.resampling"},
    {"asr.config"},
    {"asr.modules", "asr.tokenizer"},
    {"asr.audio", "asr.model"},
    {"asr.augment", "asr.checkpoint"},
    {"asr.data"},
    {"asr.corpora"},
    {"asr.interop"},
    {"asr.inference"},
    {"asr.export", "asr.scoring", "asr.serving", "asr.recipe"},
    {"asr.training", "asr.jobs"},
    {"asr.demo"},
    {"asr.cli"},
]


def room(module: str) -> str:
    """asr.inference.engine -> asr.inference; asr.config -> asr.config."""
    return ".".join(module.split(".")[:2])


def test_every_room_is_on_a_floor():
    rooms = {room(m) for m in import_graph()} - {"asr"}
    placed = set().union(*FLOORS)
    assert rooms <= placed, f"rooms on no floor: {sorted(rooms - placed)}"


def test_every_import_points_down():
    floor = {name: level for level, names in enumerate(FLOORS) for name in names}
    upward = sorted(
        f"{m} -> {e}"
        for m, edges in import_graph().items()
        if room(m) != "asr"
        for e in edges
        if e.startswith("asr.") and room(e) != room(m)
        and floor.get(room(e), -1) >= floor.get(room(m), -1)
    )  # fmt: skip
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_the_floor_check_finds_an_upward_import(monkeypatch):
    graph = {"asr.model": {"asr.inference.engine"}, "asr.inference.engine": {"asr.model"}}
    monkeypatch.setattr(sys.modules[__name__], "import_graph", lambda eager_only=False: graph)
    with pytest.raises(AssertionError, match="asr.model -> asr.inference.engine"):
        test_every_import_points_down()


def test_nothing_imports_the_cli():
    users = sorted(
        m for m, edges in import_graph().items()
        if room(m) != "asr.cli" and any(room(e) == "asr.cli" for e in edges)
    )  # fmt: skip
    assert not users, f"the CLI is imported by {users}"


def test_the_model_never_imports_data_training_inference_or_the_cli():
    for entry in ("asr.model", "asr.modules.conformer"):
        forbidden = {
            m for m in reachable(entry)
            if m.startswith(("asr.data", "asr.training", "asr.inference", "asr.cli"))
        }  # fmt: skip
        assert not forbidden, f"{entry} imports {sorted(forbidden)}"


def test_loading_a_model_and_transcribing_imports_neither_lightning_nor_matplotlib(tmp_path):
    from asr.audio import LogMelFeatures
    from asr.checkpoint import save_bundle
    from asr.config import EncoderConfig, FeatureConfig
    from asr.model import CtcModel
    from asr.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("abc")
    config = EncoderConfig(d_model=16, num_layers=1, num_heads=2, subsampling_channels=8)
    model = CtcModel(config, tokenizer.vocab_size)
    save_bundle(tmp_path / "model.pt", model, LogMelFeatures(FeatureConfig()), tokenizer)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import asr
        model = asr.load_model({str(tmp_path / "model.pt")!r})
        result = model.transcribe((np.zeros(16000, dtype=np.float32), 16000))[0]
        assert result.error is None, result.error
        print(sorted(m for m in ("lightning", "pytorch_lightning", "matplotlib") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
