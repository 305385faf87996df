"""The ``console`` sink: one aligned line per event under a header, live.

``--sink console=json`` prints one JSON object per line instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tracekit import hookimpl
from tracekit.base.errors import UsageError
from tracekit.base.schema import Field, format_value
from tracekit.base.session import EventBatch, LostReport, Session, Summary
from tracekit.base.text import printable
from tracekit.plugin.registry import SinkRegistry, SinkSpec

_WIDTH_BY_DISPLAY = {"ipv4": 15, "ip": 39, "queue": 5, "port": 5, "bool": 3, "ts": 14}
_WIDTH_BY_TYPE = {"u8": 3, "s8": 4, "u16": 5, "s16": 6, "u32": 10, "s32": 11, "u64": 12, "s64": 12}


# Columns are padded to this at most: a replayed schema may declare str4096 fields or
# 256-character names, and padding every row to them turned a small file into
# gigabytes of spaces. Longer values are printed whole, just not padded.
MAX_COLUMN = 40


def _width(f: Field) -> int:
    w = f.size if f.is_str else _WIDTH_BY_DISPLAY.get(f.display, _WIDTH_BY_TYPE.get(f.type, 10))
    return min(max(w, len(_title(f))), MAX_COLUMN)


def _title(f: Field) -> str:
    # Names and units come from the trace header when replaying: escaped.
    return printable(f"{f.name}({f.unit})" if f.unit else f.name)


class ConsoleSink:
    def __init__(self, arg: str | None, out: TextIO | None = None) -> None:
        if arg not in (None, "", "json", "text"):
            raise UsageError(f"--sink console={arg}: valid forms are console, console=json")
        self.json = arg == "json"
        self.out = out
        self.widths: list[int] = []
        self.t0: int | None = None
        self._ts_idx: int | None = None

    @property
    def _out(self) -> TextIO:
        return self.out or sys.stdout

    @hookimpl
    def tracekit_session_start(self, session: Session) -> None:
        fields = session.schema.fields
        self.widths = [_width(f) for f in fields]
        self._ts_idx = next((i for i, f in enumerate(fields) if f.display == "ts"), None)
        if not self.json:
            if session.sample_every > 1:
                self._out.write(f"# sampled: 1 in {session.sample_every} events\n")
            cells = [_title(f).rjust(w) for f, w in zip(fields, self.widths, strict=True)]
            self._out.write(" ".join(cells).rstrip() + "\n")
            self._out.flush()

    def _cell(self, f: Field, v: Any, symbols: Mapping[int, str], terminal: bool = True) -> Any:
        if f.display == "ts" and not f.is_str:
            if self.t0 is None:
                self.t0 = int(v)
            return f"{(int(v) - self.t0) / 1e9:.6f}"
        return format_value(f, v, symbols, terminal)

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        # A slice at a time: replay joins up to 65,536 events into one batch, and
        # their rows and lines at once took many times the file's size.
        for part in batch.slices():
            self._print(session, part)

    def _print(self, session: Session, batch: EventBatch) -> None:
        fields = session.schema.fields
        syms = session.symbols
        lines = []
        if self.json:
            names = [f.name for f in fields]
            # Strings go to json.dumps as they are: it escapes them by JSON's rules
            # (control characters become \u001b), and a JSON reader gets them back.
            raw_ok = {
                i
                for i, f in enumerate(fields)
                if f.display in ("int", "port", "bool", "queue", "str")
            }
            for r in batch.rows:
                obj = {
                    n: (v if i in raw_ok else self._cell(f, v, syms, terminal=False))
                    for i, (n, f, v) in enumerate(zip(names, fields, r, strict=True))
                }
                lines.append(json.dumps(obj))
        else:
            widths = self.widths
            for r in batch.rows:
                cells = [
                    str(self._cell(f, v, syms)).rjust(w)
                    for f, v, w in zip(fields, r, widths, strict=True)
                ]
                lines.append(" ".join(cells).rstrip())
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()

    @hookimpl
    def tracekit_lost_events(self, session: Session, lost: LostReport) -> None:
        per = ", ".join(f"cpu{c}: {n}" for c, n in sorted(lost.per_cpu.items()) if n)
        source = printable(lost.source)
        print(f"tracekit: lost {lost.total} events ({source}; {per})", file=sys.stderr)

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: Summary) -> None:
        if self.json:
            self._out.write(json.dumps({"summary": summary.to_dict()}, default=str) + "\n")
        self._out.flush()


@hookimpl
def tracekit_register_sinks(registry: SinkRegistry) -> None:
    registry.add(
        SinkSpec(
            name="console",
            description="live, one aligned line per event (console=json: JSON lines)",
            factory=ConsoleSink,
        )
    )
