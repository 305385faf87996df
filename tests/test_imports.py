"""No import circles among tracekit's modules, and every module imports on the host.

A circle makes the import order matter (a name is missing while its module is half
run) and ties modules that should not know each other; one hid for a while between
tracekit/cli/main.py and the labs: the CLI named ``tracekit.lab.cli`` in its table of
lazily imported commands, which imported ``tracekit.cli.main`` inside a function. So
imports inside functions count here, and so does a string naming a tracekit module
(what ``importlib.import_module`` is given); only imports under ``if
TYPE_CHECKING:`` (never run) do not, nor ``DEFAULT_PLUGINS``: the bus loads the
built-in plugins by name exactly as it loads third-party ones, which import the
bus's modules in turn; that is the plugin contract, not a circle.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each part of the installed package lives in the repository (pyproject.toml's
# package-dir).
PACKAGE_DIRS = {
    "tracekit": ROOT / "tracekit",
    "tracekit.probes": ROOT / "probes",
    "tracekit.plugins": ROOT / "plugins",
}


# Tables of module names that are not imports: the built-ins the bus loads by name, and
# the old paths tracekit._compat forwards (the old name imports the new, not the reverse).
_NOT_IMPORTS = {"DEFAULT_PLUGINS", "MOVED_MODULES"}


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, base in PACKAGE_DIRS.items():
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "templates" in parts:
                continue
            out[".".join([pkg, *parts])] = path
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The tracekit modules ``name`` imports anywhere but under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id in _NOT_IMPORTS for t in targets):
                return
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            found.add(node.value)
        elif isinstance(node, ast.Import):
            for a in node.names:
                found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # A name from one's own package (``from . import KINDS`` in a probe's plot.py) is
    # no circle even when the package imports that submodule back: Python runs a
    # package's __init__ completely before any of its submodules, in any order.
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def test_the_graph_sees_the_imports_it_should() -> None:
    """The walker itself: known edges, relative and in-function imports included."""
    g = graph()
    assert "tracekit.plugin.registry" in g["tracekit.plugin.bus"]
    assert "tracekit.lab.traced" in g["tracekit.lab.txq_flip"]
    assert "tracekit.bpf.preflight" in g["tracekit.cli.main"]  # imported inside check_cmd
    assert "tracekit.fleet.export" in g["tracekit.cli.main"]  # named in LAZY_COMMANDS
    assert "tracekit.plugin.bus" in g["tracekit.lab"]  # imported inside _seeds
    assert "tracekit.lab" not in g["tracekit.plugin.bus"]  # a plugin: loaded by name
    assert "tracekit.lab.netns" in g
    assert len(g) > 50


def test_no_import_circles() -> None:
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_a_circle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import tracekit.x\n"
        "def f():\n    from .y import z\n"
    )
    known = {"tracekit.m", "tracekit.x", "tracekit.y", "tracekit.y.z", "tracekit.w"}
    assert imports_of("tracekit.m", tmp_path / "m.py", known) == {"tracekit.y.z"}
    (tmp_path / "m.py").write_text(
        "LAZY = {'w': 'tracekit.w'}\nDEFAULT_PLUGINS = ('tracekit.x',)\n"
    )
    assert imports_of("tracekit.m", tmp_path / "m.py", known) == {"tracekit.w"}


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports(name: str) -> None:
    """Each module imports on its own (BCC, absent on the host, is imported lazily)."""
    if name.endswith("__main__"):
        pytest.skip("runs the CLI")
    importlib.import_module(name)


def test_tracekit_run_does_not_import_the_labs() -> None:
    """The labs are a plugin loaded on every start: their seed modules are not."""
    code = (
        "import sys\n"
        "from tracekit.cli.main import cli\n"
        "from click.testing import CliRunner\n"
        "CliRunner().invoke(cli, ['list'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('tracekit.lab')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['tracekit.lab']"


# The layers, lowest first: a module may import its own layer and those below it,
# never one above (each subpackage's docstring says the same in words).
LAYERS: dict[str, int] = {
    "tracekit._compat": 0,
    "tracekit.base": 0,
    "tracekit.hookspecs": 1,
    "tracekit.plugin": 1,
    "tracekit.bpf": 2,
    "tracekit.traces": 2,
    "tracekit.live": 3,
    "tracekit.fleet": 3,
    "tracekit.testing": 4,
    "tracekit.lab": 5,  # a plugin adding commands, beside the CLI
    "tracekit.cli": 5,
    "tracekit.plugins": 6,  # built-in plugins, loaded by name like third-party ones
    "tracekit.probes": 6,
    "tracekit": 7,  # the package's lazy names reach every layer
    "tracekit.__main__": 7,
}


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key, LAYERS[key]
    raise KeyError(module)


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer(name)


# Package data, not code: the loaders read the shared C headers (probes/*.h) that live
# beside the built-in probes with ``importlib.resources.files("tracekit.probes")``.
DATA_ONLY = {
    ("tracekit.bpf.bcc", "tracekit.probes"),
    ("tracekit.bpf.core_build", "tracekit.probes"),
}


def test_lower_layers_never_import_upper_ones() -> None:
    wrong = []
    for name, deps in graph().items():
        home, rank = layer(name)
        for dep in sorted(deps):
            if (name, dep) in DATA_ONLY:
                continue
            there, above = layer(dep)
            if above > rank:
                wrong.append(f"{name} ({home}) imports {dep} ({there})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_each_subpackage_says_what_it_holds_and_may_import() -> None:
    for pkg in ("base", "plugin", "bpf", "traces", "live", "fleet", "cli", "lab"):
        doc = ast.get_docstring(ast.parse((ROOT / "tracekit" / pkg / "__init__.py").read_text()))
        assert doc, pkg
        if pkg != "lab":
            assert "What it holds" in doc and "May import" in doc, pkg


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n    from tracekit.live import run\n")
    known = {"tracekit.base.m", "tracekit.live.run", "tracekit.live"}
    deps = imports_of("tracekit.base.m", tmp_path / "m.py", known)
    assert deps == {"tracekit.live.run"}
    assert layer("tracekit.live.run")[1] > layer("tracekit.base.m")[1]
