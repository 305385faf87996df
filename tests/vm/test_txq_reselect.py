"""txq-flip's causes on a 6.19+ kernel: the TX-queue reselection timer against ooo_okay.

From 6.19 a busy socket may leave its queue without ``ooo_okay`` once its mapping is
older than ``net.core.txq_reselection_ms``. The workload is the test's own
(``migrating_sender.py``), so the test knows when the socket's writes come from which
CPU: one TCP sender writes a small message every ``PERIOD_MS`` with ``TCP_NODELAY``
(autocorking off: each write is transmitted, and its queue picked, in ``send()`` on
the sender's CPU) and moves itself between CPU 0 and CPU 1 every ``DWELL_MS``; XPS
maps CPU n to queue n. ``TCP_TX_DELAY`` holds each packet ``TX_DELAY_MS`` in fq, so
every write finds the previous packet both in a host queue and unacknowledged:
``tcp_transmit_skb()`` sets ``ooo_okay`` only when one of the two is not so (since
6.6, ``sk_wmem_alloc_get(sk) < SKB_TRUESIZE(1) || tcp_rtx_queue_empty(sk)``), so it
stays clear and nothing but the timer may move the socket.

With the timer off the socket stays on its first queue; at 20 ms each migration is
followed by one move to the new CPU's queue, by the timer (``reselect``, ooo_okay 0),
made by the sender on that CPU, at least the timer (less a tick) after the socket's
previous move. Writes the sender made after a stall longer than the delay may find
the pipe drained (then ``ooo_okay`` may move the socket): the sender reports those
gaps, and only they may explain other moves. Checked against ``tc -s qdisc`` per
queue and the probe's in-kernel counters. Runs on the 7.2 row.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tracekit.lab.netns import ADDR_A, ADDR_B, NetnsLab
from tracekit.lab.txq_flip import set_txq_reselection
from tracekit.live.run import Compiled, RunOptions, compile_probe, run_probe
from tracekit.plugin.bus import Bus
from tracekit.probes.txq_flip import CAUSES

from .helpers import trace_batch_rows, trace_events

pytestmark = pytest.mark.vm

KNOB = Path("/proc/sys/net/core/txq_reselection_ms")
SENDER = Path(__file__).with_name("migrating_sender.py")
FIRST = CAUSES.index("first")
RESELECT = CAUSES.index("reselect")
OOO_OKAY = CAUSES.index("ooo_okay")
SHORT_MS = 20
JIFFY_MS = 4  # Debian's HZ=250: the kernel's timer and the sysctl move in 4 ms steps
PORT = 5301
CPUS = (0, 1)
# 25 dwells of 200 ms: 24 migrations in 5 s. A dwell is ten timers long, so at the
# first write after a migration the mapping (set at the previous one) is long due.
DWELLS, DWELL_MS = 25, 200
# A write every 10 ms, each packet held 50 ms: about five packets in fq at any time,
# well inside the initial congestion window (10) and TSQ's limit (which TCP raises
# by the delay), so no write waits for an ACK or a TX completion to be sent from
# another CPU; a stall must last five periods to drain the pipe.
PERIOD_MS, TX_DELAY_MS = 10, 50
SIZE = 1000  # above the receiver's first rcv_mss (536): each segment is ACKed at once
MSS = 1448
NO_QUEUE = 0xFFFF


@dataclass
class Run:
    trace: Path
    report: dict[str, Any]  # the sender's own account (migrating_sender.send)
    received: int
    queue_delta: dict[int, int]
    ifindex: int

    def events(self) -> list[dict[str, Any]]:
        """The sender's socket on tk0 while it wrote, in time order.

        Its teardown comes after: the last ACK (for the sink's FIN) is sent in softirq
        on whichever CPU received that FIN, with nothing left in flight, so
        ``ooo_okay`` may move it there; that move is in the trace and in tc's counts
        (``test_reselected_queues_are_the_queues_tc_counted``), not in these.
        """
        evs = [
            e
            for e in trace_events(self.trace)
            if e["ifindex"] == self.ifindex
            and e["sport"] == self.report["sport"]
            and int(e["ts_ns"]) < self.report["t_end_ns"]
        ]
        return sorted(evs, key=lambda e: int(e["ts_ns"]))

    def drains(self) -> int:
        return len(self.report["drains_ns"])


def _pin_neighbours(lab: NetnsLab) -> None:
    """Each side's neighbour entry for the other made permanent: no ARP probe (B's
    entry for A is never confirmed by a socket that only ACKs) goes out through a
    queue of tk0 during the run, where tc would count a packet no socket sent."""
    mac_a = lab.ns(lab.ns_a, "cat", f"/sys/class/net/{lab.dev_a}/address").strip()
    mac_b = lab.ns(lab.ns_b, "cat", f"/sys/class/net/{lab.dev_b}/address").strip()
    for ns, addr, mac, dev in (
        (lab.ns_a, ADDR_B, mac_b, lab.dev_a),
        (lab.ns_b, ADDR_A, mac_a, lab.dev_b),
    ):
        lab.ns(ns, "ip", "neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent")


def _traced_run(bus: Bus, compiled: Compiled, ms: int, trace: Path) -> Run:
    spec = bus.probes.get("txq-flip")
    with NetnsLab(txqueues=4, qdisc="fq") as lab:
        set_txq_reselection(lab, ms)
        lab.ns(lab.ns_a, "sysctl", "-qw", "net.ipv4.tcp_autocorking=0")
        _pin_neighbours(lab)
        server = lab.popen(lab.ns_b, sys.executable, str(SENDER), "serve", ADDR_B, str(PORT))
        assert server.stdout is not None
        # Readiness: the sink says so once it listens (or its output ends: it died).
        line = server.stdout.readline()
        if line.strip() != "listening":
            server.wait(timeout=10)
            err = server.stderr.read() if server.stderr else ""
            pytest.fail(f"sink did not start: {line!r} {err}")
        before: dict[str, dict[int, int]] = {}
        after: dict[str, dict[int, int]] = {}
        sender: list[Any] = []

        def start() -> None:
            before["queues"] = lab.queue_packets()
            sender.append(
                lab.popen(
                    lab.ns_a,
                    sys.executable,
                    str(SENDER),
                    "send",
                    ADDR_B,
                    str(PORT),
                    ",".join(map(str, CPUS)),
                    str(DWELLS),
                    str(DWELL_MS),
                    str(PERIOD_MS),
                    str(TX_DELAY_MS),
                    str(SIZE),
                )
            )

        def done() -> bool:
            return bool(sender) and sender[0].poll() is not None

        def end() -> None:
            after["queues"] = lab.queue_packets()

        # The sender keeps its own schedule (5 s); the rest is slack for a slow VM.
        opts = RunOptions(quiet=True, force=True, duration=DWELLS * DWELL_MS / 1000 + 120)
        with contextlib.redirect_stdout(io.StringIO()):
            run_probe(
                bus,
                spec,
                None,  # the compiled probe's own parameters
                ("hist", f"msgpack={trace}"),
                opts,
                compiled=compiled,
                until=done,
                on_attached=start,
                on_detached=end,
            )
        assert sender, "the probe never attached"
        out, err = sender[0].communicate(timeout=60)
        assert sender[0].returncode == 0, err
        sout, serr = server.communicate(timeout=60)
        assert server.returncode == 0, serr
        report = json.loads(out.splitlines()[-1])
        received = json.loads(sout.splitlines()[-1])["bytes"]
        delta = {q: n - before["queues"].get(q, 0) for q, n in after["queues"].items()}
        return Run(trace, report, received, delta, lab.ifindex_a)


@pytest.fixture(scope="module")
def runs(bus: Bus, out_dir: Path) -> dict[int, Run]:
    if not KNOB.exists():
        pytest.skip("this kernel has no net.core.txq_reselection_ms (6.19+)")
    spec = bus.probes.get("txq-flip")
    compiled: Compiled = compile_probe(
        spec, spec.resolve_params({}), RunOptions(quiet=True, loader="core")
    )
    try:
        return {
            ms: _traced_run(bus, compiled, ms, out_dir / f"txq-reselect-{ms}.tkt")
            for ms in (0, SHORT_MS)
        }
    finally:
        compiled.probe.close()


def _workload_ran(run: Run) -> None:
    """The sender did what the test counts on: every dwell on its CPU, every byte
    received."""
    rep = run.report
    dwells = rep["dwells"]
    assert len(dwells) == DWELLS
    assert all(d["ran_on"] == d["cpu"] for d in dwells), dwells
    assert run.received == rep["bytes"] == rep["sent"] * SIZE > 0
    # Every byte went through tk0's queues (tc's own count), in packets of at most
    # one MSS (MTU 1500 less IPv4, TCP and timestamp headers); one packet per
    # message while each write is sent in send(), fewer if some were coalesced.
    assert sum(run.queue_delta.values()) >= -(-rep["bytes"] // MSS), (run.queue_delta, rep)


def test_timer_off_keeps_the_socket_on_its_first_queue(runs: dict[int, Run]) -> None:
    run = runs[0]
    _workload_ran(run)
    evs = run.events()
    assert evs and evs[0]["cause"] == FIRST and evs[0]["queue_after"] == CPUS[0], evs[:3]
    assert not [e for e in trace_events(run.trace) if e["cause"] == RESELECT]
    # The sender spent half its dwells on the other CPU, where XPS gives the other
    # queue: without the timer only ooo_okay can move it, and that needs the pipe
    # drained, which only a stall longer than the delay allows (one move each).
    later = evs[1:]
    assert all(e["cause"] == OOO_OKAY for e in later), later
    assert len(later) <= run.drains(), (later, run.report["drains_ns"])


def test_short_timer_moves_the_socket_after_each_migration(runs: dict[int, Run]) -> None:
    run = runs[SHORT_MS]
    _workload_ran(run)
    evs = run.events()
    assert evs and evs[0]["cause"] == FIRST and evs[0]["queue_after"] == CPUS[0], evs[:3]
    dwells = run.report["dwells"]
    delay_ns = TX_DELAY_MS * 1_000_000
    explained = {id(evs[0])}
    clean = 0
    for i, d in enumerate(dwells[1:], start=1):
        lo = d["t_ns"]
        hi = dwells[i + 1]["t_ns"] if i + 1 < len(dwells) else run.report["t_end_ns"]
        window = [e for e in evs if lo <= int(e["ts_ns"]) < hi]
        if d["gap_ns"] >= delay_ns:
            continue  # the sender stalled across the migration: either cause may move it
        clean += 1
        # The first write on the new CPU found the previous packet still in fq and
        # unacknowledged (ooo_okay clear), and the mapping a dwell old: the timer,
        # and nothing else, moved the socket to this CPU's queue, in the sender's
        # own send() on this CPU.
        assert window, f"migration {i} to CPU {d['cpu']} did not move the socket"
        e = window[0]
        assert (e["cause"], e["ooo_okay"]) == (RESELECT, 0), (i, e)
        assert e["queue_after"] == e["cpu"] == d["cpu"], (i, e)
        assert e["pid"] == run.report["pid"], (i, e)
        explained.add(id(e))
    # Stalls across migrations are rare on an idle VM: most migrations must have
    # been clean, or this run did not test the timer.
    assert clean >= (DWELLS - 1) // 2, (clean, [d["gap_ns"] for d in dwells])
    # Every other move needs a drained pipe (ooo_okay), or is a migration the sender
    # stalled across: at most one per drain.
    others = [e for e in evs if id(e) not in explained]
    assert len(others) <= run.drains(), (others, run.report["drains_ns"])
    # The kernel moved the socket by the timer only because its mapping was older
    # than the timer: the socket's previous move (which set the mapping) is at least
    # that long before, give or take a tick.
    for prev, e in itertools.pairwise(evs):
        if e["cause"] == RESELECT:
            assert e["ooo_okay"] == 0, e
            gap = int(e["ts_ns"]) - int(prev["ts_ns"])
            assert gap >= (SHORT_MS - JIFFY_MS) * 1_000_000, (prev, e)


def test_reselected_queues_are_the_queues_tc_counted(runs: dict[int, Run]) -> None:
    for run in runs.values():
        evs = [e for e in trace_events(run.trace) if e["ifindex"] == run.ifindex]
        in_events = {e["queue_after"] for e in evs} | {e["queue_before"] for e in evs}
        in_events.discard(NO_QUEUE)
        grew = {q for q, n in run.queue_delta.items() if n > 0}
        assert in_events == grew, (in_events, run.queue_delta)
        r, n = trace_batch_rows(run.trace)
        assert r.footer is not None and r.footer.lost_total == 0
        assert sum(r.footer.counters["txq_counts"]["changes"].values()) == n
