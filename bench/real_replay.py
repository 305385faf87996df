"""Replay and export of a real recording grown large, side by side in one run.

A benchmark, not a test: no assertions. Takes a trace recorded by a live run
(``examples/traces/fq-throttle.tkt``: small batches, wide keys, as live runs write
them), repeats its batches, each with its own size, until the trace holds
``--events`` events, and writes the same events as a format-1 twin (msgpack rows).
Then times, in interleaved rounds, and prints medians and the time per event
relative to the floor:

  * the floor: ``msgpack.Unpacker`` walking the format-1 twin (records framed and
    every batch's rows decoded: what reading the old layout costs at least),
  * ``tracekit replay`` of the format-2 file into a sink that does nothing, into
    ``hist``, and ``tracekit export --to parquet``.

    .venv/bin/python bench/real_replay.py --real examples/traces/fq-throttle.tkt \\
        --events 3000000 --rounds 3 --dir /dev/shm/tk [--only CASE]
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
from tracekit.traces.replay import replay
from tracekit.traces.tracefile import (
    BATCH,
    FOOTER,
    HEADER,
    MAGIC,
    SYMBOLS,
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


def grow(real: Path, v2: Path, v1: Path, events: int, split: int) -> tuple[int, int, float]:
    """Write ``v2`` (format 2, by TraceWriter) and ``v1`` (format 1) holding the real
    trace's batches, each with its own size, repeated up to ``events`` events.
    A trace of fewer than 8 batches (its recorder joined them) is cut into batches
    of ``split`` events instead. Returns (events, batches, mean events per batch)."""
    reader = TraceReader(str(real))
    session = reader.session
    batches: list[EventBatch] = []
    symbols: list[object] = []
    for rec in reader.records():
        if rec.kind == BATCH:
            batches.append(rec.payload)
        elif rec.kind == SYMBOLS:
            symbols.append(rec.payload)
    if len(batches) < 8:
        whole = EventBatch.concat(batches)
        batches = [
            EventBatch(session.probe, schema=session.schema, array=whole.array[i : i + split])
            for i in range(0, len(whole), split)
        ]
    for syms, stacks in symbols:  # type: ignore[misc]
        session.names.add_symbols(syms)
        session.names.add_stacks(stacks)
    w = TraceWriter(str(v2), session, force=True)
    w.write_symbols(session)

    def body(kind: int, payload: object) -> bytes:
        b = msgpack.packb(payload, use_bin_type=True)
        return msgpack.packb([kind, zlib.crc32(b), b], use_bin_type=True)  # type: ignore[no-any-return]

    rows_of = [list(b.rows) for b in batches]
    n = nb = 0
    with open(v1, "wb") as f1:
        f1.write(MAGIC + body(HEADER, {"format": 1, **session.header()}))
        for syms, stacks in symbols:  # type: ignore[misc]
            f1.write(body(SYMBOLS, {"symbols": dict(syms), "stacks": dict(stacks)}))
        v1_recs = [body(BATCH, r) for r in rows_of]
        while n < events:
            for b, rec in zip(batches, v1_recs, strict=True):
                w.write_batch(b)
                f1.write(rec)
                n += len(b)
                nb += 1
                if n >= events:
                    break
        w.close(Summary(events=n))
        f1.write(body(FOOTER, Summary(events=n).to_dict()))
    return n, nb, n / nb


def unpacker_walk(path: Path) -> int:
    """The floor: the format-1 file's records framed and each batch's rows decoded."""
    n = 0
    with open(path, "rb") as f:
        f.read(len(MAGIC))
        for kind, _crc, body in msgpack.Unpacker(f, max_buffer_size=1 << 27):
            if kind == BATCH:
                n += len(msgpack.unpackb(body, use_list=False))
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default="examples/traces/fq-throttle.tkt")
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument(
        "--split", type=int, default=26, help="events a batch if the trace has few batches"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--only", help="run one case (by its name's first word), for a profiler")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args()
    bus = build_bus(extra_plugins=(("bench", NullPlugin()),), load_entry_points=False)
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    stem = Path(a.real).stem
    v2, v1 = Path(a.dir) / f"{stem}-big.tkt", Path(a.dir) / f"{stem}-big.v1.tkt"
    pq = Path(a.dir) / f"{stem}-big.parquet"
    t = time.perf_counter()
    events, nb, per = grow(Path(a.real), v2, v1, a.events, a.split)
    print(
        f"grew {a.real} to {events:,} events in {nb:,} batches ({per:.1f} events a batch) "
        f"in {time.perf_counter() - t:.1f} s: format 2 {v2.stat().st_size / 1e6:.1f} MB, "
        f"format 1 {v1.stat().st_size / 1e6:.1f} MB"
    )
    null_out = open(os.devnull, "w")  # noqa: SIM115 - the hist sink's output

    def via(sink: str) -> Callable[[], int]:
        def go() -> int:
            with contextlib.redirect_stdout(null_out):
                return replay(bus, str(v2), (sink,), SinkOptions()).events

        return go

    def export() -> int:
        from tracekit.fleet.export import export

        return export((str(v2),), "parquet", str(pq), force=True).events

    cases: dict[str, Callable[[], int]] = {
        "Unpacker walk, format 1 (floor)": lambda: unpacker_walk(v1),
        "replay --sink null": via("null"),
        "replay --sink hist": via("hist"),
    }
    if not a.no_export:
        cases["export --to parquet"] = export
    if a.only:
        cases = {k: v for k, v in cases.items() if k.replace(" ", "").startswith(a.only)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    counts: dict[str, int] = {}
    for _ in range(a.rounds):
        for name, fn in cases.items():  # interleaved: noise hits every case alike
            t = time.perf_counter()
            counts[name] = fn()
            times[name].append(time.perf_counter() - t)
    floor_name = "Unpacker walk, format 1 (floor)"
    floor = (
        statistics.median(times[floor_name]) / counts[floor_name] if floor_name in times else None
    )
    print(f"{a.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"{'case':<34}{'events/s (median)':>20}{'spread':>10}{'time vs floor':>16}")
    for name, ts in times.items():
        med = statistics.median(ts)
        spread = (max(ts) - min(ts)) / med
        ratio = f"{med / counts[name] / floor:.2f}x" if floor else "-"
        print(f"{name:<34}{counts[name] / med:>20,.0f}{spread:>9.0%}{ratio:>16}")


if __name__ == "__main__":
    main()
