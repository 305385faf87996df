"""The ``msgpack`` sink: ``--sink msgpack=PATH`` records a trace file for replay."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tracekit import hookimpl
from tracekit.base.errors import UsageError
from tracekit.base.session import EventBatch, LostReport, Session, Summary
from tracekit.base.trust import DEFAULT_MODE
from tracekit.plugin.pipeline import SinkOptions
from tracekit.plugin.registry import SinkRegistry, SinkSpec

if TYPE_CHECKING:
    from tracekit.traces.tracefile import TraceWriter


class MsgpackSink:
    def __init__(self, arg: str | None) -> None:
        if not arg:
            raise UsageError("--sink msgpack needs a file: --sink msgpack=PATH")
        self.path = arg
        self.force = False
        self.mode = DEFAULT_MODE
        self.writer: TraceWriter | None = None
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

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        assert self.writer is not None
        self.writer.write_symbols(session)
        self.writer.write_batch(batch)  # packed records: no per-event work

    @hookimpl
    def tracekit_lost_events(self, session: Session, lost: LostReport) -> None:
        assert self.writer is not None
        self.writer.write_lost(lost)

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: Summary) -> None:
        if self.writer is not None:
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
