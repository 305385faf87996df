"""Replay speed, side by side in one run (no assertions: a benchmark, not a test).

Writes a trace of N synthetic txq-flip events, then times, alternating rounds:
  * plain msgpack.Unpacker iterating the same file's records (the floor: no CRC,
    no body decode, no dispatch),
  * tracekit's reader (CRC check + body decode into row tuples + row checks),
  * `replay` through the bus into a sink that does nothing,
  * `replay` into the hist sink.
Prints events per second for each and the ratio to plain msgpack.

    .venv/bin/python bench/replay_speed.py [--events 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

from tracekit import hookimpl
from tracekit.bus import build_bus
from tracekit.pipeline import SinkOptions
from tracekit.probes.txq_flip import SCHEMA
from tracekit.registry import SinkRegistry, SinkSpec
from tracekit.replay import replay
from tracekit.session import EventBatch, Session, Summary
from tracekit.testing import synthetic_rows
from tracekit.tracefile import BATCH, TraceReader, TraceWriter


class Null:
    def __init__(self, arg: str | None) -> None:
        self.n = 0

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        self.n += len(batch.rows)


class NullPlugin:
    @hookimpl
    def tracekit_register_sinks(self, registry: SinkRegistry) -> None:
        registry.add(SinkSpec("null", "does nothing", Null))


def make_trace(path: Path, events: int, batch: int = 4096) -> None:
    rows = synthetic_rows(SCHEMA, batch, seed=7)
    w = TraceWriter(str(path), Session(probe="txq-flip", schema=SCHEMA), force=True)
    for _ in range(events // batch):
        w.write_batch(rows)
    w.close(Summary(events=(events // batch) * batch))


def plain_unpacker(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        f.read(8)
        for kind, _seq, _crc, body in msgpack.Unpacker(f, max_buffer_size=1 << 27):
            if kind == BATCH:
                n += len(msgpack.unpackb(body))
    return n


def reader_only(path: Path) -> int:
    return sum(len(r.payload) for r in TraceReader(str(path)).records() if r.kind == BATCH)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    bus = build_bus(extra_plugins=(("bench", NullPlugin()),), load_entry_points=False)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.tkt"
        make_trace(path, a.events)
        size = path.stat().st_size
        null_out = open("/dev/null", "w")  # noqa: SIM115 - the hist sink's output

        def via(sink: str) -> Callable[[], int]:
            def go() -> int:
                import contextlib

                with contextlib.redirect_stdout(null_out):
                    return replay(bus, str(path), (sink,), SinkOptions()).events

            return go

        cases: dict[str, Callable[[], int]] = {
            "msgpack.Unpacker (floor)": lambda: plain_unpacker(path),
            "TraceReader": lambda: reader_only(path),
            "replay --sink null": via("null"),
            "replay --sink hist": via("hist"),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        counts: dict[str, int] = {}
        for _ in range(a.rounds):
            for name, fn in cases.items():  # interleaved: noise hits every case alike
                t = time.perf_counter()
                counts[name] = fn()
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["msgpack.Unpacker (floor)"])
    print(f"trace: {counts['TraceReader']} events, {size / 1e6:.1f} MB, {a.rounds} rounds")
    print(f"{'case':<26}{'events/s (median)':>20}{'spread':>10}{'time vs floor':>16}")
    for name, ts in times.items():
        med = statistics.median(ts)
        spread = (max(ts) - min(ts)) / med
        print(f"{name:<26}{counts[name] / med:>20,.0f}{spread:>9.0%}{med / base:>15.2f}x")


if __name__ == "__main__":
    main()
