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
