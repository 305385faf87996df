"""ooo-okay: where and why TCP sets ``skb->ooo_okay`` (the XPS seed's second step).

Each TCP skb with the flag set (all skbs with ``--param all=1``) as it reaches
``ip_queue_xmit``/``inet6_csk_xmit``: the CPU, the flow, which condition held
(``sk_wmem_alloc`` below one truesize, or the retransmit queue empty) and the path
it was sent from, classified from its kernel stack (``tcp_sendmsg`` in process
context, ACK processing in softirq, ACK processing from the socket backlog on
``release_sock``, TSQ/timers).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from tracekit import hookimpl
from tracekit.registry import AttachPoint, CounterMap, Param, ProbeRegistry, ProbeSpec
from tracekit.schema import Field, HistSpec
from tracekit.session import Session, Summary
from tracekit.stacks import classify_stack, resolve_stack

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


# How the fields of struct tk_event (ooo_okay.bpf.c) are shown; the C declares them.
FIELDS = (
    Field("ts_ns", unit="ns", display="ts"),
    Field("sk", display="hex", doc="socket address: one flow across events"),
    Field("cpu", key=True),
    Field("saddr", display="ipv4"),
    Field("daddr", display="ipv4"),
    Field("sport", display="port"),
    Field("dport", display="port"),
    Field("wmem", unit="bytes", doc="sk_wmem_alloc the kernel tested (this skb excluded)"),
    Field("threshold", unit="bytes", doc="SKB_TRUESIZE(1) on this kernel"),
    Field("stack_id", doc="kernel stack id (symbols are stored in the trace)"),
    Field("ooo_okay", key=True, display="bool"),
    Field("wmem_low", key=True, display="bool", doc="condition 1: wmem < threshold"),
    Field("rtx_empty", key=True, display="bool", doc="condition 2: rtx queue empty"),
    Field(
        "path",
        key=True,
        display="enum",
        choices=PATHS,
        doc="where the skb was sent from, from its stack",
    ),
)
HISTOGRAMS = (
    HistSpec(value=None, by=("cpu", "path"), kind="count", title="ooo_okay"),
    HistSpec(value=None, by=("wmem_low", "rtx_empty"), kind="count", title="ooo_okay_why"),
)


def enrich(bpf: Any, session: Session, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Fill ``path`` from the stack; remember stacks and symbols for the trace file."""
    cache: dict[int, int] = session.names.labels("ooo_paths")
    out = []
    for r in rows:
        sid = r[_STACK]
        code = cache.get(sid)
        if code is None:
            frames = resolve_stack(bpf, "tk_stacks", sid, session)
            code = PATHS.index(path_of(frames)) if frames else 0
            cache[sid] = code
        out.append((*r[:_PATH], code, *r[_PATH + 1 :]))
    return out


def report(summary: Summary) -> list[str]:
    c = summary.counters.get("ooo_counts", {})
    tx, ooo = sum(c.get("transmitted", {}).values()), sum(c.get("ooo_okay", {}).values())
    if not tx:
        return ["ooo_okay: no TCP skbs transmitted"]
    wl, rx = sum(c.get("wmem_low", {}).values()), sum(c.get("rtx_empty", {}).values())
    return [
        f"ooo_okay share: {ooo}/{tx} skbs = {100 * ooo / tx:.2f}% "
        f"(wmem low: {wl}, rtx queue empty: {rx})"
    ]


def _draw_plot(trace: Any) -> Any:
    from .plot import draw

    return draw(trace)


PROBE = ProbeSpec(
    name="ooo-okay",
    description="who sets skb->ooo_okay on TCP transmits, why, and from which path",
    source=files(__package__).joinpath("ooo_okay.bpf.c"),
    fields=FIELDS,
    histograms=HISTOGRAMS,
    attach=(
        AttachPoint("kprobe", "ip_queue_xmit", "tk_queue_xmit"),
        AttachPoint("kprobe", "inet6_csk_xmit", "tk_queue_xmit"),
    ),
    params=(
        Param(
            "all",
            0,
            help="stream every TCP skb, not only those with ooo_okay",
            minimum=0,
            maximum=1,
        ),
    ),
    counters=(CounterMap("ooo_counts", doc="TCP skbs transmitted; with ooo_okay; by condition"),),
    plot=_draw_plot,
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
