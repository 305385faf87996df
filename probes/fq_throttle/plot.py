"""fq-throttle's picture: throttling per queue and flow_limit drops per flow over time.

sch_fq counts throttles per qdisc, not per flow (it keeps no record of which flow a
throttle delayed), so throttles are drawn per interface and TX queue; drops carry
the dropped skb's socket, so they are drawn per flow (the busiest ``TOP``). Every
time bin is whole (``Span.bins``), and legends sit beside the axes.
"""

from __future__ import annotations

from typing import Any

from tracekit.fleet.plot import Binned, Trace, keys_of, new_figure

from . import KINDS

TOP = 8


def draw(trace: Trace) -> Any:
    np = trace.np
    throttle, drops, empty = Binned(trace), Binned(trace), Binned(trace)
    k_throttle, k_drop, k_empty = (
        KINDS.index(k) for k in ("throttle", "flow_limit_drop", "empty_dequeue")
    )
    names = ("kind", "count", "ifname", "queue", "saddr", "sport", "daddr", "dport")
    for cols in trace.columns(*names):
        for binned, kind, key in (
            (throttle, k_throttle, ("ifname", "queue")),
            (empty, k_empty, ("ifname", "queue")),
            (drops, k_drop, ("saddr", "sport", "daddr", "dport")),
        ):
            m = cols["kind"] == kind
            if m.any():
                sub = {n: cols[n][m] for n in (*key, "count", "t")}
                binned.add(sub["t"], keys_of(trace, sub, key), sub["count"].astype(float))
    scale = trace.session.sample_every / throttle.width
    fig = new_figure(3)
    ax_t, ax_d, ax_e = fig.axes
    edges = throttle.edges()

    def queue_label(k: tuple[Any, ...]) -> str:
        return f"{trace.label('ifname', k[0])} q{k[1]}"

    def flow_label(k: tuple[Any, ...]) -> str:
        return f"{trace.label('saddr', k[0])}:{k[1]} -> {trace.label('daddr', k[2])}:{k[3]}"

    for ax, binned, label, what in (
        (ax_t, throttle, queue_label, "throttles per second, per interface and TX queue"),
        (ax_d, drops, flow_label, f"flow_limit drops per second, per flow (top {TOP})"),
        (ax_e, empty, queue_label, "empty dequeues per second (all flows throttled)"),
    ):
        series = binned.series()
        # Sorted, so a queue has the same colour in the throttle and dequeue panels.
        for k in sorted(binned.top(TOP)):
            ax.stairs(series[k] * scale, edges, label=label(k), linewidth=1.5)
        if series:
            # Beside the axes, not over the data.
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, borderaxespad=0)
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        # With the keys folded together (fleet.plot.MAX_KEYS), which are not drawn.
        kept = sum(float(np.sum(v)) for v in series.values())
        total = (kept + float(np.sum(binned.other))) * trace.session.sample_every
        ax.set_title(f"{what}: {total:.0f} in all", fontsize=9, loc="left")
        ax.set_ylabel("/ s")
    fig.suptitle(trace.title("sch_fq throttling and drops over time"))
    return fig
