"""Every hook of the contract is documented, with its signature, for plugin authors."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import tracekit
from tracekit import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"


def test_every_hook_is_documented_with_its_signature() -> None:
    text = DOC.read_text()
    hooks = [n for n, f in vars(hookspecs).items() if n.startswith("tracekit_") and callable(f)]
    assert len(hooks) >= 7
    for name in hooks:
        sig = inspect.signature(getattr(hookspecs, name))
        params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
        heading = f"### `{name}({params}) -> {sig.return_annotation}`"
        assert heading in text, heading
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


def test_every_hook_is_typed() -> None:
    for name, f in vars(hookspecs).items():
        if name.startswith("tracekit_") and callable(f):
            sig = inspect.signature(f)
            assert sig.return_annotation == "None", name
            for p in sig.parameters.values():
                assert p.annotation is not inspect.Parameter.empty, f"{name}({p.name})"
                assert "Any" not in str(p.annotation), f"{name}({p.name}): {p.annotation}"


def test_every_public_name_is_documented() -> None:
    """What ``from tracekit import ...`` offers, the plugin guide explains (by name)."""
    text = DOC.read_text()
    missing = [n for n in tracekit.__all__ if f"`{n}`" not in text]
    assert not missing, f"in tracekit.__all__ but not in {DOC.name}: {missing}"


def test_guide_examples_use_one_import() -> None:
    """The guide's Python examples import tracekit's API from ``tracekit`` only
    (``tracekit.fleet.plot`` is the one exception: it needs the fleet extra)."""
    text = DOC.read_text()
    for line in text.splitlines():
        if line.startswith("from tracekit.") or line.startswith("import tracekit."):
            assert line.startswith("from tracekit.fleet.plot import"), line


def test_fixtures_display_kinds_and_c_helpers_are_documented() -> None:
    from tracekit import testing
    from tracekit.base import schema

    text = DOC.read_text()
    fixtures = [n for n, f in vars(testing).items() if n.startswith("tracekit_") and callable(f)]
    assert {"tracekit_feed", "tracekit_replay", "tracekit_run_probe"} <= set(fixtures)
    for name in fixtures:
        assert f"`{name}`" in text, name
    for kind in schema.DISPLAYS:
        assert f"| `{kind}` |" in text, kind
    header = (DOC.parents[1] / "probes" / "tracekit.h").read_text()
    helpers = re.findall(r"static __always_inline \w+ (tk_read_\w+)\(", header)
    assert helpers, "tracekit.h has no tk_read_* helper"
    for h in helpers:
        assert f"`{h}`" in text, h
    for attr in ("enrich", "kernel_agg", "labels_from", "min_kernel"):
        assert attr in text, attr


def test_trace_format_doc_states_the_limits_the_reader_enforces() -> None:
    from tracekit.base import hist
    from tracekit.traces import checks as trace_checks
    from tracekit.traces import tracefile

    text = (DOC.parent / "trace-format.md").read_text()
    assert f"{tracefile.MAX_BATCH:,} rows" in text
    assert f"**{tracefile.MAX_RECORD // 2**20} MiB**" in text
    assert f"**{hist.MAX_LINEAR_BUCKETS:,} buckets**" in text
    assert f"1..{trace_checks.MAX_FIELDS} entries" in text
    assert f"1 ≤ N ≤ {trace_checks.MAX_STR_WIDTH}" in text
    assert f"2^{tracefile.MAX_SYMBOLS.bit_length() - 1} symbols" in text
    assert f"2^{tracefile.MAX_STACKS.bit_length() - 1} stacks" in text
    assert f"| `format` | int | 1..{tracefile.FORMAT_VERSION} " in text


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_every_import_in_the_guides_snippets_resolves() -> None:
    """Each ``import`` and ``from ... import`` of a Python snippet names a module and
    names that exist, and none is deprecated (a snippet shows the current API)."""
    import ast
    import importlib
    import warnings

    blocks = _snippets()
    assert len(blocks) > 10
    checked = 0
    for code in blocks:
        tree = ast.parse(code)
        for node in ast.walk(tree):
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                if isinstance(node, ast.Import):
                    for a in node.names:
                        importlib.import_module(a.name)
                        checked += 1
                elif isinstance(node, ast.ImportFrom) and node.module:
                    mod = importlib.import_module(node.module)
                    for a in node.names:
                        assert hasattr(mod, a.name), f"from {node.module} import {a.name}"
                        getattr(mod, a.name)  # a deprecated name warns, here an error
                        checked += 1
    assert checked > 30


def _tracekit_imports(path: Path) -> set[str]:
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tracekit"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tracekit"))
    return out


def test_the_examples_the_guide_holds_up_import_only_what_it_describes() -> None:
    """The guide says txq-flip and the example package use only its API: they import
    from ``tracekit`` itself (and txq-flip's plot ``tracekit.fleet.plot``, the one
    documented exception), nothing deeper."""
    root = DOC.parents[1]
    text = DOC.read_text()
    assert "`probes/txq_flip` uses exactly what is described here" in text
    assert "`examples/tracekit-tcp-retrans` imports nothing else from tracekit" in text
    allowed = {"tracekit", "tracekit.fleet.plot"}
    # The findings' helpers and network facts, named as such by the guide.
    assert "its findings the\nhelpers of `tracekit.base.findings`" in text
    findings_allowed = allowed | {"tracekit.base", "tracekit.base.findings"}
    files = sorted((root / "probes" / "txq_flip").glob("*.py"))
    files += sorted((root / "examples" / "tracekit-tcp-retrans").rglob("*.py"))
    files = [f for f in files if "build" not in f.parts]
    assert len(files) >= 4
    for f in files:
        ok = findings_allowed if f.name == "findings.py" and "probes" in f.parts else allowed
        extra = _tracekit_imports(f) - ok - {"tracekit_tcp_retrans"}
        assert not extra, f"{f.relative_to(root)} imports {sorted(extra)}"
    # The built-in sinks do not, and the guide says so rather than the opposite.
    assert any(_tracekit_imports(f) - allowed for f in (root / "plugins").glob("*.py"))
    assert "`plugins/hist.py` use exactly" not in text


def test_no_stale_statements_about_the_loaders() -> None:
    text = " ".join(DOC.read_text().split())
    assert "`enrich` needs the BCC loader" not in text
    assert "which txq-flip and rss-cpu do" not in text
    assert "`enrich` works under both loaders" in text
