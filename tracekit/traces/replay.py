"""Replay a recorded trace through the same bus and sinks as a live run."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import replace

from tracekit.base.errors import UsageError
from tracekit.base.findings import print_findings
from tracekit.base.session import EventBatch, Summary
from tracekit.base.text import printable
from tracekit.plugin.bus import Bus
from tracekit.plugin.pipeline import Pipeline, SinkOptions, build_sinks
from tracekit.traces.progress import Progress
from tracekit.traces.tracefile import BATCH, LOST, SYMBOLS, TraceReader, read_lost, read_symbols

# Events per batch handed to the sinks: 8 records of MAX_BATCH, or fewer records
# when they are wide: at most about COALESCE_BYTES of packed records (a record's
# bytes, not Python objects) are kept at a time. Sinks that decode events do it in
# slices (EventBatch.slices), so what they build is bounded whatever is joined here.
COALESCE_ROWS = 65536
COALESCE_BYTES = 32 << 20


def _refuse_own_input(path: str, sinks: Mapping[str, object]) -> None:
    """A sink that writes a file (``msgpack=PATH``) must not write over the input.

    With ``--force`` the writer would truncate the file being replayed before the
    first record is read. Compared by device and inode, so another name for the
    same file (a hard link, ``./x``) is caught too.
    """
    for name, sink in sinks.items():
        out = getattr(sink, "path", None)
        if not isinstance(out, str):
            continue
        try:
            same = os.path.samefile(out, path)
        except OSError:
            continue  # the output does not exist yet: it cannot be the input
        if same:
            raise UsageError(
                f"--{name.replace(':', ' ')}: {printable(out)} is the trace being replayed; "
                "write to another file"
            )


def replay(
    bus: Bus,
    path: str,
    sink_args: tuple[str, ...],
    opts: SinkOptions,
    findings: str = "off",
) -> Summary:
    """Replay ``path`` into sinks; ``findings`` (text, json, off) prints the findings,
    recomputed from the recorded data, on stderr as the live run did."""
    # First pass: the file's structure, CRCs and every record but batch bodies, so a
    # damaged file ends with one line before any sink prints (TraceReader.verify).
    checked = TraceReader(path)
    checked.progress = Progress(f"checking {path}", checked.size)
    checked.verify()
    reader = TraceReader(path)
    reader.progress = Progress(f"replaying {path}", reader.size)
    session = reader.session
    if not reader.streamed_known and session.aggregated:
        # A trace from before headers said: it streamed if it has batches.
        session = replace(session, streamed=checked.batches > 0)
    try:
        sinks = build_sinks(bus, sink_args, opts, session.schema)
        _refuse_own_input(path, sinks.objects)
    except BaseException:
        reader.close()
        raise
    # Every record is checked again, batch rows included, before it is yielded: a
    # forged batch stops the replay with one line (status 2) before any sink sees it.
    # A trace with the kernel's counts says what it holds (only counts, or events
    # too), on stderr: stdout is the sinks', the same as the live run's.
    if session.aggregated:
        print(f"tracekit: {printable(path)} holds {printable(session.holds())}", file=sys.stderr)
    with Pipeline(bus, session, sinks.objects) as pipe:
        # Consecutive batch records go to the sinks as one batch of up to
        # COALESCE_ROWS events: a sink's per-batch costs (a hook call, numpy's
        # per-call overhead) then spread over more events. Symbols and lost-event
        # records still arrive between the same events as they were written.
        pending: list[EventBatch] = []
        rows = 0
        # Events of pending batches at which their bytes reach COALESCE_BYTES.
        most = max(1, COALESCE_BYTES // session.schema.size)
        for rec in reader.records():
            if rec.kind == BATCH and rec.payload.packed:
                pending.append(rec.payload)
                rows += len(rec.payload)
                if rows >= COALESCE_ROWS or rows >= most:
                    pipe.batch(EventBatch.concat(pending))
                    pending, rows = [], 0
                continue
            if pending:
                pipe.batch(EventBatch.concat(pending))
                pending, rows = [], 0
            if rec.kind == BATCH:
                # Format 1: rows, each batch checked as it is read; delivered one by
                # one, so the batches before a forged one still reach the sinks.
                pipe.batch(rec.payload)
            elif rec.kind == SYMBOLS:
                read_symbols(rec.payload, session)
            elif rec.kind == LOST:
                pipe.lost(read_lost(rec.payload))
        if pending:
            pipe.batch(EventBatch.concat(pending))
        if reader.truncated:
            print(
                f"tracekit: warning: {printable(path)} ends early (cut at byte "
                f"{reader.truncated_at}); replayed {pipe.events} events up to its "
                "last complete batch",
                file=sys.stderr,
            )
        # A trace without its footer ends with what the replay counted.
        summary = pipe.end(reader.footer, truncated=reader.footer is None)
    print_findings(summary.findings, findings)
    pipe.raise_if_sink_failed()
    return summary
