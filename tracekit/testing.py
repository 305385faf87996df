"""Helpers for testing sinks and trace files without a kernel.

Plugin authors can feed synthetic batches through a sink and record or replay trace
files with these, on any machine.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


# -- pytest plugin (entry point pytest11: tracekit) -----------------------------------
#
# Installed with tracekit, so a plugin package's tests get these fixtures and the
# ``vm`` marker without a conftest.py.

IN_VM_ENV = "TRACEKIT_IN_VM"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: needs a kernel with BPF; runs inside tracekit's VM")
    # BCC's modules warn about themselves on newer Pythons (on 3.14, bcc.disassembler's
    # ctypes structures with _pack_ and no _layout_): nothing a test can act on.
    config.addinivalue_line("filterwarnings", r"ignore::DeprecationWarning:bcc(\..*)?")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(IN_VM_ENV) == "1":
        return
    skip = pytest.mark.skip(reason="needs a kernel with BPF: runs inside the VM (vm/run)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@dataclass
class Output:
    summary: Summary
    stdout: str


@pytest.fixture
def tracekit_bus() -> Bus:
    """The plugin bus with every installed plugin (built-ins and entry points)."""
    return build_bus()


@pytest.fixture
def tracekit_feed(tracekit_bus: Bus) -> Callable[..., Output]:
    """``tracekit_feed(session, ["csv=out.csv"], [rows, ...])``: drive sinks like a run."""

    def run(
        session: Session, sinks: Sequence[str], batches: Iterable[list[tuple[Any, ...]]], **kw: Any
    ) -> Output:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            summary = feed(tracekit_bus, session, sinks, batches, **kw)
        return Output(summary, buf.getvalue())

    return run


@pytest.fixture
def tracekit_replay(tracekit_bus: Bus) -> Callable[..., Output]:
    """``tracekit_replay(path, ["hist"])``: replay a trace file through sinks."""
    from tracekit.replay import replay

    def run(path: str | Path, sinks: Sequence[str] = ("hist",)) -> Output:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            summary = replay(tracekit_bus, str(path), tuple(sinks), SinkOptions(force=True))
        return Output(summary, buf.getvalue())

    return run


@pytest.fixture
def tracekit_run_probe(tracekit_bus: Bus) -> Iterator[Callable[..., Output]]:
    """In the VM: ``tracekit_run_probe("tcp-retrans", action, sinks=["hist"])`` compiles
    the probe, attaches it, calls ``action()`` (the traffic), drains, detaches.
    """
    from tracekit.run import RunOptions, run_probe

    if os.environ.get(IN_VM_ENV) != "1":
        pytest.skip("runs a BPF probe: only inside the VM")

    def run(
        name: str,
        action: Callable[[], None],
        sinks: Sequence[str] = ("hist",),
        params: dict[str, str] | None = None,
    ) -> Output:
        spec = tracekit_bus.probes.get(name)
        values = spec.resolve_params(params or {})
        done: list[bool] = []

        def start() -> None:
            action()
            done.append(True)

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            summary = run_probe(
                tracekit_bus,
                spec,
                values,
                tuple(sinks),
                RunOptions(duration=3600, quiet=True, force=True),
                until=lambda: bool(done),
                on_attached=start,
            )
        return Output(summary, buf.getvalue())

    yield run
