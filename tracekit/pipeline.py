"""A session's path through the bus: sinks built, started, fed batches, ended.

Live runs (``tracekit.loader``) and replays (``tracekit.replay``) both drive a
``Pipeline``, which is why a replay prints exactly what the live run printed.
"""

from __future__ import annotations

import time
from typing import Any

from tracekit.bus import Bus
from tracekit.contract import SinkOptions, configure_sink
from tracekit.errors import SinkFailedError, UsageError
from tracekit.schema import Schema
from tracekit.session import EventBatch, LostReport, Session, Summary

__all__ = ["Pipeline", "SinkOptions", "make_sinks", "parse_sink_arg", "raise_if_sink_failed"]

def parse_sink_arg(text: str) -> tuple[str, str | None]:
    name, sep, arg = text.partition("=")
    name = name.strip()
    if not name:
        raise UsageError(f"bad --sink {text!r}: expected NAME or NAME=ARG")
    return name, (arg if sep else None)


def make_sinks(
    bus: Bus, sink_args: tuple[str, ...], opts: SinkOptions, schema: Schema
) -> dict[str, object]:
    """Build one sink object per ``--sink``, validating names and arguments.

    Runs before a probe is compiled, so a typo costs nothing. Sinks may define
    ``configure(opts)`` and ``check_schema(schema)`` (``tracekit.Sink``) to refuse
    early; a misspelt one is refused rather than silently never called.
    """
    out: dict[str, object] = {}
    for text in sink_args:
        name, arg = parse_sink_arg(text)
        spec = bus.sinks.get(name)
        obj = spec.factory(arg)
        configure_sink(name, obj, opts, schema)
        key = f"sink:{name}"
        n = 2
        while key in out:
            key = f"sink:{name}#{n}"
            n += 1
        out[key] = obj
    return out


def sinks_stream(bus: Bus, sink_args: tuple[str, ...]) -> bool:
    """Whether any requested sink needs every single event."""
    return any(bus.sinks.get(parse_sink_arg(s)[0]).streams for s in sink_args)


class Pipeline:
    """Registers a session's sinks on the bus and drives the session hooks."""

    def __init__(self, bus: Bus, session: Session, sinks: dict[str, object]) -> None:
        self.bus = bus
        self.session = session
        self.sinks = sinks
        self.summary = Summary()
        self._started = 0.0
        self._ctx: Any = None

    def __enter__(self) -> Pipeline:
        # Failures are per session: a sink that failed in an earlier run of this
        # process (tests, labs running a probe twice) is a new object now.
        self.bus.failures.clear()
        self.bus.explained.clear()
        self._ctx = self.bus.session_plugins(self.sinks)
        self._ctx.__enter__()
        self._started = time.monotonic()
        self.bus.call("tracekit_session_start", session=self.session)
        return self

    def batch(self, rows: list[tuple[Any, ...]] | EventBatch) -> None:
        """Deliver one batch: rows from a loader, or an ``EventBatch`` (a replay's
        packed records, or a loader's raw buffer through ``EventBatch.from_records``)."""
        if not len(rows):
            return
        if isinstance(rows, EventBatch):
            batch = rows
        else:
            batch = EventBatch(self.session.probe, rows, schema=self.session.schema)
        self.summary.events += len(batch)
        self.bus.call("tracekit_events", session=self.session, batch=batch)

    def lost(self, report: LostReport) -> None:
        if report.total == 0:
            return
        self.summary.add_lost(report)
        self.bus.call("tracekit_lost_events", session=self.session, lost=report)

    def counters(self, counters: dict[str, dict[str, dict[int, int]]]) -> None:
        """The probe's in-kernel counters, read during a live run."""
        self.bus.call("tracekit_counters", session=self.session, counters=counters)

    def end(self, summary: Summary | None = None) -> Summary:
        """Finish with ``summary`` (a replay's footer) or the one this pipeline counted."""
        if summary is None:
            summary = self.summary
            summary.duration = time.monotonic() - self._started
        self.summary = summary
        self.bus.call("tracekit_session_end", session=self.session, summary=summary)
        return summary

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

    def raise_if_sink_failed(self) -> None:
        raise_if_sink_failed(self.bus)


def raise_if_sink_failed(bus: Bus) -> None:
    """End the command with status 10 if a sink failed during the session."""
    if bus.failures:
        names = ", ".join(sorted(bus.failures))
        err = SinkFailedError(f"sink failed: {names}")
        if bus.explained.keys() == bus.failures.keys():
            # Each failure already said why in its own line (a full disk while
            # recording): the command ends with that error's status, no second line.
            err.exit_code = next(iter(bus.explained.values())).exit_code
            err.reported = True
        raise err
