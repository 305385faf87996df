"""rss-cpu's picture: receive work per CPU and per RX queue over time, and per flow.

1. Received packets per second on each CPU.
2. The busiest CPU's share of the packets in each interval against an even share
   over the machine's CPUs (1.0: even; N: one CPU does all the work of N), as the
   seed reads mpstat's %soft. Its title names the busiest CPU of the whole trace.
3. Received packets per second on each RX queue (the queue the NIC, or RPS, chose).
4. Per flow (the busiest ``TOP_FLOWS``), its packets on each CPU, with the RX queue
   and ``skb->hash`` it had: many flows on one queue with one hash value mean the
   NIC's hash left their ports out.

Legends sit beside the axes, never over the data.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tracekit.fleet.plot import Binned, TopKeys, Trace, keys_of, new_figure

TOP_FLOWS = 16
FLOW = ("saddr", "sport", "daddr", "dport")


def busiest(counts: dict[Any, float]) -> tuple[Any, float]:
    """(key, share) of the largest of ``counts``; the lowest key wins a tie."""
    total = sum(counts.values())
    key = min(counts, key=lambda k: (-counts[k], k))
    return key, (counts[key] / total if total else 0.0)


def draw(trace: Trace) -> Any:
    np = trace.np
    per_cpu, per_queue = Binned(trace), Binned(trace)
    # flow -> (cpu, rx_queue, hash) -> packets, for the busiest flows (bounded:
    # fleet.plot.TopKeys), counted a batch at a time
    per_flow = TopKeys()
    for cols in trace.columns("cpu", "rx_queue", "hash", *FLOW):
        cpus = cols["cpu"].tolist()
        per_cpu.add(cols["t"], cpus)
        queues = cols["rx_queue"].tolist()
        per_queue.add(cols["t"], queues)
        hows = zip(cpus, queues, cols["hash"].tolist(), strict=True)
        per_flow.add(keys_of(trace, cols, FLOW), list(hows))
    # flow -> cpu -> packets; flow -> (rx_queue, hash) -> packets
    flow_cpu: dict[tuple[Any, ...], Counter[int]] = defaultdict(Counter)
    flow_how: dict[tuple[Any, ...], Counter[tuple[int, int]]] = defaultdict(Counter)
    for flow, got in per_flow.counts.items():
        for (cpu, q, h), n in got.items():
            flow_cpu[flow][cpu] += n
            flow_how[flow][(q, h)] += n
    scale = trace.session.sample_every / per_cpu.width
    fig = new_figure(4, height=2.2)
    top, ratio_ax, q_ax, flow_ax = fig.axes
    # The flow panel has no time axis: its own x axis, not the shared one.
    flow_ax.remove()
    flow_ax = fig.add_subplot(fig.axes[0].get_gridspec()[3])
    edges = per_cpu.edges()
    series = per_cpu.series()
    colour = {cpu: f"C{i % 10}" for i, cpu in enumerate(sorted(series))}
    for cpu in sorted(series):
        top.stairs(series[cpu] * scale, edges, label=f"cpu{cpu}", color=colour[cpu], linewidth=1.5)
    top.set_ylabel("packets / s")
    top.set_title("received packets per CPU", fontsize=9, loc="left")
    _legend(top)

    # Columns of the grid are the keys in the order they appeared, not sorted.
    totals = {cpu: float(per_cpu.grid[:, i].sum()) for cpu, i in per_cpu.keys.items()}
    grid = per_cpu.grid[:, : len(series)]
    total = grid.sum(axis=1)
    ncpus = max(trace.session.ncpus, len(series), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(total > 0, grid.max(axis=1) / total * ncpus, np.nan)
    ratio_ax.stairs(ratio, edges, color="C3", linewidth=1.5)
    ratio_ax.axhline(1.0, color="0.5", linestyle="--", linewidth=1)
    ratio_ax.set_ylim(0, ncpus * 1.05)
    ratio_ax.set_ylabel("busiest / even")
    if totals and sum(totals.values()):
        cpu, share = busiest(totals)
        what = f"overall cpu{cpu} has {100 * share:.1f}% ({share * ncpus:.2f}x even)"
    else:
        what = "no packets"
    ratio_ax.set_title(
        f"imbalance: busiest CPU's share against an even share on {ncpus} CPUs; {what}",
        fontsize=9,
        loc="left",
    )

    qseries = per_queue.series()
    for q in sorted(qseries):
        q_ax.stairs(
            qseries[q] * scale, edges, label=f"rxq {trace.label('rx_queue', q)}", linewidth=1.5
        )
    q_ax.set_ylabel("packets / s")
    q_ax.set_title(
        f"received packets per RX queue ({len(qseries)} queues seen)", fontsize=9, loc="left"
    )
    _legend(q_ax)
    # The last of the three time panels: its tick labels (sharex hid them) and name.
    q_ax.tick_params(labelbottom=True)
    q_ax.set_xlabel("seconds since the first event")

    _flows(trace, flow_ax, flow_cpu, flow_how, colour, per_flow.seen)
    fig.suptitle(trace.title("receive CPU of packets over time, and per flow"))
    return fig


def _flows(
    trace: Trace,
    ax: Any,
    flow_cpu: dict[tuple[Any, ...], Counter[int]],
    flow_how: dict[tuple[Any, ...], Counter[tuple[int, int]]],
    colour: dict[int, str],
    seen: int,
) -> None:
    """Horizontal bars: each flow's packets per CPU, labelled with its queue and hash."""
    flows = sorted(flow_cpu, key=lambda f: (-sum(flow_cpu[f].values()), f))[:TOP_FLOWS]
    if not flows:
        ax.text(0.5, 0.5, "no flows", ha="center", va="center", transform=ax.transAxes)
        return
    sample = trace.session.sample_every
    labels, notes = [], []
    for f in flows:
        (q, h), _ = flow_how[f].most_common(1)[0]
        more = len(flow_how[f]) - 1
        also = f" (+{more} more)" if more else ""
        labels.append(f"{trace.label('saddr', f[0])}:{f[1]} > {trace.label('daddr', f[2])}:{f[3]}")
        notes.append(f" rxq {trace.label('rx_queue', q)}, hash {h:#010x}{also}")
    y = list(range(len(flows)))
    left = [0.0] * len(flows)
    for cpu in sorted(colour):
        widths = [float(flow_cpu[f][cpu] * sample) for f in flows]
        if any(widths):
            ax.barh(y, widths, left=left, color=colour[cpu], label=f"cpu{cpu}", height=0.7)
            left = [a + b for a, b in zip(left, widths, strict=True)]
    for i, (end, note) in enumerate(zip(left, notes, strict=True)):
        ax.text(end, i, note, va="center", fontsize=7, family="monospace")
    ax.set_xlim(0, max(left) * 1.45)  # room for the notes after the longest bar
    ax.set_yticks(y, labels, fontsize=7, family="monospace")
    ax.invert_yaxis()
    ax.set_xlabel("packets")
    # Flows per hash value: many flows on one value mean the hash left ports out.
    # 0 is no hash at all (the driver computed none), not a shared one.
    hashes = Counter(h for f in flows for h in {h for (_, h) in flow_how[f]} if h)
    shared = hashes.most_common(1)[0][1] if hashes else 0
    alike = f"{shared} share one hash value" if shared > 1 else "each has its own hash value"
    ax.set_title(
        f"per flow (busiest {len(flows)} of {seen}): packets on each CPU; {alike}",
        fontsize=9,
        loc="left",
    )
    _legend(ax)


def _legend(ax: Any) -> None:
    """Beside the axes (right), so it never hides a line or a bar."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, borderaxespad=0)
