"""ooo-okay: where and why the kernel sets ``skb->ooo_okay`` (the XPS seed's second step).

Each skb with the flag set (every skb with ``--param all=1``): the CPU, the flow,
the rule this kernel applied (``rule``: TCP's before and from 6.6, and from 6.19
``skb_set_owner_w``'s for every other transport), the inputs it used (``wmem`` in
flight against ``threshold``, the retransmit queue), and the path it was sent from,
classified from its kernel stack (``tcp_sendmsg`` or ``udp_sendmsg`` in process
context, ACK processing in softirq, ACK processing from the socket backlog on
``release_sock``, TSQ/timers).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from tracekit import hookimpl
from tracekit.base.cdecl import CSource
from tracekit.base.schema import Field, HistSpec
from tracekit.base.session import Summary
from tracekit.bpf.probe_base import ProbeContext
from tracekit.bpf.stacks import classify_stack
from tracekit.plugin.registry import AttachPoint, CounterMap, Param, ProbeRegistry, ProbeSpec

PATHS = ("unknown", "sendmsg", "ack-softirq", "ack-backlog", "recvmsg", "timer", "other")

# Innermost frame first: the first frame in one of these sets decides the path.
_RULES: tuple[tuple[frozenset[str], str], ...] = (
    # Processing an incoming segment (an ACK for the sender), which may transmit.
    (
        frozenset(
            {
                "tcp_rcv_established",
                "tcp_rcv_state_process",
                "tcp_ack",
                "tcp_v4_do_rcv",
                "tcp_v6_do_rcv",
            }
        ),
        "ack",
    ),
    # The receiver's ACKs after the application read (tcp_cleanup_rbuf is inlined).
    (frozenset({"tcp_recvmsg", "tcp_recvmsg_locked", "tcp_cleanup_rbuf"}), "recvmsg"),
    (
        frozenset(
            {
                "tcp_sendmsg",
                "tcp_sendmsg_locked",
                "tcp_sendpage",
                "do_tcp_sendpages",
                "tcp_sendpage_locked",
                "tcp_splice_eof",
                # Other transports (6.19+: skb_set_owner_w's rule).
                "udp_sendmsg",
                "udpv6_sendmsg",
                "raw_sendmsg",
                "rawv6_sendmsg",
                "ping_v4_sendmsg",
                "ping_v6_sendmsg",
            }
        ),
        "sendmsg",
    ),
    (
        frozenset(
            {
                "tcp_tsq_handler",
                "tcp_tasklet_func",
                "tcp_tsq_workfn",
                "tcp_write_timer_handler",
                "tcp_write_timer",
                "tcp_delack_timer_handler",
                "tcp_delack_timer",
                "tcp_pace_kick",
                "tcp_release_cb",
                "tcp_send_loss_probe",
                "tcp_retransmit_timer",
            }
        ),
        "timer",
    ),
)
_SOFTIRQ = frozenset(
    {
        "net_rx_action",
        "__do_softirq",
        "handle_softirqs",
        "do_softirq",
        "__napi_poll",
        "process_backlog",
    }
)


def path_of(frames: list[str]) -> str:
    kind = classify_stack(frames, _RULES)
    if kind == "ack":
        if _SOFTIRQ.intersection(frames):
            return "ack-softirq"
        return "ack-backlog" if "__release_sock" in frames else "ack-softirq"
    return kind or "other"


_SOURCE = files(__package__).joinpath("ooo_okay.bpf.c")


def _enum_names(name: str) -> tuple[str, ...]:
    """Value i's name of the C's ``enum name`` (``OOO_RULE_OWNER_W`` -> ``owner_w``)."""
    items = CSource.parse(_SOURCE.read_text(), _SOURCE.name).enum(name)
    assert items is not None and [v for _, v in items] == list(range(len(items))), name
    prefix = name.upper() + "_"
    return tuple(ident.removeprefix(prefix).lower() for ident, _ in items)


# The rule that decided an skb's flag, and the socket's transport (ooo_okay.bpf.c's
# enum ooo_rule and enum ooo_transport).
RULES = _enum_names("ooo_rule")
TRANSPORTS = _enum_names("ooo_transport")
# What each rule tests, for the results (docs/kernels.md has the kernel sources).
RULE_TEXT = {
    "tcp_wmem": "TCP up to Linux 6.5: wmem in flight < SKB_TRUESIZE(1)",
    "tcp_wmem_rtx": "TCP from Linux 6.6: wmem in flight < SKB_TRUESIZE(1) or retransmit "
    "queue empty",
    "owner_w": "other transports from Linux 6.19 (skb_set_owner_w): no other skb of the "
    "socket in a qdisc or NIC queue (wmem 0)",
}
assert set(RULE_TEXT) == set(RULES), RULES

# How the fields of struct tk_event (ooo_okay.bpf.c) are shown; the C declares them.
FIELDS = (
    Field("ts_ns", unit="ns", display="ts"),
    Field("sk", display="hex", doc="socket address: one flow across events"),
    Field("cpu", key=True),
    Field("saddr", display="ipv4"),
    Field("daddr", display="ipv4"),
    Field("sport", display="port"),
    Field("dport", display="port"),
    Field(
        "wmem",
        unit="bytes",
        doc="sk_wmem_alloc_get(sk) the rule tested: the socket's skbs in host queues, "
        "this skb excluded",
    ),
    Field(
        "threshold",
        unit="bytes",
        doc="the rule's bound: SKB_TRUESIZE(1) for TCP, 1 for skb_set_owner_w (wmem 0)",
    ),
    Field("stack_id", doc="kernel stack id (symbols are stored in the trace)"),
    Field("ooo_okay", key=True, display="bool", doc="the flag as the kernel set it"),
    Field("wmem_low", key=True, display="bool", doc="wmem < threshold"),
    Field("rtx_empty", key=True, display="bool", doc="TCP: the retransmit queue was empty"),
    Field(
        "path",
        key=True,
        display="enum",
        choices=PATHS,
        doc="where the skb was sent from, from its stack",
    ),
    Field(
        "rule",
        key=True,
        display="enum",
        choices=RULES,
        doc="the rule this kernel applied to the skb's transport",
    ),
    Field("transport", key=True, display="enum", choices=TRANSPORTS),
)
HISTOGRAMS = (
    HistSpec(value=None, by=("cpu", "path"), kind="count", title="ooo_okay"),
    HistSpec(value=None, by=("rule", "wmem_low", "rtx_empty"), kind="count", title="ooo_okay_why"),
)


def enrich(ctx: ProbeContext, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Fill ``path`` from the stack; remember stacks and symbols for the trace file."""
    cache: dict[int, int] = ctx.labels("ooo_paths")
    out = []
    for r in rows:
        sid = r[_STACK]
        code = cache.get(sid)
        if code is None:
            frames = ctx.stack_names(sid)
            code = PATHS.index(path_of(frames)) if frames else 0
            cache[sid] = code
        out.append((*r[:_PATH], code, *r[_PATH + 1 :]))
    return out


def report(summary: Summary) -> list[str]:
    c = {k: sum(v.values()) for k, v in summary.counters.get("ooo_counts", {}).items()}
    tx, ooo = c.get("transmitted", 0), c.get("ooo_okay", 0)
    if not tx:
        return ["ooo_okay: no skbs transmitted"]
    lines = [
        f"ooo_okay share: {ooo}/{tx} skbs = {100 * ooo / tx:.2f}% "
        f"(wmem low: {c.get('wmem_low', 0)}, rtx queue empty: {c.get('rtx_empty', 0)})"
    ]
    # Which rule decided how many skbs: what this kernel computes, by transport.
    for rule in RULES:
        if n := c.get(f"rule_{rule}", 0):
            lines.append(f"  rule {rule}: {n} skbs; {RULE_TEXT[rule]}")
    if n := c.get("not_as_rule", 0):
        lines.append(
            f"  {n} skbs with a flag other than the rule gives for what the probe read: "
            "the socket's queues changed between the kernel's test and the probe's read"
        )
    return lines


def _findings(session: Any) -> Any:
    from .findings import findings

    return findings(session)


def _draw_plot(trace: Any) -> Any:
    from .plot import draw

    return draw(trace)


PROBE = ProbeSpec(
    name="ooo-okay",
    description="which skbs may change TX queue (skb->ooo_okay): the kernel's rule, its "
    "inputs, the path",
    source=_SOURCE,
    fields=FIELDS,
    histograms=HISTOGRAMS,
    attach=(
        AttachPoint("kprobe", "ip_queue_xmit", "tk_queue_xmit"),
        AttachPoint("kprobe", "inet6_csk_xmit", "tk_queue_xmit"),
        # Every other transport's rule, where the kernel has it.
        AttachPoint("kprobe", "skb_set_owner_w", "tk_owner_w", since="6.19"),
        AttachPoint("kretprobe", "skb_set_owner_w", "tk_owner_w_return", since="6.19"),
    ),
    params=(
        Param(
            "all",
            0,
            help="stream every skb, not only those with ooo_okay",
            minimum=0,
            maximum=1,
        ),
    ),
    counters=(
        CounterMap(
            "ooo_counts", doc="skbs transmitted; with ooo_okay; by condition; by rule; not as rule"
        ),
    ),
    plot=_draw_plot,
    findings=_findings,
    min_kernel="5.8",
    enrich=enrich,
    enriched_fields=("path",),
    report=report,
    core=True,
)
SCHEMA = PROBE.schema
_STACK = SCHEMA.index("stack_id")
_PATH = SCHEMA.index("path")
_OOO = SCHEMA.index("ooo_okay")


@hookimpl
def tracekit_register_probes(registry: ProbeRegistry) -> None:
    registry.add(PROBE)
