"""``tracekit lab PROBE``: rebuild a seed's situation in a namespace lab and trace it."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field

import click

from tracekit.errors import LabError, UsageError
from tracekit.lab.netns import NetnsLab, parse_iperf
from tracekit.session import Summary


@dataclass
class LabResult:
    summary: Summary
    iperf_mbit: float
    retransmits: int
    queue_delta: dict[int, int] = field(default_factory=dict)
    tc_after: str = ""


def run_txq_flip_lab(
    bus: object,
    sinks: tuple[str, ...],
    duration: float,
    qdisc: str,
    force: bool = False,
    compiled: object | None = None,
    client_cpu: int = 0,
    server_cpu: int = 1,
    quiet: bool = False,
) -> LabResult:
    """The seed's XPS set-up: client pinned to one CPU, receiver to another.

    ACKs for the client's data are processed in softirq on the receiver's CPU, which
    transmits from there too; XPS maps each CPU to its own queue, so the socket's
    queue flips between the two CPUs' queues whenever ``ooo_okay`` allows it.
    """
    from tracekit.bus import Bus
    from tracekit.run import Compiled, RunOptions, run_probe

    assert isinstance(bus, Bus)
    spec = bus.probes.get("txq-flip")
    with NetnsLab(txqueues=4, qdisc=qdisc) as lab:
        params = spec.resolve_params({"ifindex": str(lab.ifindex_a)})
        lab.start_server(server_cpu)
        before: dict[int, int] = {}
        client: list[object] = []

        def start() -> None:
            before.update(lab.queue_packets())
            client.append(lab.start_client(client_cpu, duration))

        def done() -> bool:
            return bool(client) and client[0].poll() is not None  # type: ignore[attr-defined]

        summary = run_probe(
            bus,
            spec,
            params,
            sinks,
            RunOptions(duration=duration + 30, force=force, quiet=quiet),
            compiled=compiled if isinstance(compiled, Compiled) else None,
            until=done,
            on_attached=start,
        )
        after = lab.queue_packets()
        tc_after = lab.tc_stats()
        mbit, retrans = 0.0, 0
        if client:
            proc = client[0]
            if proc.poll() is None:  # type: ignore[attr-defined]
                # Ctrl-C: iperf3 reports what it sent so far when interrupted.
                proc.send_signal(signal.SIGINT)  # type: ignore[attr-defined]
            try:
                out, _ = proc.communicate(timeout=10)  # type: ignore[attr-defined]
                res = parse_iperf(out)
                mbit, retrans = res.mbit, res.retransmits
            except (subprocess.TimeoutExpired, LabError):
                pass
    delta = {q: after.get(q, 0) - before.get(q, 0) for q in after}
    return LabResult(summary, mbit, retrans, delta, tc_after)


@click.group("lab")
def lab() -> None:
    """Rebuild a seed's situation in network namespaces and trace it."""


@lab.command("txq-flip")
@click.option("--duration", type=float, default=10.0, show_default=True, help="iperf3 seconds")
@click.option("--qdisc", type=click.Choice(["fq", "pfifo_fast"]), default="fq", show_default=True)
@click.option("--sink", "sinks", multiple=True, metavar="NAME[=ARG]", help="as for tracekit run")
@click.option("--force", is_flag=True, help="overwrite existing trace files")
@click.pass_context
def txq_flip_cmd(
    ctx: click.Context, duration: float, qdisc: str, sinks: tuple[str, ...], force: bool
) -> None:
    """XPS queue flips: veth with 4 TX queues, iperf3 client on CPU 0, receiver on CPU 1."""
    from tracekit.cli import _bus

    if duration <= 0:
        raise UsageError("--duration must be positive")
    res = run_txq_flip_lab(_bus(ctx), sinks or ("hist",), duration, qdisc, force)
    out = sys.stdout
    out.write(f"\niperf3: {res.iperf_mbit:.1f} Mbit/s, {res.retransmits} retransmits ({qdisc})\n")
    cells = "  ".join(f"q{q}={n}" for q, n in sorted(res.queue_delta.items()))
    out.write(f"tc -s qdisc (tk0 mq children), packets sent during the run: {cells}\n")
