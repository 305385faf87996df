"""Names for ``ksym`` fields, with no code from the probe.

Every kernel address a batch carries in a field displayed as ``ksym`` is named once
per session from /proc/kallsyms and recorded in ``session.names`` before the sinks
see the batch, so the console and hist print names and the trace stores them
(replays show the same names on any machine). A probe's ``enrich`` may still name
addresses itself (stacks, say): those already known are not looked up again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tracekit.base.schema import Schema
from tracekit.base.session import EventBatch, Session
from tracekit.bpf.core_stacks import KernelSymbols, read_symbols_in_background


def ksym_fields(schema: Schema) -> list[int]:
    """Indexes of the integer fields displayed as ``ksym``."""
    return [i for i, f in enumerate(schema.fields) if f.display == "ksym" and not f.is_str]


class KsymNamer:
    """Names the ``ksym`` fields' new addresses of each batch (one lookup per address
    per session; the batch's distinct values are found with numpy, not per event)."""

    def __init__(
        self, session: Session, symbols: Callable[[], KernelSymbols] | None = None
    ) -> None:
        self._session = session
        self._cols = ksym_fields(session.schema)
        # Read on a thread from the start of the run, only when some field needs it.
        self._symbols = symbols or (read_symbols_in_background() if self._cols else None)
        self._table: KernelSymbols | None = None

    def __bool__(self) -> bool:
        return bool(self._cols)

    def name_batch(self, rows: list[tuple[Any, ...]] | EventBatch) -> None:
        if not self._cols or not len(rows):
            return
        for i in self._cols:
            if isinstance(rows, EventBatch):
                import numpy as np

                self._name(np.unique(rows.field_array(i)).tolist())
            else:
                self._name({r[i] for r in rows})

    def name_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """The in-kernel aggregate's rows."""
        self.name_batch(list(rows))

    def _name(self, addrs: Iterable[int]) -> None:
        known = self._session.symbols
        new = sorted(int(a) for a in addrs if a and int(a) not in known)
        if not new:
            return
        if self._table is None:
            assert self._symbols is not None
            self._table = self._symbols()
        table = self._table
        self._session.names.add_symbols({a: table.name(a).decode("utf-8", "replace") for a in new})
