"""What the VM tests share: tracekit as a subprocess, replays, run-then-signal, and
each probe's oracle check.

Mechanics live here (how to start tracekit, wait for a line, signal it, read a
trace), and the one comparison per probe of what it counted with what the kernel
counted itself (``ORACLES``): the probe's own tests and the no-headers test run the
same check, whichever loader loaded the probe.
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tracekit.lab.fq_throttle import FqThrottleResult, lab_fq_throttle
from tracekit.lab.ooo_okay import lab_ooo_okay
from tracekit.lab.rss_cpu import RssCpuResult, lab_rss_cpu
from tracekit.lab.traced import LabRun
from tracekit.lab.txq_flip import TxqFlipResult, lab_txq_flip
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus
from tracekit.traces.tracefile import BATCH, TraceReader

# Packets the kernel may process between reading softnet_stat and the probe's
# counters (a straggling ACK or FIN): per CPU, at most this many.
SOFTNET_TOLERANCE = 8


def too_old(probe: str) -> str | None:
    """The probe's ``min_kernel`` when the running kernel is older (the 5.10 row's
    fq-throttle: module BTF came in 5.11), else None."""
    from tracekit.base import kernel
    from tracekit.plugin.bus import build_bus
    from tracekit.plugin.registry import min_kernel_version

    need = build_bus().probes.get(probe).min_kernel
    running = kernel.version()
    return need if running is not None and running < min_kernel_version(need) else None


def tracekit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m tracekit ARGS`` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "tracekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replay(trace: Path, *sinks: str) -> subprocess.CompletedProcess[str]:
    """``tracekit replay TRACE --sink hist`` (or the given sinks): what a live run
    printed, a replay must print again."""
    args = [a for s in (sinks or ("hist",)) for a in ("--sink", s)]
    return tracekit("replay", str(trace), *args)


def assert_replay_prints(live: str, *traces: Path, sinks: tuple[str, ...] = ("hist",)) -> None:
    """Replaying ``traces`` (one after the other) prints exactly what the live run
    printed: the sinks cannot tell a replay from the kernel."""
    outs = []
    for trace in traces:
        r = replay(trace, *sinks)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert "".join(outs) == live


T = TypeVar("T")


def printed(fn: Callable[..., T], *args: Any, **kw: Any) -> tuple[T, str]:
    """``fn(*args, **kw)`` in this process with its standard output captured: what it
    returned and what it printed (a lab's sinks and report)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = fn(*args, **kw)
    return res, buf.getvalue()


def launch(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m tracekit ARGS`` in the background, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "tracekit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_stderr(p: subprocess.Popen[str], text: str) -> None:
    """Read ``p``'s stderr until a line containing ``text`` (or its end)."""
    assert p.stderr is not None
    for line in p.stderr:
        if text in line:
            break


def run_then_signal(
    args: tuple[str, ...],
    ready: str,
    sig: signal.Signals,
    *,
    wait: Callable[[subprocess.Popen[str]], None] | None = None,
    timeout: float = 120,
) -> tuple[subprocess.Popen[str], str, str]:
    """Launch tracekit, wait for a stderr line containing ``ready`` (then ``wait(p)``,
    a readiness check of the test's own), send ``sig`` and collect the output."""
    p = launch(*args)
    wait_for_stderr(p, ready)
    if wait is not None:
        wait(p)
    p.send_signal(sig)
    out, err = p.communicate(timeout=timeout)
    return p, out, err


def trace_events(trace: Path) -> list[dict[str, object]]:
    """The events of a trace file, each a dict of field name to raw value."""
    r = TraceReader(str(trace))
    names = r.session.schema.names
    return [
        dict(zip(names, row, strict=True))
        for rec in r.records()
        if rec.kind == BATCH
        for row in rec.payload
    ]


def read_trace(trace: Path) -> tuple[TraceReader, list[dict[str, object]]]:
    """The reader and the trace's events; the reader's footer is read (it is known
    only once the records have been walked)."""
    r = TraceReader(str(trace))
    names = r.session.schema.names
    rows = [
        dict(zip(names, row, strict=True))
        for rec in r.records()
        if rec.kind == BATCH
        for row in rec.payload
    ]
    return r, rows


def trace_batch_rows(trace: Path) -> tuple[TraceReader, int]:
    """The reader (footer read) and the number of rows in the trace's batches."""
    r = TraceReader(str(trace))
    n = sum(len(rec.payload) for rec in r.records() if rec.kind == BATCH)
    return r, n


# -- each probe against what the kernel counted itself ---------------------------------


def check_txq_flip_against_tc(res: TxqFlipResult, trace: Path) -> None:
    """The queues txq-flip saw sockets move to and from are the queues whose packet
    counters grew in `tc -s qdisc`, and it lost nothing on the way."""
    r, evs = read_trace(trace)
    assert res.iperf_mbit > 1, res.iperf_mbit
    # XPS maps CPU n to queue n: every pick lands on the picking CPU's queue.
    assert evs and all(e["queue_after"] == e["cpu"] for e in evs), evs[:5]
    in_events = {e["queue_after"] for e in evs} | {e["queue_before"] for e in evs}
    in_events.discard(0xFFFF)
    grew = {q for q, n in res.queue_delta.items() if n > 0}
    assert in_events == grew, (in_events, res.queue_delta)
    # The kernel's count of changes is the number of events that reached the trace.
    footer = r.footer
    assert footer is not None and footer.lost_total == 0, footer
    changes = sum(footer.counters["txq_counts"]["changes"].values())
    assert changes == len(evs) == footer.events, (changes, len(evs), footer.events)
    assert {e["ifname"] for e in evs} == {"tk0"}


def check_rss_cpu_against_softnet(res: RssCpuResult) -> None:
    """Packets per CPU as rss-cpu counted them, against /proc/net/softnet_stat."""
    probe = res.counter_delta("rss_counts", "packets")
    assert sum(probe.values()) > 1000, probe
    for cpu, n in res.softnet_delta.items():
        assert abs(probe.get(cpu, 0) - n) <= SOFTNET_TOLERANCE, (cpu, probe, res.softnet_delta)


def check_fq_throttle_against_tc(res: FqThrottleResult) -> None:
    """fq-throttle's throttles and flow_limit drops are tc's `throttled` and
    `flows_plimit`, exactly."""
    tc_throttled = sum(v["throttled"] for v in res.fq_delta.values())
    tc_plimit = sum(v["flows_plimit"] for v in res.fq_delta.values())
    assert tc_throttled > 0 and tc_plimit > 0, res.tc_after
    # The probe reads fq's own counters around each enqueue/dequeue: every change
    # it saw is one tc shows, and nothing else touches these qdiscs.
    throttled = sum(res.counter_delta("fq_counts", "throttled").values())
    drops = sum(res.counter_delta("fq_counts", "flow_limit_drops").values())
    assert (throttled, drops) == (tc_throttled, tc_plimit), res.tc_after


def ooo_okay_share(r: LabRun) -> float:
    tx = sum(r.counter_delta("ooo_counts", "transmitted").values())
    return sum(r.counter_delta("ooo_counts", "ooo_okay").values()) / tx


def check_ooo_okay_runs(full: LabRun, limited: LabRun, limited_trace: Path) -> None:
    """The seed's experiment: rate-limited, a larger share of skbs may change queue;
    with all=1 every TCP skb the kernel sent is one event, and on 6.1 (before the
    retransmit queue condition) ooo_okay is exactly the wmem condition the probe
    recomputed from the socket."""
    assert full.iperf_mbit > 5 * limited.iperf_mbit > 0, (full.iperf_mbit, limited.iperf_mbit)
    assert ooo_okay_share(limited) > ooo_okay_share(full)
    r, rows = read_trace(limited_trace)
    f = r.footer
    assert r.session.params == {"all": 1}  # what the probe was loaded with
    assert f is not None and f.lost_total == 0, f
    c = f.counters["ooo_counts"]
    assert sum(c["transmitted"].values()) == len(rows)
    assert sum(c["ooo_okay"].values()) == sum(1 for e in rows if e["ooo_okay"])
    if r.session.kernel.startswith("6.1."):
        assert all(e["ooo_okay"] == e["wmem_low"] for e in rows)
    assert {e["path"] for e in rows if e["ooo_okay"]} - {0, 5}, "no stack classified"


def _oracle_txq_flip(bus: Bus, compiled: Compiled, out: Path) -> None:
    trace = out / "txq-flip.oracle.tkt"
    res = lab_txq_flip(
        bus, (f"msgpack={trace}",), 4, "fq", compiled=compiled, force=True, quiet=True
    )
    check_txq_flip_against_tc(res, trace)


def _oracle_rss_cpu(bus: Bus, compiled: Compiled, out: Path) -> None:
    res = lab_rss_cpu(
        bus,
        (f"msgpack={out / 'rss-cpu.oracle.tkt'}",),
        4,
        "none",
        compiled=compiled,
        link="veth",
        force=True,
        quiet=True,
    )
    check_rss_cpu_against_softnet(res)


def _oracle_fq_throttle(bus: Bus, compiled: Compiled, out: Path) -> None:
    res = lab_fq_throttle(
        bus,
        (f"msgpack={out / 'fq-throttle.oracle.tkt'}",),
        4,
        compiled=compiled,
        force=True,
        quiet=True,
    )
    check_fq_throttle_against_tc(res)


def _oracle_ooo_okay(bus: Bus, compiled: Compiled, out: Path) -> None:
    trace = out / "ooo-okay.oracle.tkt"
    full, limited = lab_ooo_okay(
        bus, (f"msgpack={trace}",), 4, None, compiled=compiled, force=True, quiet=True
    )
    check_ooo_okay_runs(full, limited, out / "ooo-okay.oracle.limited.tkt")


# Probe -> (params, keep the in-kernel aggregate too, lab run + oracle check).
ORACLES: dict[str, tuple[dict[str, str], bool, Callable[[Bus, Compiled, Path], None]]] = {
    "txq-flip": ({}, False, _oracle_txq_flip),
    "rss-cpu": ({}, True, _oracle_rss_cpu),
    "fq-throttle": ({}, False, _oracle_fq_throttle),
    "ooo-okay": ({"all": "1"}, True, _oracle_ooo_okay),
}
