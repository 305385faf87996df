"""txq-flip's picture: each socket's TX queue over time, the flips as steps.

One panel per socket (the busiest ``TOP`` by flips), its queue as a step line and a
marker at every flip in the colour of the CPU that moved it: filled when the skb
had ``ooo_okay`` set, a cross when it did not. In the seed, the sender's CPU and
the CPU processing ACKs take turns moving the socket between their XPS queues.
"""

from __future__ import annotations

from typing import Any

from tracekit.fleet.plot import Trace, new_figure

TOP = 6
NO_QUEUE = 0xFFFF
# Flips kept for one socket's panel: more than a panel's pixels. A socket with more
# keeps every 2nd, 4th... flip (in time order), so memory stays flat in the trace.
MAX_FLIPS = 50_000


def draw(trace: Trace) -> Any:
    np = trace.np
    from collections import Counter

    # First pass: flips per socket, to draw the busiest ones.
    per_sk: Counter[int] = Counter()
    for rows in trace.batches():
        per_sk.update(trace.column(rows, "sk").tolist())
    socks = [sk for sk, _ in per_sk.most_common(TOP)]
    want = np.array(socks, dtype=np.uint64)
    parts: dict[int, list[Any]] = {sk: [] for sk in socks}
    stored = dict.fromkeys(socks, 0)
    stride = dict.fromkeys(socks, 1)
    flow: dict[int, str] = {}
    names = ("sk", "cpu", "queue_before", "queue_after", "ooo_okay")
    for cols in trace.columns(*names, "saddr", "sport", "daddr", "dport"):
        keep = np.isin(cols["sk"], want)
        if not keep.any():
            continue
        sub = {k: v[keep] for k, v in cols.items()}
        for sk in np.unique(sub["sk"]).tolist():
            m = sub["sk"] == sk
            got = np.stack([sub["t"][m]] + [sub[n][m].astype(float) for n in names[1:]])
            got = got[:, :: stride[sk]]
            parts[sk].append(got)
            stored[sk] += got.shape[1]
            if stored[sk] > 2 * MAX_FLIPS:
                halved = np.concatenate(parts[sk], axis=1)[:, ::2]
                parts[sk], stored[sk], stride[sk] = [halved], halved.shape[1], 2 * stride[sk]
            if sk not in flow:
                i = int(np.argmax(m))
                flow[sk] = (
                    f"{trace.label('saddr', int(sub['saddr'][i]))}:{int(sub['sport'][i])} -> "
                    f"{trace.label('daddr', int(sub['daddr'][i]))}:{int(sub['dport'][i])}"
                )
    fig = new_figure(max(1, len(socks)), height=1.6)
    axes = fig.axes
    cpus = sorted({int(c) for sk in socks for p in parts[sk] for c in p[1].tolist()})
    colours = {c: f"C{i % 10}" for i, c in enumerate(cpus)}
    span = trace.span().seconds
    for ax, sk in zip(axes, socks, strict=False):
        data = np.concatenate(parts[sk], axis=1)
        data = data[:, np.argsort(data[0], kind="stable")]
        t, cpu, before, after, ooo = data
        # The queue held from each flip to the next; the first flip's "before" is the
        # queue held since the start (none: the socket's first pick).
        qt = np.concatenate([[0.0], t, [span]])
        q = np.concatenate([[before[0]], after, [after[-1]]])
        q = np.where(q == NO_QUEUE, np.nan, q)
        ax.step(qt, q, where="post", color="0.35", linewidth=1.2)
        for c in cpus:
            for flag, marker in ((1, "o"), (0, "x")):
                m = (cpu == c) & ((ooo != 0) == bool(flag))
                if m.any():
                    ax.scatter(t[m], after[m], color=colours[c], marker=marker, s=28, zorder=3)
        ax.set_ylim(-0.5, np.nanmax(q) + 0.5 if np.isfinite(q).any() else 1)
        ax.set_ylabel("TX queue")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_title(
            f"socket {trace.label('sk', sk)}  {flow.get(sk, '')}  ({per_sk[sk]} flips"
            + (f"; 1 in {stride[sk]} drawn)" if stride[sk] > 1 else ")"),
            fontsize=9,
            loc="left",
        )
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colours[c], marker="o", linestyle="", label=f"moved by cpu{c}")
        for c in cpus
    ] + [
        Line2D([], [], color="0.3", marker="o", linestyle="", label="ooo_okay=1"),
        Line2D([], [], color="0.3", marker="x", linestyle="", label="ooo_okay=0"),
    ]
    if not socks:
        axes[0].text(0.5, 0.5, "no queue changes", ha="center", transform=axes[0].transAxes)
    # Below the panels, not in one: a legend inside would hide the flips under it
    # (and above them it would sit on the title: constrained layout does not part them).
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=len(handles))
    fig.suptitle(trace.title("TX queue of each socket over time (steps: flips)"))
    return fig
