"""txq-flip: transmit-queue changes of sockets in netdev_pick_tx().

The first step of the fq/XPS investigation in ../shared/seeds: which CPU moves a
socket from which TX queue to which, and whether ``skb->ooo_okay`` allowed it.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from tracekit import (
    AttachPoint,
    CounterMap,
    Field,
    HistSpec,
    Param,
    ProbeRegistry,
    ProbeSpec,
    hookimpl,
)

IFINDEX_MAX = (1 << 31) - 1  # net_device.ifindex is an int

# Why the socket could move (txq_flip.bpf.c's CAUSE_*, same order): "other" when
# none of netdev_pick_tx's own conditions held, "reselect" the 6.19+ timer
# (net.core.txq_reselection_ms) alone, without ooo_okay.
CAUSES = ("other", "first", "ooo_okay", "reselect", "out_of_range")

# How the fields of struct tk_event (txq_flip.bpf.c) are shown; the C declares them.
FIELDS = (
    Field("ts_ns", unit="ns", display="ts", doc="monotonic time of the pick"),
    Field("sk", display="hex", doc="socket address: one flow across events"),
    Field("cpu", key=True, doc="CPU that picked the queue"),
    Field("pid", doc="task running on that CPU (0 in softirq on an idle CPU)"),
    Field("ifindex", key=True),
    Field("saddr", display="ipv4"),
    Field("daddr", display="ipv4"),
    Field("sport", display="port"),
    Field("dport", display="port"),
    Field(
        "queue_before",
        key=True,
        display="queue",
        doc="queue stored on the socket before (none: not yet mapped)",
    ),
    Field("queue_after", key=True, display="queue", doc="queue picked"),
    Field("ooo_okay", key=True, display="bool", doc="skb->ooo_okay of the skb"),
    Field(
        "cause",
        key=True,
        display="enum",
        choices=CAUSES,
        doc="what let it move: first pick, ooo_okay, reselection timer, queue out of range",
    ),
    Field("ifname", key=True),
)
HISTOGRAMS = (
    # The seed's @queue_index_after_netdev_pick_tx[cpu, before] = lhist(retval, 0, 11, 1)
    HistSpec(
        value="queue_after",
        by=("cpu", "queue_before"),
        kind="linear",
        lo=0,
        hi=16,
        step=1,
        title="queue_after",
    ),
)


def _findings(session: Any) -> Any:
    from .findings import findings

    return findings(session)


def _metadata(params: Any) -> Any:
    from .findings import metadata

    return metadata(params)


def _draw_plot(trace: Any) -> Any:
    from .plot import draw

    return draw(trace)


PROBE = ProbeSpec(
    name="txq-flip",
    description="netdev_pick_tx queue changes per CPU and socket, and what let each happen",
    source=files(__package__).joinpath("txq_flip.bpf.c"),
    fields=FIELDS,
    histograms=HISTOGRAMS,
    attach=(
        AttachPoint("kprobe", "netdev_pick_tx", "tk_pick_tx_entry"),
        AttachPoint("kretprobe", "netdev_pick_tx", "tk_pick_tx_return"),
    ),
    params=(
        Param(
            "ifindex",
            0,
            help="only this interface index (0: all)",
            minimum=0,
            maximum=IFINDEX_MAX,
        ),
    ),
    counters=(
        CounterMap("txq_counts", doc="netdev_pick_tx calls, queue changes, skbs without a socket"),
    ),
    plot=_draw_plot,
    findings=_findings,
    metadata=_metadata,
    min_kernel="5.2",
    core=True,
)
SCHEMA = PROBE.schema


@hookimpl
def tracekit_register_probes(registry: ProbeRegistry) -> None:
    registry.add(PROBE)
