"""``tracekit lab rss-cpu``: UDP flows' receive CPU, unspread and spread (RSS or RPS)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from tracekit.base import kernel
from tracekit.base.errors import LabError
from tracekit.base.stats import imbalance
from tracekit.cli.options import examples
from tracekit.lab.netns import DEV_B, NetnsLab
from tracekit.lab.nics import HASH_FIELDS, find_nic_pair
from tracekit.lab.options import (
    check_duration,
    check_rate,
    duration_option,
    force_option,
    out,
    rate_option,
    sink_option,
)
from tracekit.lab.traced import LabRun, extend, sink_variant, traced_iperf
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus, current_bus


@dataclass
class RssCpuResult(LabRun):
    """Beside the probe's packets per CPU: softnet_stat's, and (NIC pair only) the
    receiving NIC's packets per RX queue from its own counters."""

    softnet_delta: dict[int, int] = field(default_factory=dict)
    rxq_delta: dict[int, int] = field(default_factory=dict)


def set_rps(lab: NetnsLab, cpus_mask: int) -> None:
    """RPS on every RX queue of tk1 (B): the receive work moves to the flow hash's CPU."""
    rx = lab.ns(lab.ns_b, "sh", "-c", f"ls -d /sys/class/net/{DEV_B}/queues/rx-*").split()
    for q in rx:
        lab.ns(lab.ns_b, "sh", "-c", f"echo {cpus_mask:x} > {q}/rps_cpus")


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
) -> RssCpuResult:
    """``flows`` UDP flows of ``rate`` each between two addresses, different source ports.

    On the VM's NIC pair (``link="nics"``) this is the seed itself: the receiving
    NIC's RSS hashes addresses only for UDP (``spread="none"``: ``ethtool -N
    rx-flow-hash udp4 sd``), so every flow lands in one RX queue, whose interrupt
    goes to one CPU; ``spread="rss"`` is the seed's fix (``udp4 sdfn``: ports too).
    On a veth, receive processing runs on the sending CPU, which behaves the same
    as a NIC ignoring ports. ``spread="rps"`` (either link) turns on RPS on the
    receiving device, which hashes ports in software, and the flows spread.
    """
    ncpus = kernel.ncpus()
    link = rss_link(link)
    if spread == "rss" and link != "nics":
        raise LabError("--spread rss needs the VM's RSS NIC pair (vm/run makes it); try rps")
    with NetnsLab(txqueues=4, qdisc="pfifo_fast", link=link) as lab:
        if link == "nics":
            lab.set_rx_flow_hash(HASH_FIELDS["ports" if spread == "rss" else "addresses"])
        if spread == "rps":
            set_rps(lab, (1 << ncpus) - 1)
        run, counted = traced_iperf(
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
    return extend(run, RssCpuResult, softnet_delta=counted.softnet, rxq_delta=counted.rxq)


@click.command(
    "rss-cpu",
    epilog=examples(
        "sudo tracekit lab rss-cpu --duration 5               # unspread, then spread",
        "sudo tracekit lab rss-cpu --spread none --sink hist --sink msgpack=rss.tkt",
        "# writes rss.none.tkt",
        "tracekit plot rss.none.tkt -o rss.png",
    ),
)
@duration_option
@click.option(
    "--spread",
    type=click.Choice(["none", "rps", "rss", "both"]),
    default="both",
    show_default=True,
    help="none: the NIC hashes UDP by addresses only; rss: by ports too (NIC pair only); "
    "rps: RPS on the receiving device; both: none, then rss (NIC pair) or rps",
)
@click.option(
    "--link",
    type=click.Choice(["auto", "nics", "veth"]),
    default="auto",
    show_default=True,
    help="nics: the VM's virtio-net pair with RSS (vm/run); veth: a veth pair",
)
@rate_option("5M", "of the 8 UDP flows")
@sink_option
@force_option
def command(
    duration: float,
    spread: str,
    link: str,
    rate: str,
    sinks: tuple[str, ...],
    force: bool,
) -> None:
    """Many UDP flows between two addresses: receive work per CPU, unspread and spread."""
    check_duration(duration)
    check_rate(rate)
    link = rss_link(link)
    if spread == "both":
        modes: tuple[str, ...] = ("none", "rss" if link == "nics" else "rps")
    else:
        modes = (spread,)
    bus = current_bus()
    results = [
        lab_rss_cpu(bus, sinks or ("hist",), duration, m, link=link, rate=rate, force=force)
        for m in modes
    ]
    out("")
    if link == "nics":
        out("link: virtio-net NIC pair, RSS over one RX queue per CPU (queue n -> cpu n)")
    else:
        out("link: veth pair (receive work runs on the sending CPU unless RPS moves it)")
    for r in results:
        per = r.counter("rss_counts", "packets")
        cpu, share, ratio = imbalance(per, len(per) or 1)
        cells = "  ".join(f"cpu{c}={n}" for c, n in sorted(per.items()))
        soft = "  ".join(f"cpu{c}={n}" for c, n in sorted(r.softnet_delta.items()))
        out(
            f"{r.label:>11}: probe {cells}; busiest cpu{cpu} {100 * share:.1f}%, "
            f"imbalance {ratio:.2f}x"
        )
        if r.rxq_delta:
            rxq = "  ".join(f"q{q}={n}" for q, n in sorted(r.rxq_delta.items()))
            out(f"{'':>11}  NIC RX queue counters (ethtool -S): {rxq}")
        out(f"{'':>11}  softnet_stat processed: {soft}")
