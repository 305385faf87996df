"""Helpers for testing sinks and trace files without a kernel.

Plugin authors can feed synthetic batches through a sink and record or replay trace
files with these, on any machine.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from tracekit.bus import Bus, build_bus
from tracekit.pipeline import Pipeline, SinkOptions, make_sinks
from tracekit.schema import Schema
from tracekit.session import LostReport, Session, Summary


def synthetic_rows(schema: Schema, n: int, seed: int = 0) -> list[tuple[Any, ...]]:
    """``n`` rows of plausible values for ``schema`` (small ints, so keys repeat)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row: list[Any] = []
        for f in schema.fields:
            if f.is_str:
                row.append(rng.choice(["eth0", "tk0", "iperf3", ""]))
            elif f.display == "ts":
                row.append(rng.randrange(1, 10**12))
            elif f.key or f.display in ("queue", "bool"):
                row.append(rng.randrange(0, 4))
            else:
                bits = f.size * 8
                row.append(rng.randrange(0, min(2**bits, 1 << 20)))
        rows.append(tuple(row))
    return rows


def feed(
    bus: Bus | None,
    session: Session,
    sink_args: Sequence[str],
    batches: Iterable[list[tuple[Any, ...]]],
    lost: Iterable[LostReport] = (),
    counters: dict[str, dict[str, dict[int, int]]] | None = None,
    force: bool = False,
) -> Summary:
    """Drive sinks exactly as a live run does: start, batches, losses, end."""
    bus = bus or build_bus()
    sinks = make_sinks(bus, tuple(sink_args), SinkOptions(force=force), session.schema)
    with Pipeline(bus, session, sinks) as pipe:
        for b in batches:
            pipe.batch(b)
        for report in lost:
            pipe.lost(report)
        pipe.summary.counters = counters or {}
        summary = pipe.end()
    pipe.raise_if_sink_failed()
    return summary
