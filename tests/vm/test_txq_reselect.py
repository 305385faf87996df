"""txq-flip's causes on a 6.19+ kernel: the TX-queue reselection timer against ooo_okay.

From 6.19 a busy socket may leave its queue without ``ooo_okay`` once its mapping is
older than ``net.core.txq_reselection_ms``. The lab's socket sends from two CPUs
(the client's, and the receiver's through ACK processing) with XPS mapping each to
its own queue, so a short timer moves it often. fq paces it (maxrate) so that its
packets wait in the qdisc: ``ooo_okay`` is then rarely set (on 7.2 under TCG an
unpaced socket drains so often that every move had ``ooo_okay``), and what moves
the socket is the timer. Checked against what the kernel
decides by (the sysctl as it reads it back, in its jiffies) and counts (``tc -s
qdisc`` per queue, the probe's in-kernel counters). Runs on the 7.2 row.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from pathlib import Path

import pytest

from tracekit.bus import Bus
from tracekit.lab.txq_flip import TxqFlipResult, lab_txq_flip
from tracekit.probes.txq_flip import CAUSES
from tracekit.run import Compiled, RunOptions, compile_probe

from .helpers import trace_batch_rows, trace_events

pytestmark = pytest.mark.vm

KNOB = Path("/proc/sys/net/core/txq_reselection_ms")
RESELECT = CAUSES.index("reselect")
OOO_OKAY = CAUSES.index("ooo_okay")
SHORT_MS = 20
JIFFY_MS = 4  # Debian's HZ=250: the kernel's timer and the sysctl move in 4 ms steps


@pytest.fixture(scope="module")
def runs(bus: Bus, out_dir: Path) -> dict[int, tuple[TxqFlipResult, Path]]:
    if not KNOB.exists():
        pytest.skip("this kernel has no net.core.txq_reselection_ms (6.19+)")
    spec = bus.probes.get("txq-flip")
    compiled: Compiled = compile_probe(
        spec, spec.resolve_params({}), RunOptions(quiet=True, loader="core")
    )
    out = {}
    try:
        for ms in (0, SHORT_MS):
            trace = out_dir / f"txq-reselect-{ms}.tkt"
            with contextlib.redirect_stdout(io.StringIO()):
                res = lab_txq_flip(
                    bus,
                    ("hist", f"msgpack={trace}"),
                    5,
                    "fq",
                    compiled=compiled,
                    reselection_ms=ms,
                    qdisc_args=("maxrate", "20mbit"),
                    force=True,
                    quiet=True,
                )
            out[ms] = (res, trace)
    finally:
        compiled.probe.close()
    return out


def test_timer_off_moves_no_socket_by_reselection(runs: dict) -> None:
    res, trace = runs[0]
    evs = trace_events(trace)
    assert res.iperf_mbit > 1
    assert evs, "not even the first pick was seen"
    assert not [e for e in evs if e["cause"] == RESELECT]


def test_short_timer_moves_busy_sockets_without_ooo_okay(runs: dict) -> None:
    _, trace = runs[SHORT_MS]
    evs = trace_events(trace)
    resel = [e for e in evs if e["cause"] == RESELECT]
    assert len(resel) >= 5, {CAUSES[c]: sum(e["cause"] == c for e in evs) for c in range(5)}
    for e in resel:
        assert e["ooo_okay"] == 0 and e["queue_before"] < 4, e
    # The kernel moved the socket only because its mapping was older than the
    # timer: the socket's previous move (which set the mapping) is at least that
    # long before, give or take a tick.
    last: dict[int, int] = {}
    gaps = defaultdict(list)
    for e in sorted(evs, key=lambda e: e["ts_ns"]):
        sk, ts = int(e["sk"]), int(e["ts_ns"])
        if sk in last:
            gaps[e["cause"]].append(ts - last[sk])
        last[sk] = ts
    assert gaps[RESELECT], "no reselection followed an earlier move of the same socket"
    assert min(gaps[RESELECT]) >= (SHORT_MS - JIFFY_MS) * 1_000_000, sorted(gaps[RESELECT])[:5]


def test_reselected_queues_are_the_queues_tc_counted(runs: dict) -> None:
    for res, trace in runs.values():
        evs = trace_events(trace)
        in_events = {e["queue_after"] for e in evs} | {e["queue_before"] for e in evs}
        in_events.discard(0xFFFF)
        grew = {q for q, n in res.queue_delta.items() if n > 0}
        assert in_events == grew, (in_events, res.queue_delta)
        r, n = trace_batch_rows(trace)
        assert r.footer is not None and r.footer.lost_total == 0
        assert sum(r.footer.counters["txq_counts"]["changes"].values()) == n
