"""Floods: every event is delivered or counted as lost, exactly (runs in the VM).

rss-cpu counts every received packet in a per-CPU counter before it emits; so with
events for all packets, delivered + lost must equal that counter, whatever the
buffer or the rate limit dropped.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import pytest

from tracekit.bus import Bus
from tracekit.lab.scenarios import LabResult, lab_rss_cpu
from tracekit.run import RunOptions

from .conftest import attached_residue

pytestmark = pytest.mark.vm


def flood(bus: Bus, out_dir: Path, name: str, opts: RunOptions) -> tuple[LabResult, float]:
    t = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        res = lab_rss_cpu(
            bus,
            (f"msgpack={out_dir / name}",),
            3,
            "none",
            rate="40M",
            force=True,
            quiet=True,
            run_opts=opts,
        )
    return res, time.monotonic() - t


def test_perf_buffer_overrun_is_counted_exactly(bus: Bus, out_dir: Path) -> None:
    res, took = flood(bus, out_dir, "flood-perf.tkt", RunOptions(output="perf", page_cnt=1))
    s = res.summary
    packets = sum(s.counters["rss_counts"]["packets"].values())
    assert s.lost.get("perf"), "the flood did not overrun a 1-page perf buffer"
    assert s.events + s.lost_total == packets, (s.events, s.lost, packets)
    assert took < 120  # the tool kept up with draining; nothing stalled
    (out_dir / "reliability.txt").open("a").write(
        f"perf buffer 1 page/CPU: {packets} packets, {s.events} delivered, "
        f"{s.lost_total} lost {s.lost}\n"
    )


def test_ring_buffer_and_rate_limit_are_counted_exactly(bus: Bus, out_dir: Path) -> None:
    limit = 2000
    res, _ = flood(
        bus,
        out_dir,
        "flood-ringbuf.tkt",
        RunOptions(output="ringbuf", page_cnt=1, max_events_per_sec=limit),
    )
    s = res.summary
    packets = sum(s.counters["rss_counts"]["packets"].values())
    assert s.lost.get("ratelimit"), s.lost
    assert s.events + s.lost_total == packets, (s.events, s.lost, packets)
    # Per CPU and per second, at most limit/ncpus + 1 events pass.
    assert s.events <= (limit + 2) * (s.duration + 1)
    (out_dir / "reliability.txt").open("a").write(
        f"ring buffer 16 pages + --max-events-per-sec {limit}: {packets} packets, "
        f"{s.events} delivered in {s.duration:.1f}s, lost {s.lost}\n"
    )


def test_nothing_left_attached() -> None:
    assert attached_residue() == []
