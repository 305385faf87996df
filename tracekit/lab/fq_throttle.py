"""``tracekit lab fq-throttle``: fq throttling and flow_limit drops beside tc's counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from tracekit.cli.options import examples
from tracekit.lab.netns import NetnsLab
from tracekit.lab.options import (
    check_duration,
    check_rate,
    duration_option,
    force_option,
    out,
    rate_option,
    sink_option,
)
from tracekit.lab.traced import LabRun, extend, traced_iperf
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus, current_bus


@dataclass
class FqThrottleResult(LabRun):
    """Beside the probe's counts: fq's own counters per TX queue of tk0 (``tc -s
    qdisc``: ``throttled``, ``flows_plimit``, ``dropped``), over the client's run."""

    fq_delta: dict[int, dict[str, int]] = field(default_factory=dict)


def lab_fq_throttle(
    bus: Bus,
    sinks: Sequence[str],
    seconds: float,
    flow_limit: int = 10,
    maxrate: str = "10mbit",
    rate: str = "20M",
    compiled: Compiled | None = None,
    **kw: Any,
) -> FqThrottleResult:
    """fq with a low flow_limit and a maxrate; UDP streams sending faster than maxrate.

    fq paces every flow to maxrate (throttling), and UDP, unlike TCP, has no small
    queues limit, so each flow's queue fills to flow_limit and fq drops the rest.
    """
    args = ("flow_limit", str(flow_limit), "maxrate", maxrate)
    with NetnsLab(txqueues=4, qdisc="fq", qdisc_args=args) as lab:
        run, counted = traced_iperf(
            bus,
            lab,
            "fq-throttle",
            sinks,
            seconds=seconds,
            compiled=compiled,
            client_args=("-u", "-b", rate, "-P", "2", "-l", "1400"),
            **kw,
        )
    return extend(run, FqThrottleResult, fq_delta=counted.fq)


@click.command(
    "fq-throttle",
    epilog=examples(
        "sudo tracekit lab fq-throttle --duration 5",
        "sudo tracekit lab fq-throttle --flow-limit 5 --maxrate 5mbit --sink msgpack=fq.tkt",
        "tracekit plot fq.tkt -o fq.png",
    ),
)
@duration_option
@click.option(
    "--flow-limit",
    type=click.IntRange(min=1, max=(1 << 32) - 1),  # fq's flow_limit is a u32 of packets
    default=10,
    show_default=True,
)
@click.option("--maxrate", default="10mbit", show_default=True)
@rate_option("20M", "of the 2 UDP streams")
@sink_option
@force_option
def command(
    duration: float,
    flow_limit: int,
    maxrate: str,
    rate: str,
    sinks: tuple[str, ...],
    force: bool,
) -> None:
    """fq with a low flow_limit and a maxrate, UDP streams faster than maxrate."""
    check_duration(duration)
    check_rate(rate)
    res = lab_fq_throttle(
        current_bus(), sinks or ("hist",), duration, flow_limit, maxrate, rate, force=force
    )
    thr = sum(res.counter("fq_counts", "throttled").values())
    drops = sum(res.counter("fq_counts", "flow_limit_drops").values())
    tc_thr = sum(v["throttled"] for v in res.fq_delta.values())
    tc_drops = sum(v["flows_plimit"] for v in res.fq_delta.values())
    out(f"\niperf3 (UDP): {res.iperf_mbit:.1f} Mbit/s offered")
    out(f"probe: throttled {thr}, flow_limit drops {drops}")
    out(f"tc -s qdisc (fq children of tk0): throttled {tc_thr}, flows_plimit {tc_drops}")
