"""Replay a recorded trace through the same bus and sinks as a live run."""

from __future__ import annotations

import sys

from tracekit.bus import Bus
from tracekit.pipeline import Pipeline, SinkOptions, make_sinks
from tracekit.session import Summary
from tracekit.tracefile import BATCH, LOST, SYMBOLS, TraceReader, read_lost, read_symbols


def replay(bus: Bus, path: str, sink_args: tuple[str, ...], opts: SinkOptions) -> Summary:
    reader = TraceReader(path)
    session = reader.session
    try:
        sinks = make_sinks(bus, sink_args, opts, session.schema)
    except BaseException:
        reader.close()
        raise
    with Pipeline(bus, session, sinks) as pipe:
        for rec in reader.records():
            if rec.kind == BATCH:
                pipe.batch(list(rec.payload))
            elif rec.kind == SYMBOLS:
                read_symbols(rec.payload, session)
            elif rec.kind == LOST:
                pipe.lost(read_lost(rec.payload))
        if reader.truncated:
            print(
                f"tracekit: warning: {path} ends early (cut at byte {reader.truncated_at}); "
                f"replayed {pipe.summary.events} events up to its last complete batch",
                file=sys.stderr,
            )
        footer = reader.footer
        if footer is None:
            footer = pipe.summary
            footer.truncated = True
        summary = pipe.end(footer)
    pipe.raise_if_sink_failed()
    return summary
