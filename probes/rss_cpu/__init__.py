"""rss-cpu: which CPU does the receive work for which flow (the RSS seed).

Per received packet (``net:netif_receive_skb``, on the CPU that processes it): the
CPU, the RX queue, the flow and its hash. The summary names the busiest CPU and the
imbalance: its share of packets against an even share, as the seed reads mpstat.
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
    Summary,
    hookimpl,
)
from tracekit.base.stats import imbalance
from tracekit.plugin.registry import IFINDEX_MAX

# How the fields of struct tk_event (rss_cpu.bpf.c) are shown; the C declares them.
FIELDS = (
    Field("ts_ns", unit="ns", display="ts"),
    Field("cpu", key=True, doc="CPU that processed the packet"),
    Field("ifindex", key=True),
    Field("hash", display="hex", doc="skb->hash (the RSS/RPS flow hash)"),
    Field("saddr", key=True, display="ipv4"),
    Field("daddr", key=True, display="ipv4"),
    Field("len", unit="bytes"),
    Field("sport", key=True, display="port"),
    Field("dport", key=True, display="port"),
    Field("rx_queue", key=True, display="queue", doc="RX queue (none: not recorded)"),
    Field("proto", key=True),
    Field("l4_hash", display="bool", doc="the hash covers ports"),
    Field("ifname", key=True),
)
HISTOGRAMS = (
    HistSpec(value=None, by=("cpu",), kind="count", title="rx_packets"),
    HistSpec(
        value=None,
        by=("saddr", "sport", "daddr", "dport", "cpu"),
        kind="count",
        title="flow_cpu",
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
    name="rss-cpu",
    description="which CPU receives which flow (netif_receive_skb), and the imbalance",
    source=files(__package__).joinpath("rss_cpu.bpf.c"),
    fields=FIELDS,
    histograms=HISTOGRAMS,
    attach=(AttachPoint("raw_tracepoint", "net:netif_receive_skb", "tk_netif_receive_skb"),),
    params=(
        Param(
            "ifindex",
            0,
            help="events only for this interface index (0: all); "
            "the per-CPU counters always count every packet",
            minimum=0,
            maximum=IFINDEX_MAX,
        ),
    ),
    counters=(
        CounterMap("rss_counts", doc="packets received per CPU (all devices), IPv4 among them"),
    ),
    plot=_draw_plot,
    findings=_findings,
    metadata=_metadata,
    min_kernel="5.8",
    report=report,
    core=True,
)
SCHEMA = PROBE.schema


@hookimpl
def tracekit_register_probes(registry: ProbeRegistry) -> None:
    registry.add(PROBE)
