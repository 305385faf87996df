"""A probe traced while iperf3 runs in a namespace lab: what every seed lab shares.

``traced_iperf`` runs the probe around an iperf3 client and reads the kernel's own
counters right before the client starts and after it ends, so a lab run, and a
test, can compare them with what the probe counted. Each seed's module
(tracekit/lab/txq_flip.py, ...) builds its situation and keeps, in its own result
type, the counters that seed is checked against.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from tracekit.base import kernel
from tracekit.base.errors import LabError
from tracekit.base.session import Summary
from tracekit.lab.netns import NetnsLab, finish_client
from tracekit.lab.oracles import parse_fq_stats, read_softnet
from tracekit.live.run import Compiled, RunOptions, run_probe
from tracekit.plugin.bus import Bus

Counters = dict[str, dict[str, dict[int, int]]]


@dataclass
class LabRun:
    """One traced iperf3 run: the probe's summary and iperf3's own figures."""

    summary: Summary
    label: str = ""
    iperf_mbit: float = 0.0
    retransmits: int = 0
    # ``tc -s qdisc`` of the sending device as the probe detached.
    tc_after: str = ""
    # The probe's counters when the client started (only when given a compiled
    # probe), so counter deltas cover the same window as the oracles.
    counters_at_start: Counters = field(default_factory=dict)

    def counter(self, m: str, label: str) -> dict[int, int]:
        """Counter ``m``'s slot ``label`` per CPU, totals at the end of the run."""
        return dict(self.summary.counters.get(m, {}).get(label, {}))

    def counter_delta(self, m: str, label: str) -> dict[int, int]:
        """Counter ``m``'s slot ``label`` per CPU, over the client's run only."""
        start = self.counters_at_start.get(m, {}).get(label, {})
        return {c: n - start.get(c, 0) for c, n in self.counter(m, label).items()}


@dataclass
class KernelDeltas:
    """What the kernel counted by itself while the client ran (empty if it never did)."""

    queues: dict[int, int] = field(default_factory=dict)  # packets per TX queue (tc)
    fq: dict[int, dict[str, int]] = field(default_factory=dict)  # fq counters per TX queue
    softnet: dict[int, int] = field(default_factory=dict)  # softnet_stat processed per CPU
    rxq: dict[int, int] = field(default_factory=dict)  # per RX queue (NIC pair only)


R = TypeVar("R", bound=LabRun)


def extend(run: LabRun, cls: type[R], **extra: Any) -> R:
    """``run`` as a seed's result type ``cls``, with that seed's oracles ``extra``."""
    return cls(**{f.name: getattr(run, f.name) for f in fields(LabRun)}, **extra)


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
) -> tuple[LabRun, KernelDeltas]:
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
    # The findings read XPS and RPS maps; the lab's devices are in its namespaces.
    opts = replace(opts, metadata={**opts.metadata, "net": lab_net_queues(lab)})
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
    res = LabRun(
        summary, label=label, tc_after=tc_after, counters_at_start=before.get("counters", {})
    )
    deltas = KernelDeltas()
    if before:
        deltas.queues = _delta(after["queues"], before["queues"])
        fq_after = parse_fq_stats(tc_after)
        deltas.fq = {q: _delta(v, before["fq"].get(q, {})) for q, v in fq_after.items()}
        deltas.softnet = _delta(after["softnet"], before["softnet"])
        deltas.rxq = _delta(after["rxq"], before["rxq"])
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
    return res, deltas


def lab_net_queues(lab: NetnsLab) -> dict[str, Any]:
    """This namespace's queue maps (``kernel.net_queues``) with the lab's two devices
    as their namespaces see them (tk0's XPS map in A, tk1's RPS map in B)."""
    net = kernel.net_queues()
    devices = net.setdefault("devices", {})
    assert isinstance(devices, dict)
    for ns, dev in ((lab.ns_a, lab.dev_a), (lab.ns_b, lab.dev_b)):
        text = lab.ns(ns, "sh", "-c", kernel.QUEUE_FILES_COMMAND, check=False)
        got = kernel.parse_queue_lines(text).get("devices", {})
        if isinstance(got, dict) and dev in got:
            devices[dev] = got[dev]
    return net


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
