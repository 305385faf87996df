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
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from tracekit.base.schema import Schema
from tracekit.base.session import LostReport, Session, Summary
from tracekit.bpf.probe_base import (
    MAX_STACK_DEPTH,
    LegacyTables,
    ProbeContext,
    agg_key_struct,
    agg_rows,
    run_enrich,
)
from tracekit.plugin.bus import Bus, build_bus
from tracekit.plugin.contract import KernelAggregate, SinkOptions
from tracekit.plugin.pipeline import Pipeline, build_sinks
from tracekit.plugin.registry import AttachPoint, ProbeSpec, expand_points

if TYPE_CHECKING:
    from tracekit.live.run import Compiled


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


def aggregate_from_keys(
    spec: ProbeSpec, counts: Mapping[bytes, int] | Iterable[tuple[bytes, int]]
) -> KernelAggregate:
    """The in-kernel aggregate a loader hands the sinks, from what the kernel holds:
    ``counts`` maps packed ``struct tk_agg_key`` bytes (as the C lays the struct
    out, read from the probe's source) to counts. Decoded exactly as the loaders
    decode their ``tk_agg`` map: a ``char name[N]`` member becomes text, like a
    streamed event's field. (``KernelAggregate.from_counts`` takes Python values
    instead.)"""
    from tracekit.base.cdecl import CSource

    key = CSource.parse(spec.source.read_text(), spec.source.name).struct("tk_agg_key")
    members = [(name, offset) for name, _, offset in key.fields()]
    st, names = agg_key_struct(spec, members, key.size)
    order = [names.index(n) for n in spec.agg_fields]
    items = counts.items() if isinstance(counts, Mapping) else counts
    pairs = []
    for raw, n in items:
        values = st.unpack(raw)
        pairs.append(([values[i] for i in order], int(n)))
    return KernelAggregate(
        tuple(spec.agg_fields) + tuple(spec.enriched_fields), agg_rows(spec, pairs)
    )


# -- a loaded probe without a kernel -----------------------------------------------


class StandInProbe:
    """A ``tracekit.LoadedProbe`` in user space: fixed batches, stacks and symbols.

    For testing a probe's ``enrich`` without a kernel (``enrich(rows)`` runs it as a
    live run does, with a ``ProbeContext`` built on this stand-in's two
    primitives), and for driving ``tracekit.execute`` through a plan
    (``compiled()``). ``stacks`` is the stack map (``stack_table``, ``tk_stacks`` by
    default): stack id -> addresses, innermost first; ``symbols`` names addresses
    (``[unknown]`` otherwise); ``maps`` holds any other map as raw key -> value
    bytes. ``batches`` are what successive polls return; ``counters`` what
    ``read_counters`` returns; ``agg`` the in-kernel aggregate (a
    ``KernelAggregate``). ``lookups`` and ``symbol_calls`` count the primitives'
    calls (a test can check that each stack is read once).
    """

    loader = "stand-in"

    def __init__(
        self,
        spec: ProbeSpec,
        batches: Iterable[list[tuple[Any, ...]]] = (),
        *,
        params: Mapping[str, int] | None = None,
        stacks: Mapping[int, Sequence[int]] | None = None,
        symbols: Mapping[int, str] | None = None,
        maps: Mapping[str, Mapping[bytes, bytes]] | None = None,
        counters: Mapping[str, Mapping[str, Mapping[int, int]]] | None = None,
        agg: KernelAggregate | None = None,
        losses: Iterable[LostReport] = (),
        stream: bool = True,
        aggregate: bool = False,
        output: str = "ringbuf",
        sample: int = 1,
        stack_table: str = "tk_stacks",
    ) -> None:
        self.spec = spec
        self.params: dict[str, int] = (
            dict(params) if params is not None else spec.resolve_params({})
        )
        self.output, self.stream, self.aggregate, self.sample = output, stream, aggregate, sample
        self.batches = [list(b) for b in batches]
        self.stacks = {int(k): [int(a) for a in v] for k, v in (stacks or {}).items()}
        self.symbols = dict(symbols or {})
        self.maps = {name: dict(m) for name, m in (maps or {}).items()}
        self.counters = {m: {k: dict(v) for k, v in c.items()} for m, c in (counters or {}).items()}
        self.agg = agg
        self.losses = list(losses)
        self.stack_table = stack_table
        self.attached: list[AttachPoint] = []
        self.lookups: dict[str, int] = {}
        self.symbol_calls = 0
        self.detached = 0
        self.closed = False

    # -- the run's calls -------------------------------------------------------------

    def open_output(self) -> None:
        pass

    def close_output(self) -> None:
        pass

    def attach(self, points: list[AttachPoint] | None = None) -> None:
        self.attached = expand_points(list(self.spec.attach) if points is None else points)

    def detach(self) -> None:
        self.detached += 1
        self.attached = []

    def close(self) -> None:
        self.closed = True

    def reset(self) -> None:
        pass

    def poll(self, timeout_ms: int = 100) -> list[tuple[Any, ...]]:
        return self.batches.pop(0) if self.batches else []

    def read_counters(self) -> dict[str, dict[str, dict[int, int]]]:
        return {m: {k: dict(v) for k, v in c.items()} for m, c in self.counters.items()}

    def read_agg(self) -> list[tuple[tuple[Any, ...], int]]:
        return list(self.agg.rows) if self.agg is not None and self.aggregate else []

    def new_losses(self) -> list[LostReport]:
        out, self.losses = self.losses, []
        return out

    # -- the two primitives ------------------------------------------------------------

    def map_lookup(self, name: str, key: bytes) -> bytes | None:
        self.lookups[name] = self.lookups.get(name, 0) + 1
        if name == self.stack_table and name not in self.maps:
            (sid,) = struct.unpack("=I", key)
            addrs = self.stacks.get(sid)
            if addrs is None:
                return None
            return struct.pack(
                f"={MAX_STACK_DEPTH}Q", *addrs, *[0] * (MAX_STACK_DEPTH - len(addrs))
            )
        return self.maps.get(name, {}).get(bytes(key))

    def kernel_symbol(self, addr: int) -> str:
        self.symbol_calls += 1
        return self.symbols.get(addr, "[unknown]")

    def legacy_bpf(self) -> Any:
        return LegacyTables(self)

    # -- for tests -------------------------------------------------------------------

    def context(self, session: Session | None = None) -> ProbeContext:
        """The ``ProbeContext`` an ``enrich`` gets (a fresh session unless given)."""
        return ProbeContext.of(self, session or self.session())

    def session(self) -> Session:
        return Session(probe=self.spec.name, schema=self.spec.schema, params=self.params)

    def enrich(
        self, rows: list[tuple[Any, ...]], session: Session | None = None
    ) -> list[tuple[Any, ...]]:
        """The spec's ``enrich`` on ``rows`` as a live run calls it (either form)."""
        return run_enrich(self, session or self.session(), list(rows))

    def compiled(self) -> Compiled:
        """This stand-in as ``plan_run(..., compiled=...)`` takes a shared probe."""
        from tracekit.live.run import Compiled

        return Compiled(self, list(self.spec.attach), self.loader)


# -- pytest plugin (entry point pytest11: tracekit) -----------------------------------


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
    """What the fixtures return: the session's summary and what the sinks printed;
    ``loader`` is the loader that ran the probe (``bcc``, ``core``) for
    ``tracekit_run_probe``, None for a feed or a replay."""

    summary: Summary
    stdout: str
    loader: str | None = None


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
        params: Mapping[str, int | str] | None = None,
        loader: str = "auto",
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
    """In the VM: ``tracekit_run_probe("tcp-retrans", action, sinks=["hist"])`` loads
    the probe, attaches it, then runs ``action()`` (the traffic) in a thread while the
    probe drains, and stops when ``action`` returns; an exception in it is raised here.
    ``params`` are integers (as ``plan_run`` takes them; strings are parsed as on the
    command line), ``loader`` is ``auto``, ``bcc`` or ``core`` (``--loader``), and
    ``Output.loader`` says which one ran.
    """
    from tracekit.live.run import RunOptions, execute, plan_run

    if os.environ.get(IN_VM_ENV) != "1":
        pytest.skip("runs a BPF probe: only inside the VM")

    def run(
        name: str,
        action: Callable[[], None],
        sinks: Sequence[str] = ("hist",),
        params: Mapping[str, int | str] | None = None,
        loader: str = "auto",
    ) -> Output:
        spec = tracekit_bus.probes.get(name)
        # Planned before the traffic thread exists: a bad sink or parameter fails
        # here, with nothing started.
        plan = plan_run(
            tracekit_bus,
            spec,
            spec.resolve_params({k: str(v) for k, v in (params or {}).items()}),
            tuple(sinks),
            RunOptions(duration=3600, quiet=True, force=True, loader=loader),
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
        return Output(summary, buf.getvalue(), plan.load.loader if plan.load else None)

    yield run
