"""Every hook of the contract is documented, with its signature, for plugin authors."""

from __future__ import annotations

import inspect
from pathlib import Path

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


def test_trace_format_doc_states_the_limits_the_reader_enforces() -> None:
    from tracekit import hist, trace_checks, tracefile

    text = (DOC.parent / "trace-format.md").read_text()
    assert f"{tracefile.MAX_BATCH:,} rows" in text
    assert f"**{tracefile.MAX_RECORD // 2**20} MiB**" in text
    assert f"**{hist.MAX_LINEAR_BUCKETS:,} buckets**" in text
    assert f"1..{trace_checks.MAX_FIELDS} entries" in text
    assert f"1 ≤ N ≤ {trace_checks.MAX_STR_WIDTH}" in text
    assert f"2^{tracefile.MAX_SYMBOLS.bit_length() - 1} symbols" in text
    assert f"2^{tracefile.MAX_STACKS.bit_length() - 1} stacks" in text
    assert f"| `format` | int | 1..{tracefile.FORMAT_VERSION} " in text
