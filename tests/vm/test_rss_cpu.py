"""rss-cpu in the VM: per-CPU counts against /proc/net/softnet_stat, RPS spreading."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.bus import Bus
from tracekit.hist import Histogram
from tracekit.lab.scenarios import LabResult, lab_rss_cpu
from tracekit.run import Compiled
from tracekit.stats import imbalance

from .conftest import attached_residue, trace_rows

pytestmark = pytest.mark.vm

# Packets the kernel may process between reading softnet_stat and the probe's
# counters (a straggling ACK or FIN): per CPU, at most this many.
TOLERANCE = 8


@pytest.fixture(scope="module")
def runs(bus: Bus, rss_compiled: Compiled, out_dir: Path) -> dict[str, tuple[LabResult, str]]:
    out = {}
    for spread in ("none", "rps"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            res = lab_rss_cpu(
                bus,
                ("hist", f"msgpack={out_dir / 'rss-cpu.tkt'}"),
                4,
                spread,
                compiled=rss_compiled,
                force=True,
                quiet=True,
            )
        out[spread] = (res, buf.getvalue())
    return out


@pytest.mark.parametrize("spread", ["none", "rps"])
def test_per_cpu_counts_match_softnet_stat(runs: dict, spread: str) -> None:
    res, _ = runs[spread]
    probe = res.counter_delta("rss_counts", "packets")
    assert sum(probe.values()) > 1000, probe
    for cpu, n in res.softnet_delta.items():
        assert abs(probe.get(cpu, 0) - n) <= TOLERANCE, (cpu, probe, res.softnet_delta)


def test_rps_spreads_the_receive_work(runs: dict) -> None:
    none, _ = runs["none"]
    rps, _ = runs["rps"]
    n = len(none.softnet_delta)
    _, _, before = imbalance(none.counter_delta("rss_counts", "packets"), n)
    _, _, after = imbalance(rps.counter_delta("rss_counts", "packets"), n)
    assert before > 0.9 * n, before  # nearly everything on the sender's CPU
    assert after < before - 0.2, (before, after)


def test_kernel_aggregate_and_streamed_events_agree(runs: dict, out_dir: Path) -> None:
    reader, rows = trace_rows(out_dir / "rss-cpu.rps.tkt")
    s, f = reader.session, reader.footer
    assert f is not None and f.kernel_agg
    assert f.lost_total == 0, f.lost
    names = s.schema.names
    for spec in s.schema.histograms:
        a, b = Histogram(spec, s.schema), Histogram(spec, s.schema)
        a.add_rows(tuple(r[n] for n in names) for r in rows)
        b.add_weighted(f.kernel_agg)
        assert a.render() == b.render()
    assert sum(f.counters["rss_counts"]["packets"].values()) == len(rows)


def test_live_output_names_the_busiest_cpu_and_replays_the_same(runs: dict, out_dir: Path) -> None:
    _, live = runs["none"]
    assert "busiest CPU: cpu0" in live and "imbalance" in live
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracekit",
            "replay",
            str(out_dir / "rss-cpu.none.tkt"),
            "--sink",
            "hist",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout == live


def test_nothing_left_attached() -> None:
    assert attached_residue() == []
