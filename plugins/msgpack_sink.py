"""The ``msgpack`` sink: ``--sink msgpack=PATH`` records a trace file for replay."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tracekit import hookimpl
from tracekit.base.errors import UsageError
from tracekit.base.session import EventBatch, LostReport, Session, Summary
from tracekit.base.trust import DEFAULT_MODE
from tracekit.plugin.pipeline import SinkOptions
from tracekit.plugin.registry import SinkRegistry, SinkSpec

if TYPE_CHECKING:
    from tracekit.traces.tracefile import TraceWriter


# Live runs deliver small batches (tens of events a poll); each written as its own
# record costs the reader Python work per record. The sink joins them into records of
# up to COALESCE_ROWS events, holding none back longer than HOLD seconds: a timer
# writes what is pending when a quiet stream sends nothing more.
COALESCE_ROWS = 8192
HOLD = 0.1


class MsgpackSink:
    clock: Callable[[], float] = staticmethod(time.monotonic)
    timer: Callable[[float, Callable[[], None]], threading.Timer] = threading.Timer

    def __init__(self, arg: str | None) -> None:
        if not arg:
            raise UsageError("--sink msgpack needs a file: --sink msgpack=PATH")
        self.path = arg
        self.force = False
        self.mode = DEFAULT_MODE
        self.writer: TraceWriter | None = None
        self._pending: list[EventBatch] = []
        self._rows = 0
        self._since = 0.0  # clock() when the oldest pending batch arrived
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._session: Session | None = None
        parent = os.path.dirname(os.path.abspath(arg))
        if not os.path.isdir(parent):
            raise UsageError(f"--sink msgpack={arg}: directory {parent} does not exist")

    def configure(self, opts: SinkOptions) -> None:
        self.force = opts.force
        self.mode = opts.mode
        # Refuse before the probe compiles, not minutes later when the session starts
        # (and not as a "sink failed" after the fact).
        check_writable(self.path, self.force)

    @hookimpl
    def tracekit_session_start(self, session: Session) -> None:
        # Imported here: the trace writer (msgpack, CRC, checks) is not needed by a
        # run that records nothing, and every import delays its first event.
        from tracekit.traces.tracefile import TraceWriter

        self.writer = TraceWriter(self.path, session, force=self.force, mode=self.mode)
        self._session = session

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        assert self.writer is not None
        if not len(batch):
            return
        with self._lock:
            if not self._pending:
                self._since = self.clock()
            self._pending.append(batch)
            self._rows += len(batch)
            if self._rows >= COALESCE_ROWS or self.clock() - self._since >= HOLD:
                self._flush()
                return
            if self._timer is None:
                # A stream that goes quiet still reaches the file within HOLD.
                self._timer = self.timer(HOLD, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Write the pending events (the timer's callback; safe from any thread)."""
        with self._lock:
            self._timer = None
            self._flush()

    def _flush(self) -> None:
        """Write the pending events as one batch (records of MAX_BATCH); the lock is held."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self.writer is None or self._session is None:
            return
        pending, self._pending, self._rows = self._pending, [], 0
        joined = EventBatch.concat(pending)
        if joined.packed and len(pending) > 1:
            # One array, so that the writer cuts it into large records, not per part.
            joined = EventBatch(joined.probe, schema=joined.schema, array=joined.array)
        self.writer.write_symbols(self._session)
        self.writer.write_batch(joined)  # packed records: no per-event work

    @hookimpl
    def tracekit_lost_events(self, session: Session, lost: LostReport) -> None:
        assert self.writer is not None
        with self._lock:
            self._flush()  # the events before the loss stay before it in the file
            self.writer.write_lost(lost)

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: Summary) -> None:
        if self.writer is not None:
            with self._lock:
                self._flush()
                self.writer.write_symbols(session)
                self.writer.close(summary)


def check_writable(path: str, force: bool) -> None:
    """Raise UsageError unless the trace can be created (or, with force, replaced) at path.

    Only regular files: a directory cannot be one, ``/dev/full`` takes the header and
    fails later, and a FIFO blocks until someone reads it. Never through a symbolic
    link at the name (tracekit.base.trust.create_output, which the writer uses, checks
    it all again when it makes the file).
    """
    from tracekit.base.trust import check_output

    try:
        check_output(path, force)
    except UsageError as exc:
        msg = str(exc)
        if "exists; pass --force" in msg:
            raise
        raise UsageError(f"--sink msgpack={path}: {msg.removeprefix(path + ' ')}") from None


@hookimpl
def tracekit_register_sinks(registry: SinkRegistry) -> None:
    registry.add(
        SinkSpec(
            name="msgpack",
            description="records a trace file (msgpack=PATH) for tracekit replay",
            factory=MsgpackSink,
        )
    )
