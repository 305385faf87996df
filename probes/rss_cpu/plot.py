"""rss-cpu's picture: packets per CPU over time, and the imbalance over time.

Top: received packets per second on each CPU. Bottom: the busiest CPU's share of
the packets in each interval against an even share over the machine's CPUs (1.0:
even; N: one CPU does all the work of N), as the seed reads mpstat's %soft.
"""

from __future__ import annotations

from typing import Any

from tracekit.fleet.plot import Binned, Trace, new_figure


def draw(trace: Trace) -> Any:
    np = trace.np
    per_cpu = Binned(trace)
    for cols in trace.columns("cpu"):
        per_cpu.add(cols["t"], cols["cpu"].tolist())
    scale = trace.session.sample_every / per_cpu.width
    fig = new_figure(2)
    top, bottom = fig.axes
    x = per_cpu.times()
    series = per_cpu.series()
    for cpu in sorted(series):
        top.step(x, series[cpu] * scale, where="post", label=f"cpu{cpu}")
    top.set_ylabel("packets / s")
    top.set_title("received packets per CPU", fontsize=9, loc="left")
    top.legend(loc="upper right", fontsize=8, ncols=min(len(series), 8))
    cpus = sorted(series)
    # Columns in CPU order (the grid's are in order of arrival).
    grid = np.stack([series[c] for c in cpus], axis=1) if cpus else np.zeros((len(x), 0))
    total = grid.sum(axis=1)
    ncpus = max(trace.session.ncpus, len(series), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(total > 0, grid.max(axis=1) / total * ncpus, np.nan)
    bottom.step(x, ratio, where="post", color="C3")
    bottom.axhline(1.0, color="0.5", linestyle="--", linewidth=1)
    bottom.set_ylim(0, ncpus * 1.05)
    bottom.set_ylabel("busiest / even")
    overall = grid.sum(axis=0)
    if overall.sum():
        busiest = cpus[int(np.argmax(overall))]
        share = overall.max() / overall.sum()
        what = f"overall cpu{busiest} has {100 * share:.1f}% ({share * ncpus:.2f}x even)"
    else:
        what = "no packets"
    bottom.set_title(
        f"imbalance: busiest CPU's share against an even share on {ncpus} CPUs; {what}",
        fontsize=9,
        loc="left",
    )
    fig.suptitle(trace.title("receive CPU of packets over time"))
    return fig
