"""Helpers for testing sinks and trace files without a kernel, and the pytest fixtures.

Plugin authors can feed synthetic batches (and in-kernel aggregates) through a sink
and record or replay trace files with these, on any machine. It is also a pytest
plugin a test suite opts into (``pytest_plugins = ["tracekit.testing"]`` in its
conftest.py, or ``pytest -p tracekit.testing``): its tests then get the fixtures
``tracekit_bus``, ``tracekit_feed``, ``tracekit_replay`` and ``tracekit_run_probe``
and the ``vm`` marker (docs/writing-plugins.md). No entry point loads it into every
pytest run of the environment.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pytest

from tracekit.base.schema import Schema
from tracekit.base.session import LostReport, Session, Summary
from tracekit.plugin.bus import Bus, build_bus
from tracekit.plugin.contract import KernelAggregate, SinkOptions
from tracekit.plugin.pipeline import Pipeline, build_sinks


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
    kernel_agg: KernelAggregate | None = None,
) -> Summary:
    """Drive sinks exactly as a live run does: start, batches, losses, end.

    ``kernel_agg`` plays a run whose probe counted in the kernel: the sinks see a
    copy of ``session`` saying which fields were aggregated (``session.aggregated``)
    and the summary carries the rows, as a live run's would (stream no ``batches``
    with it, as such a run has none).
    """
    bus = bus or build_bus()
    sinks = build_sinks(bus, tuple(sink_args), SinkOptions(force=force), session.schema)
    if kernel_agg is not None:
        # A run that counted in the kernel streams only if it was given batches.
        batches = [list(b) for b in batches]
        session = replace(session, aggregated=kernel_agg.fields, streamed=bool(batches))
    with Pipeline(bus, session, sinks.objects) as pipe:
        for b in batches:
            pipe.batch(b)
        for report in lost:
            pipe.lost(report)
        summary = pipe.end(
            counters=counters, kernel_agg=list(kernel_agg.rows) if kernel_agg else None
        )
    pipe.raise_if_sink_failed()
    return summary


# -- pytest plugin (opt-in: pytest_plugins = ["tracekit.testing"], or -p tracekit.testing)
#
# A plugin package's tests get these fixtures and the ``vm`` marker from it.

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
    """What the fixtures return: the session's summary and what the sinks printed."""

    summary: Summary
    stdout: str


class FeedFixture(Protocol):
    """The type of the ``tracekit_feed`` fixture (annotate the test's argument with it)."""

    def __call__(
        self,
        session: Session,
        sinks: Sequence[str],
        batches: Iterable[list[tuple[Any, ...]]],
        *,
        lost: Iterable[LostReport] = (),
        counters: dict[str, dict[str, dict[int, int]]] | None = None,
        force: bool = False,
        kernel_agg: KernelAggregate | None = None,
    ) -> Output: ...


class ReplayFixture(Protocol):
    """The type of the ``tracekit_replay`` fixture."""

    def __call__(self, path: str | Path, sinks: Sequence[str] = ("hist",)) -> Output: ...


class RunProbeFixture(Protocol):
    """The type of the ``tracekit_run_probe`` fixture."""

    def __call__(
        self,
        name: str,
        action: Callable[[], None],
        sinks: Sequence[str] = ("hist",),
        params: dict[str, str] | None = None,
    ) -> Output: ...


@pytest.fixture
def tracekit_bus() -> Bus:
    """The plugin bus with every installed plugin (built-ins and entry points)."""
    return build_bus()


@pytest.fixture
def tracekit_feed(tracekit_bus: Bus) -> FeedFixture:
    """``tracekit_feed(session, ["csv=out.csv"], [rows, ...])``: drive sinks like a run."""

    def run(
        session: Session,
        sinks: Sequence[str],
        batches: Iterable[list[tuple[Any, ...]]],
        *,
        lost: Iterable[LostReport] = (),
        counters: dict[str, dict[str, dict[int, int]]] | None = None,
        force: bool = False,
        kernel_agg: KernelAggregate | None = None,
    ) -> Output:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            summary = feed(
                tracekit_bus,
                session,
                sinks,
                batches,
                lost=lost,
                counters=counters,
                force=force,
                kernel_agg=kernel_agg,
            )
        return Output(summary, buf.getvalue())

    return run


@pytest.fixture
def tracekit_replay(tracekit_bus: Bus) -> ReplayFixture:
    """``tracekit_replay(path, ["hist"])``: replay a trace file through sinks."""
    from tracekit.traces.replay import replay

    def run(path: str | Path, sinks: Sequence[str] = ("hist",)) -> Output:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            summary = replay(tracekit_bus, str(path), tuple(sinks), SinkOptions(force=True))
        return Output(summary, buf.getvalue())

    return run


@pytest.fixture
def tracekit_run_probe(tracekit_bus: Bus) -> Iterator[RunProbeFixture]:
    """In the VM: ``tracekit_run_probe("tcp-retrans", action, sinks=["hist"])`` compiles
    the probe, attaches it, then runs ``action()`` (the traffic) in a thread while the
    probe drains, and stops when ``action`` returns; an exception in it is raised here.
    """
    from tracekit.live.run import RunOptions, execute, plan_run

    if os.environ.get(IN_VM_ENV) != "1":
        pytest.skip("runs a BPF probe: only inside the VM")

    def run(
        name: str,
        action: Callable[[], None],
        sinks: Sequence[str] = ("hist",),
        params: dict[str, str] | None = None,
    ) -> Output:
        spec = tracekit_bus.probes.get(name)
        # Planned before the traffic thread exists: a bad sink or parameter fails
        # here, with nothing started.
        plan = plan_run(
            tracekit_bus,
            spec,
            spec.resolve_params(params or {}),
            tuple(sinks),
            RunOptions(duration=3600, quiet=True, force=True),
        )
        done = threading.Event()
        failed: list[BaseException] = []

        def traffic() -> None:
            try:
                action()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                failed.append(exc)
            finally:
                done.set()

        # The traffic runs beside the drain loop, not before it: events it causes are
        # read as they come (a buffer the size of a second of traffic would overflow
        # if the whole action ran before the first drain).
        worker = threading.Thread(target=traffic, name=f"tracekit-action-{name}", daemon=True)
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                summary = execute(
                    tracekit_bus,
                    plan,
                    until=done.is_set,
                    on_attached=worker.start,
                )
        finally:
            if worker.is_alive():
                worker.join()
        if failed:
            raise failed[0]
        return Output(summary, buf.getvalue())

    yield run
