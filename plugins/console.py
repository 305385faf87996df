"""The ``console`` sink: one aligned line per event under a header, live.

``--sink console=json`` prints one JSON object per line instead, with values as JSON
types: integers (timestamps in ns, hashes, ports, queues) as numbers, addresses,
enums and kernel symbols as strings. ``--time wall`` shows wall-clock times (UTC)
instead of seconds since the first event (JSON: a ``wall_time`` key beside ``ts_ns``).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tracekit import hookimpl
from tracekit.base.errors import UsageError
from tracekit.base.schema import Field, format_value
from tracekit.base.session import EventBatch, LostReport, Session, Summary
from tracekit.base.text import printable
from tracekit.plugin.contract import SinkOptions
from tracekit.plugin.registry import SinkRegistry, SinkSpec

_WIDTH_BY_DISPLAY = {"ipv4": 15, "ip": 39, "queue": 5, "port": 5, "bool": 3, "ts": 14}
_WIDTH_BY_TYPE = {"u8": 3, "s8": 4, "u16": 5, "s16": 6, "u32": 10, "s32": 11, "u64": 12, "s64": 12}


# Columns are padded to this at most: a replayed schema may declare str4096 fields or
# 256-character names, and padding every row to them turned a small file into
# gigabytes of spaces. Longer values are printed whole, just not padded.
MAX_COLUMN = 40


TIMES = ("rel", "wall")


def _width(f: Field, title: str) -> int:
    w = f.size if f.is_str else _WIDTH_BY_DISPLAY.get(f.display, _WIDTH_BY_TYPE.get(f.type, 10))
    return min(max(w, len(title)), MAX_COLUMN)


def _title(f: Field, time: str = "rel") -> str:
    """A column's heading, with the unit of what the column shows.

    A timestamp (``ts_ns``, in ns in the kernel) is shown in seconds since the first
    event, or as wall-clock time: its heading says which, not the stored unit.
    """
    if f.display == "ts" and not f.is_str:
        return "time(UTC)" if time == "wall" else "time(s)"
    # Names and units come from the trace header when replaying: escaped.
    return printable(f"{f.name}({f.unit})" if f.unit else f.name)


def _json_value(f: Field, v: Any, symbols: Mapping[int, str]) -> Any:
    """What JSON carries for a raw value: the value itself, typed as JSON types it.

    Integers stay integers (a timestamp in ns, a hash, a queue, a port, a count);
    addresses become their usual text (``10.0.0.1``, ``::1``), enums and kernel
    symbols their names, and strings stay strings (json.dumps escapes them).
    """
    if isinstance(v, (str, bytes)) and f.display not in ("ip", "ipv4"):
        return v if isinstance(v, str) else v.hex()
    if f.display in ("ipv4", "ip", "enum", "ksym"):
        return format_value(f, v, symbols, terminal=False)
    return v


class ConsoleSink:
    def __init__(self, arg: str | None, out: TextIO | None = None) -> None:
        if arg not in (None, "", "json", "text"):
            raise UsageError(f"--sink console={arg}: valid forms are console, console=json")
        self.json = arg == "json"
        self.out = out
        self.time = "rel"
        self.widths: list[int] = []
        self.t0: int | None = None
        self._ts_idx: int | None = None
        self._session: Session | None = None

    def configure(self, opts: SinkOptions) -> None:
        if opts.time not in TIMES:
            raise UsageError(f"--time {opts.time}: valid values are {', '.join(TIMES)}")
        self.time = opts.time

    @property
    def _out(self) -> TextIO:
        return self.out or sys.stdout

    @hookimpl
    def tracekit_session_start(self, session: Session) -> None:
        fields = session.schema.fields
        self._session = session
        if self.time == "wall" and not session.monotonic_ns:
            print(
                "tracekit: warning: this trace does not say when its clock started "
                "(recorded before tracekit 0.2): times are seconds since the first event",
                file=sys.stderr,
            )
            self.time = "rel"
        titles = [_title(f, self.time) for f in fields]
        self.widths = [_width(f, t) for f, t in zip(fields, titles, strict=True)]
        self._ts_idx = next((i for i, f in enumerate(fields) if f.display == "ts"), None)
        if not self.json:
            if session.sample_every > 1:
                self._out.write(f"# sampled: 1 in {session.sample_every} events\n")
            cells = [t.rjust(w) for t, w in zip(titles, self.widths, strict=True)]
            self._out.write(" ".join(cells).rstrip() + "\n")
            self._out.flush()

    def _wall(self, v: int) -> str:
        assert self._session is not None
        t = self._session.wall_time(v)
        if t is None:
            return "-"
        try:
            when = dt.datetime.fromtimestamp(t, tz=dt.UTC)
        except (OverflowError, OSError, ValueError):
            return "-"
        return when.strftime("%H:%M:%S.%f")

    def _cell(self, f: Field, v: Any, symbols: Mapping[int, str], terminal: bool = True) -> Any:
        if f.display == "ts" and not f.is_str:
            if self.time == "wall":
                return self._wall(int(v))
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
            ts = self._ts_idx if self.time == "wall" else None
            for r in batch.rows:
                obj = {n: _json_value(f, v, syms) for n, f, v in zip(names, fields, r, strict=True)}
                if ts is not None:
                    # Added beside the ns timestamp: ISO 8601, UTC, microseconds.
                    t = session.wall_time(r[ts])
                    obj["wall_time"] = (
                        dt.datetime.fromtimestamp(t, tz=dt.UTC).isoformat() if t else None
                    )
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
