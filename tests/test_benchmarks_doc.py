"""Every command quoted in BENCHMARKS.md runs as written on today's tree (issue 27).

A command is what a reader would copy: a line of a ```bash block (backslash continuations
joined), an indented code block, a ```python block, or an inline `...` span that starts with a
program (`python`, `.venv/bin/python`, `asr`, `bash`, ...). Nothing is run; each is checked as
far as can be done without running it:

- `python bench/X.py ARGS`: the script exists, is imported (its imports resolve), and its own
  `main()` parses ARGS (`ArgumentParser.parse_args` is intercepted, so the benchmark itself never
  starts); dotted `key=value` overrides load with the config they go to; every
  `from asr... import name` in the script, also inside functions, resolves.
- `asr CMD ARGS`: `asr.cli.build_parser()` parses them; `train` and `demo` overrides load with
  their config. A mention without values (`asr pack`, `asr evaluate --model`) must name an
  existing subcommand and options.
- `bash scripts/X.sh ARGS`: the script exists, and ARGS are checked as the `asr` command the
  script hands "$@" to.
- `python -c CODE` and ```python blocks: every import resolves, names taken from a `*` import
  exist, and calls of imported functions accept their keyword arguments.
- Inline spans of `dotted.key=value` overrides only: the keys exist in the config.

A command that no longer runs may instead be marked "(historical: ran at commit HASH; today:
...)": right after an inline span, in a block's comment, or in the paragraph right after a
block. Such a command is not checked, but HASH must be a commit of this repository.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import importlib
import importlib.util
import inspect
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "BENCHMARKS.md"
HISTORICAL = re.compile(r"historical:\s+ran\s+at\s+commit\s+([0-9a-f]{7,40})\b")
PROGRAM = re.compile(r"^(time\s+)?(\.venv/bin/python|python3?|asr|bash|\.venv/bin/pip|git)\s")
OVERRIDE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*=\S+$")
# Placeholders the document uses inside commands: dropped, or stood in for by a value.
DROPPED_PLACEHOLDERS = {"OVERRIDES"}
VALUE_PLACEHOLDERS = {"...": "PLACEHOLDER"}
# Programs that are not this tree's: setting up another environment, cloning, installing.
EXTERNAL = {"git", "cd", "echo", "pip"}
# The config a bench script's positional overrides go to when it has no --config option.
BENCH_CONFIG = {"an4_standin": REPO / "configs" / "an4.yaml"}  # recipes/an4/run.py's CONFIG


@dataclass
class Quoted:
    line: int
    kind: str  # "shell": one command line; "python": a block of Python; "overrides"
    text: str
    historical: str | None  # the commit it ran at, when marked historical

    def __str__(self) -> str:
        return f"BENCHMARKS.md:{self.line}: {self.text[:150]!r}"


def _marker(text: str) -> str | None:
    match = HISTORICAL.search(text)
    return match.group(1) if match else None


def _paragraph_after(text: str, end: int) -> str:
    """The text after position `end` up to the next blank line."""
    rest = text[end:].lstrip("\n")
    return rest.split("\n\n", 1)[0]


def _shell_lines(block: str, first_line: int) -> list[tuple[int, str]]:
    """Logical lines of a shell block (continuations joined) with their document line."""
    lines, current, start = [], "", first_line
    for offset, raw in enumerate(block.splitlines()):
        if not current:
            start = first_line + offset
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append((start, current + raw))
        current = ""
    if current:
        lines.append((start, current))
    return lines


def _commands_of_line(line_no: int, line: str, block_marker: str | None) -> list[Quoted]:
    """One shell line -> its commands (split on &&), each with its own or the block's marker."""
    marker = _marker(line) or block_marker
    return [Quoted(line_no, "shell", part.strip(), marker) for part in line_split(line)]


def line_split(line: str) -> list[str]:
    """A shell line without its comment, split into the commands joined by `&&`."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in ("&&", ";", "||"):
            commands.append(shlex.join(current))
            current = []
        else:
            current.append(token)
    if current:
        commands.append(shlex.join(current))
    return [c for c in commands if c]


def quoted_commands(text: str) -> list[Quoted]:
    """Every command quoted in the markdown `text`, in document order."""
    found: list[Quoted] = []
    fence = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
    outside = []  # (start, end) of the text between fenced blocks
    position = 0
    for match in fence.finditer(text):
        outside.append((position, match.start()))
        position = match.end()
        language, body = match.group(1), match.group(2)
        first_line = text.count("\n", 0, match.start(2)) + 1
        after = _paragraph_after(text, match.end())
        block_marker = _marker(after) or _marker(body.split("\n", 1)[0])
        if language == "python":
            found.append(Quoted(first_line, "python", body, _marker(body) or block_marker))
        else:
            for line_no, line in _shell_lines(body, first_line):
                found.extend(_commands_of_line(line_no, line, block_marker))
    outside.append((position, len(text)))

    for start, end in outside:
        chunk = text[start:end]
        base = text.count("\n", 0, start) + 1
        lines = chunk.split("\n")
        for i, line in enumerate(lines):  # indented code blocks (4 spaces after a blank line)
            code = re.match(r"^ {4}(\S.*)$", line)
            after_blank = i > 0 and (lines[i - 1].strip() == "" or lines[i - 1].startswith("    "))
            if code and after_blank and PROGRAM.match(code.group(1) + " "):
                found.extend(_commands_of_line(base + i, code.group(1), None))
        for span in re.finditer(r"`([^`]+)`", chunk):
            content = " ".join(span.group(1).split())
            line_no = base + chunk.count("\n", 0, span.start())
            following = re.split(r"`|\n\s*\n", chunk[span.end() :], maxsplit=1)[0]
            marker = _marker(following)
            if PROGRAM.match(content + " "):
                found.extend(Quoted(line_no, "shell", part, marker) for part in line_split(content))
            elif all(OVERRIDE.match(token) for token in content.split()):
                found.append(Quoted(line_no, "overrides", content, marker))
    return sorted(found, key=lambda q: q.line)


# --------------------------------------------------------------------------------------------
# Checks: each returns a list of problems (empty: the command runs as written)


def _load_config_problems(config: Path | str, overrides: list[str]) -> list[str]:
    from asr.config import load_config

    try:
        load_config(REPO / config, overrides)
    except ValueError as err:
        return [f"overrides {overrides} on {config}: {err}"]
    return []


def check_python(code: str) -> list[str]:
    """Imports resolve, names from `*` imports exist, imported callables take the keywords."""
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        return [f"not valid Python: {err}"]
    problems: list[str] = []
    names: dict[str, object] = {}
    star: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                try:
                    module = importlib.import_module(alias.name)
                except ImportError as err:
                    problems.append(f"import {alias.name}: {err}")
                    continue
                names[alias.asname or alias.name.split(".")[0]] = module
        elif isinstance(node, ast.ImportFrom) and node.module:
            try:
                module = importlib.import_module(node.module)
            except ImportError as err:
                problems.append(f"from {node.module} import ...: {err}")
                continue
            for alias in node.names:
                if alias.name == "*":
                    public = getattr(module, "__all__", None) or [
                        n for n in dir(module) if not n.startswith("_")
                    ]
                    star.update({n: getattr(module, n) for n in public if hasattr(module, n)})
                elif hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
                else:
                    problems.append(f"{node.module} has no {alias.name!r}")
    bound = set(names) | set(star) | set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
            problems.append(f"name {node.id!r} is not defined (not in any import)")
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        target = names.get(node.func.id, star.get(node.func.id))
        if target is None or not callable(target):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            continue  # *args / **kwargs: the call's arguments are not known here
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind_partial(*node.args, **{k.arg: None for k in node.keywords})
        except TypeError as err:
            problems.append(f"{node.func.id}(...): {err}")
    return problems


def _parse_asr(argv: list[str]) -> tuple[argparse.Namespace | None, list[str]]:
    from asr.cli import build_parser

    parser = build_parser()
    if all(token.startswith("-") for token in argv[1:]):
        # A mention of a subcommand or of its options (`asr pack`, `asr evaluate --model`)
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if argv[0] not in subparsers.choices:
            return None, [f"asr has no subcommand {argv[0]!r}"]
        options = subparsers.choices[argv[0]]._option_string_actions
        return None, [f"asr {argv[0]} has no option {t}" for t in argv[1:] if t not in options]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv), []
    except SystemExit:
        return None, [f"asr {shlex.join(argv)}: {stderr.getvalue().strip().splitlines()[-1]}"]


def check_asr(argv: list[str]) -> list[str]:
    args, problems = _parse_asr(argv)
    if args is None or not getattr(args, "overrides", None):
        return problems
    if args.command == "train":
        return _load_config_problems(args.config, args.overrides)
    if args.command == "demo":
        from asr.demo import CONFIG

        return _load_config_problems(CONFIG, args.overrides)
    return [f"asr {args.command}: overrides {args.overrides} go to an unknown config"]


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


_SCRIPTS: dict[Path, object] = {}


def _bench_module(path: Path) -> object:
    if path not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"_benchmarks_doc_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return _SCRIPTS[path]


def _script_import_problems(path: Path) -> list[str]:
    """Every `from asr... import name` of the script, at any depth, resolves."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asr":
            problems += [f"{path.name}: {p}" for p in check_python(ast.unparse(node))]
    return problems


def check_bench_script(path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The script's own main() parses `args`; the benchmark itself is never started."""
    original = argparse.ArgumentParser.parse_args

    def intercept(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    stderr = io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "path", [str(path.parent), *sys.path])
        patch.setattr(sys, "argv", [str(path), *args])
        patch.setattr(argparse.ArgumentParser, "parse_args", intercept)
        try:
            module = _bench_module(path)
        except Exception as err:  # any failure to import is the finding
            return [f"importing {path.name}: {type(err).__name__}: {err}"]
        try:
            with contextlib.redirect_stderr(stderr):
                module.main()
        except _Parsed as parsed:
            namespace = parsed.namespace
        except SystemExit:
            return [f"{path.name} {shlex.join(args)}: {stderr.getvalue().strip()}"]
        else:
            return [f"{path.name}: main() returned without parsing its arguments"]
    problems = _script_import_problems(path)
    overrides = getattr(namespace, "overrides", None)
    if overrides:
        config = getattr(namespace, "config", None) or BENCH_CONFIG.get(path.stem)
        if config is None:
            problems.append(f"{path.name}: which config do the overrides {overrides} go to?")
        else:
            problems += _load_config_problems(config, overrides)
    return problems


def check_pytest_options(args: list[str]) -> list[str]:
    """Options handed on to pytest must be ones pytest's own help lists."""
    shown = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=REPO,
                           capture_output=True, text=True).stdout  # fmt: skip
    known = set(re.findall(r"(?<![\w-])(-{1,2}[\w-]+)", shown))
    return [f"pytest has no option {a!r}" for a in args if a.startswith("-") and a not in known]


def check_shell(command: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    tokens = [VALUE_PLACEHOLDERS.get(t, t) for t in shlex.split(command)]
    tokens = [t for t in tokens if t not in DROPPED_PLACEHOLDERS]
    if tokens and tokens[0] == "time":
        tokens = tokens[1:]
    program, args = tokens[0], tokens[1:]
    if program in EXTERNAL or program.endswith("/pip"):
        return []
    if program in ("python", "python3", ".venv/bin/python"):
        if args[:2] == ["-m", "venv"]:
            return []
        if args and args[0] == "-c":
            return check_python(args[1])
        if args and args[0].endswith(".py"):
            script = REPO / args[0]
            if not script.is_file():
                return [f"{args[0]} does not exist"]
            if script.parent.name == "bench":
                return check_bench_script(script, args[1:], monkeypatch)
        return [f"no check for {command!r}"]
    if program == "asr":
        return check_asr(args)
    if program == "bash" and args and args[0].startswith("scripts/"):
        script = REPO / args[0]
        if not script.is_file():
            return [f"{args[0]} does not exist"]
        handed = re.search(r'^\s*asr (\S+) "\$@"', script.read_text(), re.M)
        if handed:
            return check_asr([handed.group(1), *args[1:]])
        if args[1:] and re.search(r'^\s*python -m pytest "\$@"', script.read_text(), re.M):
            return check_pytest_options(args[1:])
        return [] if not args[1:] else [f"{args[0]}: where do {args[1:]} go?"]
    return [f"no check for {command!r}"]


def test_every_command_in_benchmarks_runs_on_todays_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    commands = quoted_commands(DOC.read_text())
    assert len(commands) > 30, "the parser lost the document's commands"
    problems = []
    for quoted in commands:
        if quoted.historical:
            continue
        if quoted.kind == "python":
            found = check_python(quoted.text)
        elif quoted.kind == "overrides":
            found = _load_config_problems("configs/demo.yaml", quoted.text.split())
        else:
            found = check_shell(quoted.text, monkeypatch)
        problems += [f"{quoted}: {p}" for p in found]
    assert not problems, "\n".join(problems)


def test_historical_commands_name_a_commit_of_this_repository() -> None:
    marked = {q.historical for q in quoted_commands(DOC.read_text()) if q.historical}
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO,
                             capture_output=True, text=True)  # fmt: skip
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
        pytest.skip("not a full git checkout: old commits cannot be looked up")
    for commit in sorted(marked):
        found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO,
                               capture_output=True)  # fmt: skip
        assert found.returncode == 0, f"BENCHMARKS.md: historical at {commit}, not a commit here"


def test_the_parser_finds_commands_in_every_form() -> None:
    text = """
```bash
python bench/a.py --x 1 \\
    --y 2   # a comment
git clone . /tmp/f && bash scripts/test.sh
```

```python
from asr.config import load_config
```

(historical: ran at commit abc1234; today: `asr presets`)

    python bench/b.py --z   # 1f79589

Inline `asr demo --work-dir W` and `.venv/bin/python -c "import asr"` (historical: ran at
commit def5678; today: ...), overrides `encoder.dropout=0.0 encoder.attn_dropout=0.0`.
"""
    found = [(q.kind, q.text, q.historical) for q in quoted_commands(text)]
    assert found == [
        ("shell", "python bench/a.py --x 1 --y 2", None),
        ("shell", "git clone . /tmp/f", None),
        ("shell", "bash scripts/test.sh", None),
        ("python", "from asr.config import load_config\n", "abc1234"),
        ("shell", "asr presets", None),
        ("shell", "python bench/b.py --z", None),
        ("shell", "asr demo --work-dir W", None),
        ("shell", ".venv/bin/python -c 'import asr'", "def5678"),
        ("overrides", "encoder.dropout=0.0 encoder.attn_dropout=0.0", None),
    ]


@pytest.mark.parametrize(
    "command",
    [
        "python bench/demo.py --no-such-flag 1",
        "python bench/no_such_script.py",
        "python bench/real_speech.py --config configs/an4.yaml --name x encoder.no_such_key=1",
        "python bench/an4_standin.py trainer.no_such_key=1",
        "asr train --config configs/demo.yaml --no-such-flag",
        "asr demo --work-dir W optim.no_such_key=1",
        "asr evaluate --no-such-flag",
        "asr no-such-command",
        "bash scripts/demo.sh --no-such-flag",
        "python -c 'from asr.corpus import make_demo_corpus'",
        "python -c 'from asr.corpora.synthetic import *; CorpusConfig(no_such_field=1)'",
        "python -c 'from asr.demo import BEAM'",
    ],
)
def test_the_checks_catch_what_no_longer_runs(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert check_shell(command, monkeypatch)
