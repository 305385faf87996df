"""rss-cpu: which CPU does the receive work for which flow (the RSS seed).

Per received packet (``net:netif_receive_skb``, on the CPU that processes it): the
CPU, the RX queue, the flow and its hash. The summary names the busiest CPU and the
imbalance: its share of packets against an even share, as the seed reads mpstat.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from tracekit import hookimpl
from tracekit.registry import AttachPoint, CounterMap, Param, ProbeRegistry, ProbeSpec
from tracekit.schema import Field, HistSpec, Schema
from tracekit.session import Summary
from tracekit.stats import imbalance

SCHEMA = Schema(
    fields=(
        Field("ts_ns", "u64", unit="ns", display="ts"),
        Field("cpu", "u32", key=True, doc="CPU that processed the packet"),
        Field("ifindex", "u32", key=True),
        Field("hash", "u32", display="hex", doc="skb->hash (the RSS/RPS flow hash)"),
        Field("saddr", "u32", key=True, display="ipv4"),
        Field("daddr", "u32", key=True, display="ipv4"),
        Field("len", "u32", unit="bytes"),
        Field("sport", "u16", key=True, display="port"),
        Field("dport", "u16", key=True, display="port"),
        Field("rx_queue", "u16", key=True, display="queue", doc="RX queue (none: not recorded)"),
        Field("proto", "u8", key=True),
        Field("l4_hash", "u8", display="bool", doc="the hash covers ports"),
        Field("ifname", "str16", key=True),
    ),
    histograms=(
        HistSpec(value=None, by=("cpu",), kind="count", title="rx_packets"),
        HistSpec(
            value=None,
            by=("saddr", "sport", "daddr", "dport", "cpu"),
            kind="count",
            title="flow_cpu",
        ),
    ),
)


def report(summary: Summary) -> list[str]:
    per = summary.counters.get("rss_counts", {}).get("packets", {})
    if not sum(per.values()):
        return ["rss-cpu: no packets received"]
    cpu, share, ratio = imbalance(per, len(per))
    return [
        f"busiest CPU: cpu{cpu} with {100 * share:.1f}% of {sum(per.values())} packets; "
        f"imbalance {ratio:.2f}x an even share ({100 / len(per):.1f}% on {len(per)} CPUs)"
    ]


def _draw_plot(trace: Any) -> Any:
    from .plot import draw

    return draw(trace)


PROBE = ProbeSpec(
    name="rss-cpu",
    description="which CPU receives which flow (netif_receive_skb), and the imbalance",
    source=files(__package__).joinpath("rss_cpu.bpf.c"),
    schema=SCHEMA,
    attach=(AttachPoint("raw_tracepoint", "net:netif_receive_skb", "tk_netif_receive_skb"),),
    params=(
        Param(
            "ifindex",
            0,
            help="events only for this interface index (0: all); "
            "the per-CPU counters always count every packet",
            minimum=0,
        ),
    ),
    counters=(
        CounterMap(
            "rss_counts",
            ("packets", "ipv4"),
            doc="packets received per CPU (all devices), IPv4 among them",
        ),
    ),
    plot=_draw_plot,
    min_kernel="5.8",
    agg_fields=("cpu", "ifindex", "saddr", "daddr", "sport", "dport", "rx_queue", "proto"),
    report=report,
    core=True,
)


@hookimpl
def tracekit_register_probes(registry: ProbeRegistry) -> None:
    registry.add(PROBE)
