"""txq-flip: transmit-queue changes of sockets in netdev_pick_tx().

The first step of the fq/XPS investigation in ../shared/seeds: which CPU moves a
socket from which TX queue to which, and whether ``skb->ooo_okay`` allowed it.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from tracekit import hookimpl
from tracekit.registry import AttachPoint, CounterMap, Param, ProbeRegistry, ProbeSpec
from tracekit.schema import Field, HistSpec, Schema

# Why the socket could move (txq_flip.bpf.c's CAUSE_*, same order): "other" when
# none of netdev_pick_tx's own conditions held, "reselect" the 6.19+ timer
# (net.core.txq_reselection_ms) alone, without ooo_okay.
CAUSES = ("other", "first", "ooo_okay", "reselect", "out_of_range")

SCHEMA = Schema(
    fields=(
        Field("ts_ns", "u64", unit="ns", display="ts", doc="monotonic time of the pick"),
        Field("sk", "u64", display="hex", doc="socket address: one flow across events"),
        Field("cpu", "u32", key=True, doc="CPU that picked the queue"),
        Field("pid", "u32", doc="task running on that CPU (0 in softirq on an idle CPU)"),
        Field("ifindex", "u32", key=True),
        Field("saddr", "u32", display="ipv4"),
        Field("daddr", "u32", display="ipv4"),
        Field("sport", "u16", display="port"),
        Field("dport", "u16", display="port"),
        Field("family", "u16"),
        Field(
            "queue_before",
            "u16",
            key=True,
            display="queue",
            doc="queue stored on the socket before (none: not yet mapped)",
        ),
        Field("queue_after", "u16", key=True, display="queue", doc="queue picked"),
        Field("ooo_okay", "u8", key=True, display="bool", doc="skb->ooo_okay of the skb"),
        Field(
            "cause",
            "u8",
            key=True,
            display="enum",
            choices=CAUSES,
            doc="what let it move: first pick, ooo_okay, reselection timer, queue out of range",
        ),
        Field("ifname", "str16", key=True),
        Field("comm", "str16"),
    ),
    histograms=(
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
    ),
)


def _draw_plot(trace: Any) -> Any:
    from .plot import draw

    return draw(trace)


PROBE = ProbeSpec(
    name="txq-flip",
    description="netdev_pick_tx queue changes per CPU and socket, and what let each happen",
    source=files(__package__).joinpath("txq_flip.bpf.c"),
    schema=SCHEMA,
    attach=(
        AttachPoint("kprobe", "netdev_pick_tx", "tk_pick_tx_entry"),
        AttachPoint("kretprobe", "netdev_pick_tx", "tk_pick_tx_return"),
    ),
    params=(Param("ifindex", 0, help="only this interface index (0: all)", minimum=0),),
    counters=(
        CounterMap(
            "txq_counts",
            ("calls", "changes", "no_socket"),
            doc="netdev_pick_tx calls, queue changes, skbs without a socket",
        ),
    ),
    plot=_draw_plot,
    min_kernel="5.2",
    core=True,
)


@hookimpl
def tracekit_register_probes(registry: ProbeRegistry) -> None:
    registry.add(PROBE)
