"""The objects the bus passes to sinks: session metadata, event batches, loss, summary."""

from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from tracekit import __version__
from tracekit.schema import HistSpec, Schema


@dataclass
class Session:
    """One tracing run or one replay.

    Live runs fill the machine fields from the running kernel; replays take them from
    the trace header, so a sink cannot tell (and need not care) where events come from,
    except through ``mode``.
    """

    probe: str
    schema: Schema
    params: dict[str, int] = field(default_factory=dict)
    mode: str = "live"  # "live" or "replay"
    kernel: str = field(default_factory=platform.release)
    ncpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    hostname: str = field(default_factory=socket.gethostname)
    start_time: float = field(default_factory=time.time)
    tracekit_version: str = __version__
    # Kernel addresses to names, for fields shown as ``ksym``; stored in the trace so
    # replay shows names on a machine with other symbols.
    symbols: dict[int, str] = field(default_factory=dict)
    # Stack id -> list of kernel addresses, for probes that record stacks.
    stacks: dict[int, list[int]] = field(default_factory=dict)
    # Sampling the probe applied to streamed events (1 = every event), stated by
    # sinks that print. In-kernel counters and aggregates are never sampled.
    sample_every: int = 1
    # Fields the kernel aggregated on, when the probe counted in the kernel instead
    # of streaming single events (empty when streaming).
    aggregated: tuple[str, ...] = ()
    # Histograms the user asked for instead of the probe's defaults (``--sink hist=``).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def histograms(self) -> tuple[HistSpec, ...]:
        return self.schema.histograms

    def header(self) -> dict[str, Any]:
        """The trace file header fields that describe this session."""
        return {
            "tracekit_version": self.tracekit_version,
            "probe": self.probe,
            "params": dict(self.params),
            "schema": self.schema.to_dict(),
            "kernel": self.kernel,
            "ncpus": self.ncpus,
            "hostname": self.hostname,
            "start_time": self.start_time,
            "sample_every": self.sample_every,
            "aggregated": list(self.aggregated),
        }

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Session:
        return cls(
            probe=str(h["probe"]),
            schema=Schema.from_dict(h["schema"]),
            params={str(k): int(v) for k, v in dict(h.get("params", {})).items()},
            mode="replay",
            kernel=str(h.get("kernel", "?")),
            ncpus=int(h.get("ncpus", 0)),
            hostname=str(h.get("hostname", "?")),
            start_time=float(h.get("start_time", 0.0)),
            tracekit_version=str(h.get("tracekit_version", "?")),
            sample_every=int(h.get("sample_every", 1)),
            aggregated=tuple(str(a) for a in h.get("aggregated", ())),
        )


@dataclass
class EventBatch:
    """Events from one probe, each a tuple in schema order."""

    probe: str
    rows: list[tuple[Any, ...]]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class LostReport:
    """Events the kernel could not deliver, per CPU, since the previous report.

    ``source`` says which mechanism lost them: ``perf`` (perf buffer overrun),
    ``ringbuf`` (failed reserve, counted in the kernel), ``kretprobe`` (nmissed:
    the kretprobe had no free instance), ``ratelimit`` (dropped on purpose).
    """

    source: str
    per_cpu: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.per_cpu.values())


@dataclass
class Summary:
    """How a session ended: totals, losses, duration and in-kernel counters."""

    events: int = 0
    lost: dict[str, dict[int, int]] = field(default_factory=dict)
    duration: float = 0.0
    # Counter map name -> label -> per-CPU values, read from the kernel at the end.
    counters: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    interrupted: bool = False
    truncated: bool = False
    # Events counted in the kernel instead of streamed: (row, count) pairs whose
    # rows carry the aggregated fields (others are zero), for histogram sinks.
    kernel_agg: list[tuple[tuple[Any, ...], int]] = field(default_factory=list)
    # Lines the probe adds to the results (for example rss-cpu's imbalance).
    notes: list[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        return sum(sum(v.values()) for v in self.lost.values())

    def add_lost(self, report: LostReport) -> None:
        per = self.lost.setdefault(report.source, {})
        for cpu, n in report.per_cpu.items():
            per[cpu] = per.get(cpu, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "lost": {k: {int(c): n for c, n in v.items()} for k, v in self.lost.items()},
            "duration": self.duration,
            "counters": self.counters,
            "interrupted": self.interrupted,
            "kernel_agg": [[list(r), n] for r, n in self.kernel_agg],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        return cls(
            events=int(d.get("events", 0)),
            lost={
                str(k): {int(c): int(n) for c, n in dict(v).items()}
                for k, v in dict(d.get("lost", {})).items()
            },
            duration=float(d.get("duration", 0.0)),
            counters={
                str(m): {
                    str(lbl): {int(c): int(n) for c, n in dict(per).items()}
                    for lbl, per in dict(labels).items()
                }
                for m, labels in dict(d.get("counters", {})).items()
            },
            interrupted=bool(d.get("interrupted", False)),
            kernel_agg=[(tuple(r), int(n)) for r, n in d.get("kernel_agg", ())],
            notes=[str(n) for n in d.get("notes", ())],
        )
