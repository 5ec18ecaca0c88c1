"""The package's layers (ARCHITECTURE.md): every import, the ones inside functions included, points to the same
layer or one below it, and no two modules import each other, directly or round a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    "utils",  # errors, atomic IO, seeds, output folders, locks, signals, log format: nothing of plad
    "config",  # the settings (dataclasses) and their loader
    "benchmark",  # the built-in tasks and the tiny models the demo builds
    "core",  # losses, log-probs, the methods table, batching, data rows, model loading
    "scoring",  # ROUGE-L, exact match, task scorers
    "endpoint",  # the HTTP client and the request pool
    "generation",  # sampling backends and `plad pairs`
    "train",  # the training loop, `plad sft`, `plad distill`
    "evaluation",  # `plad eval`, judges, calibration, win rates
    "reporting",  # tables, plots, `plad report`
    "prepare",  # `plad prepare`, `plad prune`, healing
    "experiments",  # `plad run`, `plad bench`, `plad sweep`
    "cli",
]
PUBLIC = {"plad.losses"}  # import paths kept for users: re-exports, imported by nothing inside plad


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "plad").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The plad modules `name` imports, anywhere in the file (inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from plad.utils import signals` imports the module plad.utils.signals
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                out.add(target)
                break
    return out


def layer(name: str) -> int | None:
    """The layer of a module; None for the package root (only its version string)."""
    parts = name.split(".")
    if len(parts) == 1:
        return None
    return LAYERS.index(parts[1])


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    for name in modules():
        if name == "plad" or name in PUBLIC:
            continue
        assert name.split(".")[1] in LAYERS, f"{name}: add its folder to LAYERS here and to ARCHITECTURE.md"


def test_imports_point_down():
    wrong = []
    for name, targets in graph().items():
        if name in PUBLIC:
            continue
        for target in targets:
            assert target not in PUBLIC, (
                f"{name} imports {target}, a public re-export: import the module itself"
            )
            if target != "plad" and layer(target) > layer(name):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above would fail on a tree that breaks the rules (a check that cannot fail proves nothing)."""
    pkg = tmp_path / "plad"
    for rel, text in {
        "__init__.py": "",
        "utils/__init__.py": "",
        "utils/a.py": "def f():\n    from plad.core import b\n",  # upward, inside a function
        "core/__init__.py": "",
        "core/b.py": "from plad.utils import a\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    with pytest.raises(AssertionError, match="plad.utils.a -> plad.core.b"):
        test_imports_point_down()
    with pytest.raises(
        pytest.fail.Exception, match="import cycle: plad.core.b -> plad.utils.a -> plad.core.b"
    ):
        test_no_import_cycles()


@pytest.mark.parametrize("argv", [["methods"], ["tasks"], ["sft", "--help"]])
def test_commands_that_load_no_model_import_no_torch(argv):
    """Printing a table or a command's help starts in a fraction of a second: torch and transformers are imported
    by the modules that load models, not by the CLI."""
    probe = (
        "import sys, contextlib, io, plad.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        plad.cli.main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_every_command_has_one_shape():
    """Every command: a config dataclass and one entry function `entry(cfg, **flags) -> dict` whose keyword-only
    parameters are exactly the command's flags (and whose first parameter is annotated with its config)."""
    import dataclasses
    import inspect
    import typing

    from plad.cli import COMMANDS, _resolve

    for name, command in COMMANDS.items():
        assert dataclasses.is_dataclass(command.config), name
        entry = _resolve(command.entry)
        params = list(inspect.signature(entry).parameters.values())
        hints = typing.get_type_hints(entry)
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        assert hints[params[0].name] is command.config, name
        assert hints["return"] in (dict, dict[str, typing.Any]), name
        keyword = {p.name for p in params[1:] if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert keyword == {f.name for f in command.flags} and len(params) == 1 + len(keyword), name
        if command.show:
            assert callable(_resolve(command.show)), name
