"""The msgpack sink joins small live batches into large records, holding none back
longer than HOLD (a fake clock and a fake timer: no waiting)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import msgpack

from tracekit.base.session import EventBatch, Session, Summary
from tracekit.plugins.msgpack_sink import HOLD, MsgpackSink
from tracekit.probes.txq_flip import SCHEMA
from tracekit.testing import synthetic_rows
from tracekit.traces.tracefile import BATCH, MAGIC, TraceReader


class FakeTimer:
    made: ClassVar[list[FakeTimer]] = []

    def __init__(self, after: float, fn: Callable[[], None]) -> None:
        self.after, self.fn, self.started, self.cancelled = after, fn, False, False
        self.daemon = False
        FakeTimer.made.append(self)

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True


def _record_sizes(path: Path) -> list[int]:
    with open(path, "rb") as f:
        f.read(len(MAGIC))
        return [len(b) // SCHEMA.size for k, _, _, b in msgpack.Unpacker(f) if k == BATCH]


def test_small_batches_are_joined_and_none_waits_longer_than_hold(tmp_path: Path) -> None:
    now = [0.0]
    FakeTimer.made = []
    sink: Any = MsgpackSink(str(tmp_path / "t.tkt"))
    sink.clock = lambda: now[0]
    sink.timer = FakeTimer
    session = Session(probe="txq-flip", schema=SCHEMA)
    sink.tracekit_session_start(session)
    rows = synthetic_rows(SCHEMA, 26, seed=1)
    batch = EventBatch.from_records(
        "txq-flip", SCHEMA, EventBatch("txq-flip", rows, schema=SCHEMA).records()
    )
    for t in (0.0, 0.03, 0.06, 0.09):  # within HOLD of the first: held
        now[0] = t
        sink.tracekit_events(session, batch)
    assert sink.writer.rows == 0
    assert (
        len(FakeTimer.made) == 1 and FakeTimer.made[0].after == HOLD and FakeTimer.made[0].started
    )
    now[0] = HOLD  # the fifth arrives HOLD after the first: all five written, as one record
    sink.tracekit_events(session, batch)
    assert sink.writer.rows == 5 * 26 and sink.writer.batches == 1
    assert FakeTimer.made[0].cancelled
    now[0] = 0.5
    sink.tracekit_events(session, batch)  # a quiet stream: the timer writes it
    assert sink.writer.rows == 5 * 26
    FakeTimer.made[-1].fn()
    assert sink.writer.rows == 6 * 26
    sink.tracekit_events(session, batch)
    sink.tracekit_session_end(session, Summary(events=7 * 26))  # the end writes the rest
    assert FakeTimer.made[-1].cancelled
    assert _record_sizes(tmp_path / "t.tkt") == [5 * 26, 26, 26]
    got = [
        r
        for rec in TraceReader(str(tmp_path / "t.tkt")).records()
        if rec.kind == BATCH
        for r in rec.payload.rows
    ]
    assert got == EventBatch("txq-flip", rows * 7, schema=SCHEMA).rows
