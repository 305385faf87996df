"""``tracekit lab ooo-okay``: the ooo_okay share unlimited, then rate-limited."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import click

from tracekit.cli.options import examples
from tracekit.lab.netns import NetnsLab
from tracekit.lab.options import check_duration, duration_option, force_option, out, sink_option
from tracekit.lab.traced import LabRun, sink_variant, traced_iperf
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus, current_bus


class OooOkayResult(NamedTuple):
    """The two runs side by side; the oracle is the probe's own counters of both."""

    unlimited: LabRun
    limited: LabRun


def ooo_okay_share(run: LabRun) -> tuple[int, int]:
    """(skbs sent with ooo_okay, TCP skbs sent) over the whole run."""
    tx = sum(run.counter("ooo_counts", "transmitted").values())
    return sum(run.counter("ooo_counts", "ooo_okay").values()), tx


def lab_ooo_okay(
    bus: Bus,
    sinks: Sequence[str],
    seconds: float,
    bandwidth: str | None,
    compiled: Compiled | None = None,
    **kw: Any,
) -> OooOkayResult:
    """The seed's experiment: the ooo_okay share unlimited, then rate-limited.

    With less data in flight the socket's queues drain more often, so more skbs
    leave with ooo_okay set. ``bandwidth`` defaults to a tenth of the unlimited rate.
    """
    with NetnsLab(txqueues=4, qdisc="fq") as lab:
        full, _ = traced_iperf(
            bus,
            lab,
            "ooo-okay",
            sink_variant(sinks, "unlimited"),
            seconds=seconds,
            compiled=compiled,
            label="unlimited",
            **kw,
        )
        rate = bandwidth or f"{max(1.0, full.iperf_mbit / 10):.0f}M"
        limited, _ = traced_iperf(
            bus,
            lab,
            "ooo-okay",
            sink_variant(sinks, "limited"),
            seconds=seconds,
            compiled=compiled,
            client_args=("-b", rate),
            label=f"limited to {rate}bit/s",
            **kw,
        )
    return OooOkayResult(full, limited)


@click.command(
    "ooo-okay",
    epilog=examples(
        "sudo tracekit lab ooo-okay --duration 5",
        "sudo tracekit lab ooo-okay --bandwidth 50M --sink hist --sink msgpack=ooo.tkt",
        "# writes ooo.unlimited.tkt and ooo.limited.tkt",
    ),
)
@duration_option
@click.option(
    "--bandwidth",
    default=None,
    metavar="RATE",
    help="iperf3 -b for the limited run (default: a tenth of the unlimited rate)",
)
@sink_option
@force_option
def command(duration: float, bandwidth: str | None, sinks: tuple[str, ...], force: bool) -> None:
    """The ooo_okay share with iperf3 unlimited, then rate-limited, side by side."""
    check_duration(duration)
    runs = lab_ooo_okay(current_bus(), sinks or ("hist",), duration, bandwidth, force=force)
    out("")
    for r in runs:
        ooo, tx = ooo_okay_share(r)
        share = 100 * ooo / tx if tx else 0.0
        out(
            f"{r.label:>22}: iperf3 {r.iperf_mbit:8.1f} Mbit/s, ooo_okay on {ooo:6d} of "
            f"{tx:6d} TCP skbs = {share:5.1f}%"
        )
