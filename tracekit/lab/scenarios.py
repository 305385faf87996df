"""The seeds' situations rebuilt in a namespace lab, traced while iperf3 runs.

Each scenario returns the probe's summary beside the numbers the kernel keeps by
itself (qdisc counters, softnet_stat), so a lab run, and a test, can compare them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracekit.bus import Bus
from tracekit.errors import LabError
from tracekit.lab.netns import DEV_A, DEV_B, NetnsLab, finish_client
from tracekit.lab.nics import HASH_FIELDS, find_nic_pair
from tracekit.run import Compiled, RunOptions, run_probe
from tracekit.session import Summary


@dataclass
class LabResult:
    summary: Summary
    iperf_mbit: float = 0.0
    retransmits: int = 0
    queue_delta: dict[int, int] = field(default_factory=dict)
    fq_delta: dict[int, dict[str, int]] = field(default_factory=dict)
    softnet_delta: dict[int, int] = field(default_factory=dict)
    # Per RX queue of the receiving NIC, from its own counters (NIC pair only).
    rxq_delta: dict[int, int] = field(default_factory=dict)
    tc_after: str = ""
    label: str = ""
    # The probe's counters when the client started (only when given a compiled
    # probe), so counter deltas cover the same window as the oracles.
    counters_at_start: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)

    def counter_delta(self, m: str, label: str) -> dict[int, int]:
        end = self.summary.counters.get(m, {}).get(label, {})
        start = self.counters_at_start.get(m, {}).get(label, {})
        return {c: n - start.get(c, 0) for c, n in end.items()}


def read_softnet() -> dict[int, int]:
    """Packets processed per CPU: /proc/net/softnet_stat's first column (hex)."""
    out: dict[int, int] = {}
    lines = Path("/proc/net/softnet_stat").read_text().splitlines()
    for i, line in enumerate(lines):
        cols = line.split()
        # Since 5.10 the 13th column is the CPU id; before, rows are online CPUs in order.
        cpu = int(cols[12], 16) if len(cols) >= 13 else i
        out[cpu] = int(cols[0], 16)
    return out


def parse_fq_stats(text: str) -> dict[int, dict[str, int]]:
    """Per TX queue of an mq device: fq's ``throttled`` and ``flows_plimit`` counters.

    tc prints ``flows_plimit`` only when it is not zero.
    """
    out: dict[int, dict[str, int]] = {}
    current: int | None = None
    for line in text.splitlines():
        m = re.match(r"^qdisc fq \S+ parent 1:([0-9a-f]+)", line)
        if m:
            current = int(m.group(1), 16) - 1
            out[current] = {"throttled": 0, "flows_plimit": 0, "dropped": 0}
            continue
        if line.startswith("qdisc "):
            current = None
            continue
        if current is None:
            continue
        m = re.search(r"\(dropped (\d+),", line)
        if m:
            out[current]["dropped"] = int(m.group(1))
        # "flows N (inactive N throttled N)" counts flows throttled now; the
        # cumulative counter is on the "gc ... throttled N ... flows_plimit N" line.
        if line.strip().startswith("gc "):
            m = re.search(r"\bthrottled (\d+)", line)
            if m:
                out[current]["throttled"] = int(m.group(1))
            m = re.search(r"\bflows_plimit (\d+)", line)
            if m:
                out[current]["flows_plimit"] = int(m.group(1))
    return out


def _delta(after: dict[Any, int], before: dict[Any, int]) -> dict[Any, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def traced_iperf(
    bus: Bus,
    lab: NetnsLab,
    probe: str,
    sinks: Sequence[str],
    *,
    seconds: float,
    params: dict[str, str] | None = None,
    client_cpu: int = 0,
    server_cpu: int = 1,
    client_args: Sequence[str] = (),
    compiled: Compiled | None = None,
    force: bool = False,
    quiet: bool = False,
    run_opts: RunOptions | None = None,
    label: str = "",
) -> LabResult:
    """Trace ``probe`` while an iperf3 client in A sends to a server in B.

    Oracles are read right before the client starts and after it ends (and the
    probe is detached), so both sides cover the same traffic.
    """
    spec = bus.probes.get(probe)
    # None: a shared compiled probe's own (given ones must match it, or the run refuses).
    values = spec.resolve_params(params) if params is not None else None
    server = lab.start_server(server_cpu)
    before: dict[str, Any] = {}
    client: list[subprocess.Popen[str]] = []

    def start() -> None:
        # The probe's counters and softnet_stat back to back: any traffic (a scrape on
        # loopback) between the two would count on one side only; tc is slow to run.
        if compiled is not None:
            before["counters"] = compiled.probe.read_counters()
        before["softnet"] = read_softnet()
        before["queues"] = lab.queue_packets()
        before["fq"] = parse_fq_stats(lab.tc_stats())
        before["rxq"] = lab.rx_queue_packets()
        client.append(lab.start_client(client_cpu, seconds, extra=client_args))

    def done() -> bool:
        return bool(client) and client[0].poll() is not None

    after: dict[str, Any] = {}

    def end() -> None:
        # Read as the probe detaches, not after the sinks end: a sink still serving
        # then (prometheus hold) makes traffic the probe never saw.
        after["softnet"] = read_softnet()
        after["rxq"] = lab.rx_queue_packets()
        after["tc"] = lab.tc_stats()
        after["queues"] = lab.queue_packets()

    opts = replace(run_opts or RunOptions(), duration=seconds + 60, force=force, quiet=quiet)
    summary = run_probe(
        bus,
        spec,
        values,
        tuple(sinks),
        opts,
        compiled=compiled,
        until=done,
        on_attached=start,
        on_detached=end,
    )
    if not after:
        end()  # the session ended before the probe's detach (interrupted)
    tc_after = after["tc"]
    res = LabResult(
        summary, label=label, tc_after=tc_after, counters_at_start=before.get("counters", {})
    )
    if before:
        res.queue_delta = _delta(after["queues"], before["queues"])
        fq_after = parse_fq_stats(tc_after)
        res.fq_delta = {q: _delta(v, before["fq"].get(q, {})) for q, v in fq_after.items()}
        res.softnet_delta = _delta(after["softnet"], before["softnet"])
        res.rxq_delta = _delta(after["rxq"], before["rxq"])
    if not client:
        # Stopped (Ctrl-C) before the client started: nothing measured, nothing to say.
        pass
    elif summary.interrupted:
        # Ctrl-C: iperf3 reports what it sent so far when interrupted; best effort.
        proc = client[0]
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        with contextlib.suppress(LabError):
            r = finish_client(proc)
            res.iperf_mbit, res.retransmits = r.mbit, r.retransmits
    else:
        proc = client[0]
        if proc.poll() is None:
            proc.kill()
            server.kill()
            raise LabError(f"iperf3 client did not finish within {opts.duration:.0f}s")
        try:
            r = finish_client(proc, server=server)
        finally:
            if server.poll() is None:
                server.kill()
        res.iperf_mbit, res.retransmits = r.mbit, r.retransmits
    if server.poll() is None:
        server.kill()
        server.wait(timeout=5)
    return res


def set_rps(lab: NetnsLab, cpus_mask: int) -> None:
    """RPS on every RX queue of tk1 (B): the receive work moves to the flow hash's CPU."""
    rx = lab.ns(lab.ns_b, "sh", "-c", f"ls -d /sys/class/net/{DEV_B}/queues/rx-*").split()
    for q in rx:
        lab.ns(lab.ns_b, "sh", "-c", f"echo {cpus_mask:x} > {q}/rps_cpus")


def set_txq_reselection(lab: NetnsLab, ms: int) -> int:
    """``net.core.txq_reselection_ms`` in A (per namespace); the value read back.

    The kernel keeps it in jiffies, so what it reads back is rounded to its tick.
    """
    knob = "/proc/sys/net/core/txq_reselection_ms"
    if not os.path.exists(knob):
        raise LabError(
            "this kernel has no net.core.txq_reselection_ms (the TX-queue reselection "
            "came in 6.19)"
        )
    lab.ns(lab.ns_a, "sysctl", "-qw", f"net.core.txq_reselection_ms={ms}")
    return int(lab.ns(lab.ns_a, "cat", knob).strip())


def sink_variant(sinks: Sequence[str], suffix: str) -> tuple[str, ...]:
    """``msgpack=t.tkt`` -> ``msgpack=t.SUFFIX.tkt``, for labs that run a probe twice."""
    out = []
    for s in sinks:
        name, sep, arg = s.partition("=")
        if name == "msgpack" and sep:
            root, ext = os.path.splitext(arg)
            s = f"{name}={root}.{suffix}{ext or '.tkt'}"
        out.append(s)
    return tuple(out)


__all__ = [
    "DEV_A",
    "DEV_B",
    "LabResult",
    "parse_fq_stats",
    "read_softnet",
    "set_rps",
    "set_txq_reselection",
    "sink_variant",
    "traced_iperf",
]


# -- the four seed scenarios ---------------------------------------------------------


def lab_txq_flip(
    bus: Bus,
    sinks: Sequence[str],
    seconds: float,
    qdisc: str = "fq",
    compiled: Compiled | None = None,
    reselection_ms: int | None = None,
    qdisc_args: Sequence[str] = (),
    **kw: Any,
) -> LabResult:
    """The seed's XPS set-up: client pinned to CPU 0, receiver to CPU 1.

    ACKs for the client's data are processed in softirq on the receiver's CPU, which
    transmits from there too; XPS maps each CPU to its own queue, so the socket's
    queue flips between the two CPUs' queues whenever ``ooo_okay`` allows it, and
    from 6.19 whenever its mapping is older than ``net.core.txq_reselection_ms``
    (``reselection_ms`` sets it in the sender's namespace; 0 turns it off).
    """
    with NetnsLab(txqueues=4, qdisc=qdisc, qdisc_args=qdisc_args) as lab:
        if reselection_ms is not None:
            set_txq_reselection(lab, reselection_ms)
        return traced_iperf(
            bus,
            lab,
            "txq-flip",
            sinks,
            seconds=seconds,
            # A shared compiled probe traces the interfaces it was compiled for.
            params=None if compiled is not None else {"ifindex": str(lab.ifindex_a)},
            compiled=compiled,
            **kw,
        )


def lab_ooo_okay(
    bus: Bus,
    sinks: Sequence[str],
    seconds: float,
    bandwidth: str | None,
    compiled: Compiled | None = None,
    **kw: Any,
) -> tuple[LabResult, LabResult]:
    """The seed's experiment: the ooo_okay share unlimited, then rate-limited.

    With less data in flight the socket's queues drain more often, so more skbs
    leave with ooo_okay set. ``bandwidth`` defaults to a tenth of the unlimited rate.
    """
    with NetnsLab(txqueues=4, qdisc="fq") as lab:
        full = traced_iperf(
            bus,
            lab,
            "ooo-okay",
            sink_variant(sinks, "unlimited"),
            seconds=seconds,
            compiled=compiled,
            label="unlimited",
            **kw,
        )
        rate = bandwidth or f"{max(1.0, full.iperf_mbit / 10):.0f}M"
        limited = traced_iperf(
            bus,
            lab,
            "ooo-okay",
            sink_variant(sinks, "limited"),
            seconds=seconds,
            compiled=compiled,
            client_args=("-b", rate),
            label=f"limited to {rate}bit/s",
            **kw,
        )
    return full, limited


def lab_fq_throttle(
    bus: Bus,
    sinks: Sequence[str],
    seconds: float,
    flow_limit: int = 10,
    maxrate: str = "10mbit",
    rate: str = "20M",
    compiled: Compiled | None = None,
    **kw: Any,
) -> LabResult:
    """fq with a low flow_limit and a maxrate; UDP streams sending faster than maxrate.

    fq paces every flow to maxrate (throttling), and UDP, unlike TCP, has no small
    queues limit, so each flow's queue fills to flow_limit and fq drops the rest.
    """
    args = ("flow_limit", str(flow_limit), "maxrate", maxrate)
    with NetnsLab(txqueues=4, qdisc="fq", qdisc_args=args) as lab:
        return traced_iperf(
            bus,
            lab,
            "fq-throttle",
            sinks,
            seconds=seconds,
            compiled=compiled,
            client_args=("-u", "-b", rate, "-P", "2", "-l", "1400"),
            **kw,
        )


def rss_link(link: str = "auto") -> str:
    """``auto``: the VM's RSS NIC pair where it exists, else a veth pair."""
    if link == "auto":
        return "nics" if find_nic_pair() is not None else "veth"
    return link


def lab_rss_cpu(
    bus: Bus,
    sinks: Sequence[str],
    seconds: float,
    spread: str,
    rate: str = "5M",
    compiled: Compiled | None = None,
    link: str = "auto",
    flows: int = 8,
    **kw: Any,
) -> LabResult:
    """``flows`` UDP flows of ``rate`` each between two addresses, different source ports.

    On the VM's NIC pair (``link="nics"``) this is the seed itself: the receiving
    NIC's RSS hashes addresses only for UDP (``spread="none"``: ``ethtool -N
    rx-flow-hash udp4 sd``), so every flow lands in one RX queue, whose interrupt
    goes to one CPU; ``spread="rss"`` is the seed's fix (``udp4 sdfn``: ports too).
    On a veth, receive processing runs on the sending CPU, which behaves the same
    as a NIC ignoring ports. ``spread="rps"`` (either link) turns on RPS on the
    receiving device, which hashes ports in software, and the flows spread.
    """
    ncpus = os.cpu_count() or 1
    link = rss_link(link)
    if spread == "rss" and link != "nics":
        raise LabError("--spread rss needs the VM's RSS NIC pair (vm/run makes it); try rps")
    with NetnsLab(txqueues=4, qdisc="pfifo_fast", link=link) as lab:
        if link == "nics":
            lab.set_rx_flow_hash(HASH_FIELDS["ports" if spread == "rss" else "addresses"])
        if spread == "rps":
            set_rps(lab, (1 << ncpus) - 1)
        return traced_iperf(
            bus,
            lab,
            "rss-cpu",
            sink_variant(sinks, spread),
            seconds=seconds,
            compiled=compiled,
            client_cpu=0,
            server_cpu=ncpus - 1,
            client_args=("-u", "-b", rate, "-P", str(flows), "-l", "1000"),
            label=f"spread={spread}",
            **kw,
        )
