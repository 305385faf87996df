"""Fleet work on recordings: tables for DuckDB and pandas, pictures.

What it holds: the optional ``fleet`` extra's imports (``extras``), ``tracekit
export`` (``export``) and ``tracekit plot`` (``plot``).

May import: ``tracekit.base``, ``tracekit.plugin`` and ``tracekit.traces``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # ``tracekit.fleet`` was one module until 0.2.0: its names still resolve.
    from tracekit._compat import moved_attribute

    return moved_attribute("tracekit.fleet", "tracekit.fleet.extras", name)
