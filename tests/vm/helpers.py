"""What the VM tests share: tracekit as a subprocess, replays, run-then-signal.

Only mechanics live here (how to start tracekit, wait for a line, signal it, read a
trace); every test keeps its own assertions.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tracekit.tracefile import BATCH, TraceReader


def tracekit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m tracekit ARGS`` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "tracekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replay(trace: Path, *sinks: str) -> subprocess.CompletedProcess[str]:
    """``tracekit replay TRACE --sink hist`` (or the given sinks): what a live run
    printed, a replay must print again."""
    args = [a for s in (sinks or ("hist",)) for a in ("--sink", s)]
    return tracekit("replay", str(trace), *args)


def launch(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m tracekit ARGS`` in the background, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "tracekit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_stderr(p: subprocess.Popen[str], text: str) -> None:
    """Read ``p``'s stderr until a line containing ``text`` (or its end)."""
    assert p.stderr is not None
    for line in p.stderr:
        if text in line:
            break


def run_then_signal(
    args: tuple[str, ...],
    ready: str,
    sig: signal.Signals,
    *,
    wait: Callable[[subprocess.Popen[str]], None] | None = None,
    timeout: float = 120,
) -> tuple[subprocess.Popen[str], str, str]:
    """Launch tracekit, wait for a stderr line containing ``ready`` (then ``wait(p)``,
    a readiness check of the test's own), send ``sig`` and collect the output."""
    p = launch(*args)
    wait_for_stderr(p, ready)
    if wait is not None:
        wait(p)
    p.send_signal(sig)
    out, err = p.communicate(timeout=timeout)
    return p, out, err


def trace_events(trace: Path) -> list[dict[str, object]]:
    """The events of a trace file, each a dict of field name to raw value."""
    r = TraceReader(str(trace))
    names = r.session.schema.names
    return [
        dict(zip(names, row, strict=True))
        for rec in r.records()
        if rec.kind == BATCH
        for row in rec.payload
    ]


def trace_batch_rows(trace: Path) -> tuple[TraceReader, int]:
    """The reader (footer read) and the number of rows in the trace's batches."""
    r = TraceReader(str(trace))
    n = sum(len(rec.payload) for rec in r.records() if rec.kind == BATCH)
    return r, n
