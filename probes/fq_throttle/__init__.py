"""fq-throttle: when sch_fq throttles flows, dequeues nothing, or drops at flow_limit.

The third step of the fq/XPS seed. sch_fq's private ``struct fq_sched_data`` is in
no header; its member offsets come from the running kernel's BTF for the loaded
``sch_fq`` module, checked member by member, and a kernel whose layout does not fit
is refused in one line.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from tracekit import hookimpl
from tracekit.base.errors import AttachPointError, TracekitError
from tracekit.base.schema import Field, HistSpec
from tracekit.base.session import Summary
from tracekit.plugin.registry import AttachPoint, CounterMap, ProbeRegistry, ProbeSpec

KINDS = ("-", "throttle", "flow_limit_drop", "empty_dequeue")

# Members read by the BPF code and the size it reads each as.
FQ_MEMBERS = {
    "stat_throttled": 8,
    "stat_flows_plimit": 8,
    "time_next_delayed_flow": 8,
    "delayed": 8,
    "flow_plimit": 4,
}
# struct fq_flow: the throttled flow's socket, its node in the delayed tree (struct
# rb_node: three pointers) and its departure time.
FQ_FLOW_MEMBERS = {"sk": 8, "next": 8, "rate_node": 24, "time_next_packet": 8}
# fq's lists of flows with packets (the BPF code's FQ_LISTS at most).
MAX_LISTS = 6


def flow_lists(btf: Any) -> list[int]:
    """Offsets in struct fq_sched_data of the first flow of each list fq throttles
    flows from: new_flows and old_flows, per band from 6.8 (band_flows[])."""
    first, _ = btf.member("fq_flow_head", "first")
    try:
        base, size = btf.member("fq_sched_data", "band_flows")
    except TracekitError:
        # Before bands: the two lists in fq_sched_data itself.
        return [btf.member("fq_sched_data", n)[0] + first for n in ("new_flows", "old_flows")]
    per = btf.find_struct("fq_perband_flows").size_or_type
    new, _ = btf.member("fq_perband_flows", "new_flows")
    old, _ = btf.member("fq_perband_flows", "old_flows")
    out = []
    for band in range(size // per):
        out += [base + band * per + new + first, base + band * per + old + first]
    if len(out) > MAX_LISTS:
        raise TracekitError(f"fq has {len(out)} flow lists, the probe reads {MAX_LISTS}")
    return out


# How the fields of struct tk_event (fq_throttle.bpf.c) are shown; the C declares them.
FIELDS = (
    Field("ts_ns", unit="ns", display="ts"),
    Field("sk", display="hex", doc="socket of the throttled flow or the dropped skb (0: none)"),
    Field(
        "delay_us",
        unit="us",
        doc="throttle: how long fq holds the flow (its time_next_packet, from now)",
    ),
    Field("maxrate", unit="bytes/s", doc="the qdisc's maxrate (18446744073709551615: none)"),
    Field("flow_limit", unit="packets", doc="the qdisc's flow_limit"),
    Field("cpu", key=True),
    Field("ifindex", key=True),
    Field("saddr", key=True, display="ipv4"),
    Field("daddr", key=True, display="ipv4"),
    Field("count", doc="events of this kind in this call"),
    Field("qlen", doc="packets queued in the qdisc"),
    Field("sport", key=True, display="port"),
    Field("dport", key=True, display="port"),
    Field("queue", key=True, doc="TX queue the fq instance serves"),
    Field("kind", key=True, display="enum", choices=KINDS),
    Field("ifname", key=True),
)
# Per kind: the delay histogram is keyed by kind too, so throttles' delays are never
# mixed with the 0 of drops and empty dequeues, which have no delay.
HISTOGRAMS = (
    HistSpec(value="delay_us", by=("kind", "ifname", "queue"), kind="log2", title="throttle_delay"),
    HistSpec(
        value=None,
        by=("kind", "saddr", "sport", "daddr", "dport"),
        kind="count",
        title="events_by_flow",
    ),
)


# The drop reasons fq gives, by the names each kernel's BTF has them under (their
# values move between kernels): skb:kfree_skb's from 6.14, qdisc:qdisc_drop's in 7.x.
DROP_REASONS = {
    "SKB": ("skb_drop_reason", "SKB_DROP_REASON_FQ_"),
    "QDISC": ("qdisc_drop_reason", "QDISC_DROP_"),
}
DROP_SLOTS = ("FLOW_LIMIT", "BAND_LIMIT", "HORIZON_LIMIT")
NO_REASON = 0xFFFFFFFF


def drop_reason_settings(enums: dict[str, dict[str, int]]) -> dict[str, int]:
    """The reasons the BPF code compares with, by TK_SETTING macro (NO_REASON where
    the kernel has no such reason)."""
    out = {}
    for tag, (enum, prefix) in DROP_REASONS.items():
        values = enums.get(enum, {})
        for slot in DROP_SLOTS:
            out[f"TK_{tag}_FQ_{slot}"] = values.get(prefix + slot, NO_REASON)
    return out


def prepare(params: dict[str, int]) -> dict[str, int]:
    """sch_fq's offsets (the BCC build's; CO-RE relocates) and the drop reasons'
    values (both builds: TK_SETTINGs), from the running kernel's BTF."""
    # Imported here: a run of another probe need not load the BTF reader.
    from tracekit.bpf.btf import module_btf, struct_offsets, vmlinux_btf

    try:
        btf = module_btf("sch_fq")
        offs = struct_offsets(btf, "fq_sched_data", FQ_MEMBERS)
        flow = struct_offsets(btf, "fq_flow", FQ_FLOW_MEMBERS)
        lists = flow_lists(btf)
        maxrate_off, maxrate_size = btf.member("fq_sched_data", "flow_max_rate")
        if maxrate_size not in (4, 8):
            raise TracekitError(
                f"fq_sched_data.flow_max_rate is {maxrate_size} bytes: layout not supported"
            )
        vmlinux = vmlinux_btf()
    except TracekitError as exc:
        if type(exc) is TracekitError:
            raise AttachPointError(f"sch_fq: {exc}") from None
        raise
    enums = {enum: vmlinux.enum_values(enum) for enum, _ in DROP_REASONS.values()}
    return (
        {f"TK_FQ_OFF_{name.upper()}": off for name, off in offs.items()}
        | {f"TK_FQ_FLOW_OFF_{name.upper()}": off for name, off in flow.items()}
        | {"TK_FQ_OFF_FLOW_MAX_RATE": maxrate_off, "TK_FQ_SIZE_FLOW_MAX_RATE": maxrate_size}
        | {"TK_FQ_NLISTS": len(lists)}
        | {f"TK_FQ_LIST{i}": lists[i] if i < len(lists) else 0 for i in range(MAX_LISTS)}
        | drop_reason_settings(enums)
    )


def report(summary: Summary) -> list[str]:
    c = summary.counters.get("fq_counts", {})
    tot = {k: sum(v.values()) for k, v in c.items()}
    lines = [
        # `throttled` counts throttles (tc's `throttled`), not distinct flows.
        f"fq: {tot.get('throttled', 0)} throttles, {tot.get('flow_limit_drops', 0)} "
        f"flow_limit drops, {tot.get('empty_dequeues', 0)} empty dequeues in "
        f"{tot.get('dequeues', 0)} dequeues"
    ]
    drops = {k: sum(v.values()) for k, v in summary.counters.get("fq_drops", {}).items()}
    if any(drops.values()):
        lines.append(
            "fq drops by the kernel's reason: " + ", ".join(f"{k} {n}" for k, n in drops.items())
        )
    return lines


def _findings(session: Any) -> Any:
    from .findings import findings

    return findings(session)


def _draw_plot(trace: Any) -> Any:
    from .plot import draw

    return draw(trace)


PROBE = ProbeSpec(
    name="fq-throttle",
    description="sch_fq throttling, empty dequeues and flow_limit drops per queue and flow",
    source=files(__package__).joinpath("fq_throttle.bpf.c"),
    fields=FIELDS,
    histograms=HISTOGRAMS,
    attach=(
        AttachPoint("kprobe", "fq_enqueue", "tk_fq_enqueue", module="sch_fq"),
        AttachPoint("kretprobe", "fq_enqueue", "tk_fq_enqueue_ret", module="sch_fq"),
        AttachPoint("kprobe", "fq_dequeue", "tk_fq_dequeue", module="sch_fq"),
        AttachPoint("kretprobe", "fq_dequeue", "tk_fq_dequeue_ret", module="sch_fq"),
        # Drop reasons (see DROP_REASONS): the first the kernel has.
        AttachPoint("raw_tracepoint", "qdisc:qdisc_drop", "tk_fq_qdisc_drop", group="drops"),
        AttachPoint("raw_tracepoint", "skb:kfree_skb", "tk_fq_kfree_skb", group="drops"),
    ),
    counters=(
        CounterMap("fq_counts"),
        CounterMap(
            "fq_drops", doc="fq's drops by the reason the kernel gives (6.14+; none counted before)"
        ),
    ),
    plot=_draw_plot,
    findings=_findings,
    min_kernel="5.11",  # module BTF (sch_fq's struct offsets)
    needs_btf=True,
    prepare=prepare,
    report=report,
    core=True,
)
SCHEMA = PROBE.schema


@hookimpl
def tracekit_register_probes(registry: ProbeRegistry) -> None:
    registry.add(PROBE)
