"""ksym fields are named by tracekit itself, from /proc/kallsyms (issue #16)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tracekit import Field, RunOptions, Schema, Session
from tracekit.base.session import EventBatch
from tracekit.bpf.core_stacks import KernelSymbols
from tracekit.bpf.ksyms import KsymNamer
from tracekit.live.run import Compiled, execute, plan_run
from tracekit.plugin.bus import build_bus
from tracekit.traces.tracefile import SYMBOLS, TraceReader

KALLSYMS = (
    b"ffffffff81000000 T _stext\n"
    b"ffffffff81100000 T tcp_sendmsg\n"
    b"ffffffff81100400 t tcp_push\n"
    b"ffffffffc0200000 t fq_dequeue\t[sch_fq]\n"
)
SCHEMA = Schema((Field("cpu", "u32"), Field("location", "u64", display="ksym"), Field("n", "u32")))


class CountingTable:
    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> KernelSymbols:
        self.reads += 1
        return KernelSymbols(KALLSYMS)


def test_each_new_address_is_named_once_per_session() -> None:
    session = Session(probe="p", schema=SCHEMA, params={})
    table = CountingTable()
    namer = KsymNamer(session, table)
    rows = [(0, 0xFFFFFFFF81100010, 1), (1, 0xFFFFFFFF81100410, 1), (0, 0, 1)] * 50
    namer.name_batch(EventBatch("p", rows, schema=SCHEMA))
    namer.name_batch(rows)  # the same addresses again: nothing new to look up
    namer.name_rows([(0, 0xFFFFFFFFC0200008, 1)])
    assert dict(session.symbols) == {
        0xFFFFFFFF81100010: "tcp_sendmsg",
        0xFFFFFFFF81100410: "tcp_push",
        0xFFFFFFFFC0200008: "fq_dequeue",
    }
    assert table.reads == 1  # kallsyms read once, when the first address needed it


def test_a_schema_without_ksym_fields_reads_no_kallsyms() -> None:
    session = Session(probe="p", schema=Schema((Field("cpu", "u32"),)), params={})
    table = CountingTable()
    namer = KsymNamer(session, table)
    namer.name_batch([(1,), (2,)])
    assert not namer and table.reads == 0


class Probe:
    """A loaded probe as execute sees it, yielding one batch of addresses."""

    def __init__(self, spec: Any) -> None:
        self.spec, self.params = spec, {}
        self.output, self.stream, self.aggregate, self.sample = "ringbuf", True, False, 1
        self.attached: list[Any] = []
        self.bpf = None
        self.batches = [[(0, 0xFFFFFFFF81100010, 3), (1, 0xFFFFFFFFC0200008, 4)]]

    def open_output(self) -> None: ...
    def attach(self, points: Any) -> None: ...
    def poll(self, timeout_ms: int = 100) -> list[tuple[Any, ...]]:
        return self.batches.pop(0) if self.batches else []

    def new_losses(self) -> list[Any]:
        return []

    def detach(self) -> None: ...
    def read_counters(self) -> dict[str, Any]:
        return {}

    def read_agg(self) -> list[Any]:
        return []


def test_a_run_names_ksym_fields_and_the_trace_keeps_the_names(
    tmp_path: Any, monkeypatch: Any
) -> None:
    import tracekit.bpf.ksyms

    monkeypatch.setattr(tracekit.bpf.ksyms, "read_symbols_in_background", lambda: CountingTable())
    bus = build_bus(load_entry_points=False)
    spec = dataclasses.replace(
        bus.probes.get("rss-cpu"),
        schema=SCHEMA,
        fields=(),
        histograms=(),
        enrich=None,
        report=None,
        counters=(),
    )
    probe = Probe(spec)
    trace = tmp_path / "t.tkt"
    plan = plan_run(
        bus,
        spec,
        None,
        (f"msgpack={trace}",),
        RunOptions(duration=60, quiet=True),
        compiled=Compiled(probe, []),  # type: ignore[arg-type]
    )
    execute(bus, plan, until=lambda: not probe.batches)
    stored: dict[int, str] = {}
    for rec in TraceReader(str(trace)).records():
        if rec.kind == SYMBOLS:
            stored.update(rec.payload[0])
    assert stored == {0xFFFFFFFF81100010: "tcp_sendmsg", 0xFFFFFFFFC0200008: "fq_dequeue"}
