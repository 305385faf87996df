"""tracekit plugin: a ``tcp-retrans`` probe and a ``csv`` sink.

An example of a third-party plugin: installed with pip, found through the
``tracekit`` entry-point group, registered through the same hooks as tracekit's
built-ins, with one import from tracekit for its hooks.
"""

from __future__ import annotations

import csv
import sys
from importlib.resources import files
from typing import IO

from tracekit import hookimpl
from tracekit.errors import UsageError
from tracekit.registry import (
    AttachPoint,
    CounterMap,
    ProbeRegistry,
    ProbeSpec,
    SinkRegistry,
    SinkSpec,
)
from tracekit.schema import Field, HistSpec, Schema, format_value
from tracekit.session import EventBatch, Session, Summary

__version__ = "0.1.0"

SCHEMA = Schema(
    fields=(
        Field("ts_ns", "u64", unit="ns", display="ts"),
        Field("cpu", "u32", key=True),
        Field("saddr", "u32", key=True, display="ipv4"),
        Field("daddr", "u32", key=True, display="ipv4"),
        Field("sport", "u16", key=True, display="port"),
        Field("dport", "u16", key=True, display="port"),
        Field("segs", "u16", doc="segments retransmitted (tcp_skb_pcount)"),
        Field("state", "u8", key=True, doc="TCP state (1: established)"),
        Field("pad", "u8"),
        Field("pad2", "u32"),
    ),
    histograms=(
        HistSpec(
            value=None, by=("saddr", "sport", "daddr", "dport"), kind="count", title="retransmits"
        ),
    ),
)

PROBE = ProbeSpec(
    name="tcp-retrans",
    description="TCP retransmissions per flow (tracepoint tcp_retransmit_skb, kprobe fallback)",
    source=files(__package__).joinpath("tcp_retrans.bpf.c"),
    schema=SCHEMA,
    attach=(
        AttachPoint("raw_tracepoint", "tcp:tcp_retransmit_skb", "tk_retrans_tp", group="retrans"),
        AttachPoint("kprobe", "tcp_retransmit_skb", "tk_retrans_kprobe", group="retrans"),
    ),
    counters=(CounterMap("retrans_counts", ("skbs", "segments")),),
    min_kernel="5.8",
)


class CsvSink:
    """``--sink csv=PATH``: one CSV row per event, values shown as the console shows them."""

    def __init__(self, arg: str | None) -> None:
        self.path = arg or "-"
        self.f: IO[str] | None = None
        if self.path != "-":
            try:
                open(self.path, "a").close()
            except OSError as exc:
                raise UsageError(f"--sink csv={self.path}: {exc.strerror}") from None

    @hookimpl
    def tracekit_session_start(self, session: Session) -> None:
        self.f = sys.stdout if self.path == "-" else open(self.path, "w", newline="")  # noqa: SIM115
        self.w = csv.writer(self.f)
        self.w.writerow(session.schema.names)

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        fields, syms = session.schema.fields, session.symbols
        self.w.writerows(
            [format_value(f, v, syms) for f, v in zip(fields, row, strict=True)]
            for row in batch.rows
        )

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: Summary) -> None:
        if self.f is not None and self.f is not sys.stdout:
            self.f.close()


@hookimpl
def tracekit_register_probes(registry: ProbeRegistry) -> None:
    registry.add(PROBE)


@hookimpl
def tracekit_register_sinks(registry: SinkRegistry) -> None:
    registry.add(SinkSpec("csv", "one CSV row per event (csv=PATH, default stdout)", CsvSink))
