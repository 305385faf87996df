"""Replay speed, side by side in one run (no assertions: a benchmark, not a test).

Writes a format-2 trace of N synthetic txq-flip events (packed records) and a
format-1 trace (msgpack rows, the old layout) of M events, then times, in
interleaved rounds:
  * plain msgpack.Unpacker iterating the format-2 file's records (the floor: no
    CRC, no numbering, no dispatch),
  * tracekit's reader (framing, CRC, numbering, batches as packed records),
  * `replay` (verify pass + read) into a sink that does nothing, and into hist,
  * the same two on the format-1 file (rows decoded by msgpack and checked).
Prints events per second for each and the time per event relative to the floor.

    .venv/bin/python bench/replay_speed.py [--events 10000000] [--v1-events 1000000]
        [--rounds 3] [--dir /tmp] [--only CASE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import msgpack

from tracekit import hookimpl
from tracekit.base.session import EventBatch, Session, Summary
from tracekit.plugin.bus import build_bus
from tracekit.plugin.pipeline import SinkOptions
from tracekit.plugin.registry import SinkRegistry, SinkSpec
from tracekit.probes.txq_flip import SCHEMA
from tracekit.testing import synthetic_rows
from tracekit.traces.replay import replay
from tracekit.traces.tracefile import (
    BATCH,
    FOOTER,
    HEADER,
    MAGIC,
    MAX_BATCH,
    TraceReader,
    TraceWriter,
)


class Null:
    def __init__(self, arg: str | None) -> None:
        self.n = 0

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        self.n += len(batch)  # touches neither rows nor columns


class NullPlugin:
    @hookimpl
    def tracekit_register_sinks(self, registry: SinkRegistry) -> None:
        registry.add(SinkSpec("null", "does nothing", Null))


def make_trace(path: Path, events: int) -> int:
    """Format 2, written by TraceWriter: one packed batch of MAX_BATCH rows, repeated."""
    batch = EventBatch("txq-flip", synthetic_rows(SCHEMA, MAX_BATCH, seed=7), schema=SCHEMA)
    n = events // MAX_BATCH
    w = TraceWriter(str(path), Session(probe="txq-flip", schema=SCHEMA), force=True)
    for _ in range(n):
        w.write_batch(batch)
    w.close(Summary(events=n * MAX_BATCH))
    return n * MAX_BATCH


def make_trace_v1(path: Path, events: int) -> int:
    """Format 1 (what tracekit wrote before #13): [kind, crc32, body], rows as arrays."""

    def rec(kind: int, payload: object) -> bytes:
        body = msgpack.packb(payload, use_bin_type=True)
        return msgpack.packb([kind, zlib.crc32(body), body], use_bin_type=True)  # type: ignore[no-any-return]

    rows = synthetic_rows(SCHEMA, MAX_BATCH, seed=7)
    n = events // MAX_BATCH
    header = {"format": 1, **Session(probe="txq-flip", schema=SCHEMA).header()}
    with open(path, "wb") as f:
        f.write(MAGIC + rec(HEADER, header))
        one = rec(BATCH, rows)
        for _ in range(n):
            f.write(one)
        f.write(rec(FOOTER, Summary(events=n * MAX_BATCH).to_dict()))
    return n * MAX_BATCH


def plain_unpacker(path: Path) -> int:
    """The floor: msgpack framing only; a batch's events counted from its length."""
    n = 0
    size = SCHEMA.size
    with open(path, "rb") as f:
        f.read(8)
        for kind, _seq, _crc, body in msgpack.Unpacker(f, max_buffer_size=1 << 27):
            if kind == BATCH:
                n += len(body) // size
    return n


def reader_only(path: Path) -> int:
    return sum(len(r.payload) for r in TraceReader(str(path)).records() if r.kind == BATCH)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--v1-events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--only", help="run one case (by its name's first word), for a profiler")
    a = ap.parse_args()
    bus = build_bus(extra_plugins=(("bench", NullPlugin()),), load_entry_points=False)
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    v2, v1 = Path(a.dir) / "tk-bench-v2.tkt", Path(a.dir) / "tk-bench-v1.tkt"
    t = time.perf_counter()
    made = make_trace(v2, a.events), make_trace_v1(v1, a.v1_events)
    print(f"wrote both traces in {time.perf_counter() - t:.1f} s")
    null_out = open(os.devnull, "w")  # noqa: SIM115 - the hist sink's output

    def via(path: Path, sink: str) -> Callable[[], int]:
        def go() -> int:
            with contextlib.redirect_stdout(null_out):
                return replay(bus, str(path), (sink,), SinkOptions()).events

        return go

    cases: dict[str, Callable[[], int]] = {
        "msgpack.Unpacker (floor)": lambda: plain_unpacker(v2),
        "TraceReader": lambda: reader_only(v2),
        "replay --sink null": via(v2, "null"),
        "replay --sink hist": via(v2, "hist"),
        "v1: replay --sink null": via(v1, "null"),
        "v1: replay --sink hist": via(v1, "hist"),
    }
    if a.only:
        cases = {k: v for k, v in cases.items() if k.replace(" ", "").startswith(a.only)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    counts: dict[str, int] = {}
    for _ in range(a.rounds):
        for name, fn in cases.items():  # interleaved: noise hits every case alike
            t = time.perf_counter()
            counts[name] = fn()
            times[name].append(time.perf_counter() - t)
    print(
        f"format 2: {made[0]:,} events, {v2.stat().st_size / 1e6:.1f} MB; format 1: "
        f"{made[1]:,} events, {v1.stat().st_size / 1e6:.1f} MB; {a.rounds} rounds"
    )
    floor = (
        statistics.median(times["msgpack.Unpacker (floor)"]) / counts["msgpack.Unpacker (floor)"]
        if "msgpack.Unpacker (floor)" in times
        else None
    )
    print(f"{'case':<26}{'events/s (median)':>20}{'spread':>10}{'per event vs floor':>20}")
    for name, ts in times.items():
        med = statistics.median(ts)
        spread = (max(ts) - min(ts)) / med
        ratio = f"{med / counts[name] / floor:.2f}x" if floor else "-"
        print(f"{name:<26}{counts[name] / med:>20,.0f}{spread:>9.0%}{ratio:>20}")


if __name__ == "__main__":
    main()
