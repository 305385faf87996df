"""The ``msgpack`` sink: ``--sink msgpack=PATH`` records a trace file for replay."""

from __future__ import annotations

import os

from tracekit import hookimpl
from tracekit.errors import UsageError
from tracekit.pipeline import SinkOptions
from tracekit.registry import SinkRegistry, SinkSpec
from tracekit.session import EventBatch, LostReport, Session, Summary
from tracekit.tracefile import TraceWriter


class MsgpackSink:
    def __init__(self, arg: str | None) -> None:
        if not arg:
            raise UsageError("--sink msgpack needs a file: --sink msgpack=PATH")
        self.path = arg
        self.force = False
        self.writer: TraceWriter | None = None
        parent = os.path.dirname(os.path.abspath(arg))
        if not os.path.isdir(parent):
            raise UsageError(f"--sink msgpack={arg}: directory {parent} does not exist")

    def configure(self, opts: SinkOptions) -> None:
        self.force = opts.force
        # Refuse before the probe compiles, not minutes later when the session starts.
        if os.path.exists(self.path) and not self.force:
            raise UsageError(f"{self.path} exists; pass --force to overwrite it")

    @hookimpl
    def tracekit_session_start(self, session: Session) -> None:
        self.writer = TraceWriter(self.path, session, force=self.force)

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        assert self.writer is not None
        self.writer.write_symbols(session)
        self.writer.write_batch(batch.rows)

    @hookimpl
    def tracekit_lost_events(self, session: Session, lost: LostReport) -> None:
        assert self.writer is not None
        self.writer.write_lost(lost)

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: Summary) -> None:
        if self.writer is not None:
            self.writer.write_symbols(session)
            self.writer.close(summary)


@hookimpl
def tracekit_register_sinks(registry: SinkRegistry) -> None:
    registry.add(
        SinkSpec(
            name="msgpack",
            description="records a trace file (msgpack=PATH) for tracekit replay",
            factory=MsgpackSink,
        )
    )
