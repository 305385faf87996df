"""The ``tracekit`` command line.

What it holds: the commands (``main``), the options they share (``options``) and
``tracekit new`` with its templates (``scaffold``, ``templates/``).

May import: any layer of tracekit.
"""

from __future__ import annotations

from typing import Any


def main(argv: list[str] | None = None) -> Any:
    """Run the ``tracekit`` command (the console script's entry point)."""
    from tracekit.cli.main import main as _main

    return _main(argv)


def __getattr__(name: str) -> Any:
    # ``tracekit.cli`` was one module until 0.2.0: its other names still resolve.
    from tracekit._compat import moved_attribute

    return moved_attribute("tracekit.cli", "tracekit.cli.main", name)
