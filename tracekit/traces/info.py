"""``tracekit info``: a trace file's header and footer in words.

Every string shown comes from the file (probe, host and field names, parameters,
kernel release, loss sources, counter names), so each is escaped before it reaches
the terminal. The whole file is read and checked, as replay does, so ``info`` on a
corrupt file fails the same way (one line, status 2).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace

from tracekit.base.text import printable as p
from tracekit.traces.tracefile import SYMBOLS, TraceReader, read_symbols


def _when(ts: float) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        # The reader bounds start times; this only guards a platform's smaller range.
        return f"{ts} (seconds since 1970)"


def describe(path: str) -> Iterator[str]:
    """The lines of ``tracekit info``; raises TraceFileError for a corrupt file.

    Everything is read before the first line is yielded, so a corrupt file prints
    only its error line.
    """
    reader = TraceReader(path)
    s = reader.session
    for rec in reader.records():
        if rec.kind == SYMBOLS:
            read_symbols(rec.payload, s)
    # The file's batch records (the reader joins consecutive ones as it yields them).
    batches, rows = reader.batches, reader.rows
    if not reader.streamed_known and s.aggregated:
        s = replace(s, streamed=batches > 0)  # a trace from before headers said
    params = ", ".join(f"{p(k)}={v}" for k, v in s.params.items()) or "none"
    lines = [
        f"file:      {p(path)} (format {reader.format}, written by tracekit "
        f"{p(s.tracekit_version)})",
        f"probe:     {p(s.probe)} (parameters: {params})",
        f"recorded:  {_when(s.start_time)} on {p(s.hostname)}, kernel {p(s.kernel)}, "
        f"{s.ncpus} CPUs",
        f"fields:    {', '.join(map(p, s.schema.names))}",
    ]
    if reader.weaknesses:
        lines.append(f"checks:    {reader.weaknesses}")
    if s.sample_every > 1:
        lines.append(f"sampling:  1 in {s.sample_every} events")
    lines.append(
        f"contents:  {rows} events in {batches} batches, {len(s.symbols)} kernel symbols, "
        f"{len(s.stacks)} stacks"
    )
    lines.append(f"holds:     {p(s.holds())}")
    f = reader.footer
    if f is None:
        lines.append(
            f"footer:    missing: the recording was cut short at byte {reader.truncated_at}"
        )
        yield from lines
        return
    how = "interrupted (Ctrl-C/SIGTERM)" if f.interrupted else "completed"
    lines.append(f"ended:     {how} after {f.duration:.1f}s, {f.events} events")
    if f.lost_total:
        for source, per in f.lost.items():
            cells = ", ".join(f"cpu{c}={n}" for c, n in sorted(per.items()))
            lines.append(f"lost:      {sum(per.values())} ({p(source)}: {cells})")
    else:
        lines.append("lost:      none")
    for m, labels in f.counters.items():
        for label, per in labels.items():
            lines.append(f"counter:   {p(m)}.{p(label)} = {sum(per.values())}")
    for finding in f.findings:
        lines.append(f"finding:   {p(finding.text)}")
    if reader.trailing:
        lines.append(f"trailing:  {reader.trailing} bytes after the footer (ignored)")
    yield from lines
