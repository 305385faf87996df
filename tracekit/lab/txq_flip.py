"""``tracekit lab txq-flip``: the XPS seed, a socket's TX queue flipping between CPUs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from tracekit.base.errors import LabError
from tracekit.cli.options import examples
from tracekit.lab.netns import NetnsLab
from tracekit.lab.options import (
    check_duration,
    duration_option,
    force_option,
    loader_option,
    out,
    sink_option,
)
from tracekit.lab.traced import LabRun, extend, traced_iperf
from tracekit.live.run import Compiled, RunOptions
from tracekit.plugin.bus import Bus, current_bus


@dataclass
class TxqFlipResult(LabRun):
    """Beside the probe's flips: packets per TX queue of tk0, from ``tc -s qdisc``."""

    queue_delta: dict[int, int] = field(default_factory=dict)


def set_txq_reselection(lab: NetnsLab, ms: int) -> int:
    """``net.core.txq_reselection_ms`` in A (per namespace); the value read back.

    The kernel keeps it in jiffies, so what it reads back is rounded to its tick.
    """
    knob = "/proc/sys/net/core/txq_reselection_ms"
    if not os.path.exists(knob):
        raise LabError(
            "this kernel has no net.core.txq_reselection_ms (the TX-queue reselection came in 6.19)"
        )
    lab.ns(lab.ns_a, "sysctl", "-qw", f"net.core.txq_reselection_ms={ms}")
    return int(lab.ns(lab.ns_a, "cat", knob).strip())


def lab_txq_flip(
    bus: Bus,
    sinks: Sequence[str],
    seconds: float,
    qdisc: str = "fq",
    compiled: Compiled | None = None,
    reselection_ms: int | None = None,
    qdisc_args: Sequence[str] = (),
    **kw: Any,
) -> TxqFlipResult:
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
        run, counted = traced_iperf(
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
    return extend(run, TxqFlipResult, queue_delta=counted.queues)


@click.command(
    "txq-flip",
    epilog=examples(
        "sudo tracekit lab txq-flip --duration 5",
        "sudo tracekit lab txq-flip --qdisc pfifo_fast --sink hist --sink msgpack=txq.tkt",
        "tracekit replay txq.tkt --sink hist          # later, on any machine",
    ),
)
@duration_option
@click.option("--qdisc", type=click.Choice(["fq", "pfifo_fast"]), default="fq", show_default=True)
@sink_option
@force_option
@loader_option
def command(
    duration: float,
    qdisc: str,
    sinks: tuple[str, ...],
    force: bool,
    loader: str,
) -> None:
    """XPS queue flips: veth with 4 TX queues, iperf3 client on CPU 0, receiver on CPU 1."""
    check_duration(duration)
    res = lab_txq_flip(
        current_bus(),
        sinks or ("hist",),
        duration,
        qdisc,
        force=force,
        run_opts=RunOptions(loader=loader),
    )
    out(f"\niperf3: {res.iperf_mbit:.1f} Mbit/s, {res.retransmits} retransmits ({qdisc})")
    cells = "  ".join(f"q{q}={n}" for q, n in sorted(res.queue_delta.items()))
    out(f"tc -s qdisc (tk0 mq children), packets sent during the run: {cells}")
