"""ooo-okay's picture: the ooo_okay share over time, and the paths that set it.

With ``--param all=1`` the trace has every skb the probe saw, so the share (skbs with
``ooo_okay`` over all skbs) is drawn per interval. Without it only the skbs with the
flag are streamed: the share over time is not in the trace, and the plot says so and
shows the whole run's share from the kernel's counters instead.
"""

from __future__ import annotations

from typing import Any

from tracekit.fleet.plot import Binned, Trace, new_figure

from . import PATHS


def draw(trace: Trace) -> Any:
    np = trace.np
    by_path, flagged, total = Binned(trace), Binned(trace), Binned(trace)
    for cols in trace.columns("ooo_okay", "path"):
        ooo = cols["ooo_okay"] != 0
        total.add(cols["t"], [0] * len(ooo))
        flagged.add(cols["t"][ooo], [0] * int(ooo.sum()))
        by_path.add(cols["t"][ooo], cols["path"][ooo].tolist())
    every_skb = bool(trace.session.params.get("all", 0))
    fig = new_figure(2)
    ax_share, ax_path = fig.axes
    x = total.times()
    scale = trace.session.sample_every / total.width
    footer = trace.footer
    counted = footer.counters.get("ooo_counts", {}) if footer is not None else {}
    tx = sum(counted.get("transmitted", {}).values())
    ooo_n = sum(counted.get("ooo_okay", {}).values())
    run_share = f"{100 * ooo_n / tx:.2f}% over the run (kernel counters)" if tx else ""
    if every_skb:
        n = total.grid[:, 0]
        f = flagged.grid[:, 0] if flagged.keys else np.zeros_like(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n > 0, 100 * f / n, np.nan)
        ax_share.step(x, share, where="post", color="C0")
        ax_share.set_ylim(0, 100)
        ax_share.set_ylabel("% of skbs")
        ax_share.set_title(
            f"share of skbs with ooo_okay per interval; {run_share}", fontsize=9, loc="left"
        )
    else:
        ax_share.text(
            0.5,
            0.5,
            "only skbs with ooo_okay were recorded: record with --param all=1 for the share "
            f"over time\n{run_share}",
            ha="center",
            va="center",
            transform=ax_share.transAxes,
        )
        ax_share.set_title("share of skbs with ooo_okay", fontsize=9, loc="left")
    series = by_path.series()
    keys = sorted(series)
    if keys:
        ax_path.stackplot(
            x,
            [series[k] * scale for k in keys],
            labels=[PATHS[k] if k < len(PATHS) else str(k) for k in keys],
            step="post",
        )
        ax_path.legend(loc="upper right", fontsize=8, ncols=len(keys))
    ax_path.set_ylabel("skbs / s")
    ax_path.set_title(
        "skbs with ooo_okay per second, by the path that sent them", fontsize=9, loc="left"
    )
    fig.suptitle(trace.title("ooo_okay over time"))
    return fig
