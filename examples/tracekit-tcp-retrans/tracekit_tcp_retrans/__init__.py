"""tracekit plugin: a ``tcp-retrans`` probe and a ``csv`` sink.

An example of a third-party plugin: installed with pip, found through the
``tracekit`` entry-point group, registered through the same hooks as tracekit's
built-ins, with one import from tracekit for everything it uses.
"""

from __future__ import annotations

import csv
import os
import sys
from importlib.resources import files
from typing import IO

from tracekit import (
    AttachPoint,
    CounterMap,
    EventBatch,
    Field,
    HistSpec,
    ProbeRegistry,
    ProbeSpec,
    Session,
    Sink,
    SinkOptions,
    SinkRegistry,
    SinkSpec,
    Summary,
    UsageError,
    check_output,
    create_output,
    csv_cell,
    format_value,
    hookimpl,
    tracepoint_fields,
)

__version__ = "0.1.0"


def prepare(params: dict[str, int]) -> dict[str, int]:
    """Compile for this kernel's tracepoint: from 6.17 it carries ``err`` and also
    fires for attempts that failed, which the C then counts apart."""
    fields = tracepoint_fields("tcp:tcp_retransmit_skb") or frozenset()
    return {"TK_RETRANS_ERR": int("err" in fields)}


# struct tk_event in tcp_retrans.bpf.c declares the fields, their types and order;
# here only how they are shown. Its `pad` members never become fields.
PROBE = ProbeSpec(
    name="tcp-retrans",
    description="TCP retransmissions per flow (tracepoint tcp_retransmit_skb, kprobe fallback)",
    source=files(__package__).joinpath("tcp_retrans.bpf.c"),
    fields=(
        Field("ts_ns", unit="ns", display="ts"),
        Field("cpu", key=True),
        Field("saddr", key=True, display="ipv4"),
        Field("daddr", key=True, display="ipv4"),
        Field("sport", key=True, display="port"),
        Field("dport", key=True, display="port"),
        Field("segs", doc="segments retransmitted (tcp_skb_pcount)"),
        Field("state", key=True, doc="TCP state (1: established)"),
    ),
    histograms=(
        HistSpec(
            value=None, by=("saddr", "sport", "daddr", "dport"), kind="count", title="retransmits"
        ),
    ),
    attach=(
        AttachPoint("raw_tracepoint", "tcp:tcp_retransmit_skb", "tk_retrans_tp", group="retrans"),
        AttachPoint("kprobe", "tcp_retransmit_skb", "tk_retrans_kprobe", group="retrans"),
    ),
    # Slot names from `enum retrans_counts` in the C.
    counters=(CounterMap("retrans_counts"),),
    prepare=prepare,
    min_kernel="5.8",
)
SCHEMA = PROBE.schema


class CsvSink(Sink):
    """``--sink csv=PATH``: one CSV row per event, values shown as the console shows them.

    ``csv=raw:PATH`` (or ``csv=raw`` for stdout) writes cells as they are; otherwise a
    cell that starts with ``= + - @``, a tab or a carriage return gets a ``'`` in
    front, so that no spreadsheet runs a comm or an address name as a formula. The
    file is made as tracekit makes its own (``create_output``: never through a link,
    mode 0600 unless ``--mode``, replaced only with ``--force``).
    """

    def __init__(self, arg: str | None) -> None:
        arg = arg or "-"
        self.raw = arg == "raw" or arg.startswith("raw:")
        self.path = (arg[4:] or "-") if self.raw else arg
        self.opts = SinkOptions()
        self.f: IO[str] | None = None

    def configure(self, opts: SinkOptions) -> None:
        self.opts = opts
        if self.path != "-":
            try:
                check_output(self.path, opts.force)
            except UsageError as exc:
                raise UsageError(f"--sink csv={self.path}: {exc}") from None

    @hookimpl
    def tracekit_session_start(self, session: Session) -> None:
        if self.path == "-":
            self.f = sys.stdout
        else:
            fd = create_output(self.path, mode=self.opts.mode, replace=self.opts.force)
            self.f = os.fdopen(fd, "w", newline="")
        self.w = csv.writer(self.f)
        self.w.writerow(session.schema.names)

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        fields, syms = session.schema.fields, session.symbols
        cell = (lambda v: v) if self.raw else csv_cell
        self.w.writerows(
            [cell(format_value(f, v, syms)) for f, v in zip(fields, row, strict=True)]
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
    registry.add(
        SinkSpec("csv", "one CSV row per event (csv=PATH, default stdout; csv=raw:PATH)", CsvSink)
    )
