"""The benchmark probe, registered like any plugin's (not installed with tracekit)."""

from __future__ import annotations

from pathlib import Path

from tracekit.base.schema import Field
from tracekit.plugin.registry import AttachPoint, CounterMap, ProbeSpec

HERE = Path(__file__).resolve().parent

SPEC = ProbeSpec(
    name="bench-getppid",
    description="one event per getppid() call",
    source=HERE / "getppid.bpf.c",  # type: ignore[arg-type]
    fields=(Field("ts_ns", display="ts"), Field("cpu", key=True)),
    attach=(AttachPoint("tracepoint", "syscalls:sys_enter_getppid", "tk_bench"),),
    counters=(CounterMap("bench_counts", ("calls",)),),
)
