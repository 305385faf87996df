"""``tracekit lab PROBE``: rebuild a seed's situation in a namespace lab and trace it."""

from __future__ import annotations

import sys

import click

from tracekit.errors import UsageError
from tracekit.lab.scenarios import (
    LabResult,
    lab_fq_throttle,
    lab_ooo_okay,
    lab_rss_cpu,
    lab_txq_flip,
    rss_link,
)
from tracekit.stats import imbalance

duration_option = click.option(
    "--duration", type=float, default=10.0, show_default=True, help="iperf3 seconds"
)
sink_option = click.option(
    "--sink",
    "sinks",
    multiple=True,
    metavar="NAME[=ARG]",
    help="as for tracekit run (default: hist)",
)
force_option = click.option("--force", is_flag=True, help="overwrite existing trace files")
loader_option = click.option(
    "--loader",
    type=click.Choice(["auto", "core", "bcc"]),
    default="auto",
    show_default=True,
    help="as for tracekit run",
)


def _check(duration: float) -> None:
    if duration <= 0:
        raise UsageError("--duration must be positive")


def _bus(ctx: click.Context):  # type: ignore[no-untyped-def]
    from tracekit.cli import _bus as cli_bus

    return cli_bus(ctx)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _counter(res: LabResult, m: str, label: str) -> dict[int, int]:
    return res.summary.counters.get(m, {}).get(label, {})


@click.group("lab")
def lab() -> None:
    """Rebuild a seed's situation in network namespaces and trace it."""


@lab.command("txq-flip")
@duration_option
@click.option("--qdisc", type=click.Choice(["fq", "pfifo_fast"]), default="fq", show_default=True)
@sink_option
@force_option
@loader_option
@click.pass_context
def txq_flip_cmd(
    ctx: click.Context,
    duration: float,
    qdisc: str,
    sinks: tuple[str, ...],
    force: bool,
    loader: str,
) -> None:
    """XPS queue flips: veth with 4 TX queues, iperf3 client on CPU 0, receiver on CPU 1."""
    from tracekit.run import RunOptions

    _check(duration)
    res = lab_txq_flip(
        _bus(ctx),
        sinks or ("hist",),
        duration,
        qdisc,
        force=force,
        run_opts=RunOptions(loader=loader),
    )
    _out(f"\niperf3: {res.iperf_mbit:.1f} Mbit/s, {res.retransmits} retransmits ({qdisc})")
    cells = "  ".join(f"q{q}={n}" for q, n in sorted(res.queue_delta.items()))
    _out(f"tc -s qdisc (tk0 mq children), packets sent during the run: {cells}")


@lab.command("ooo-okay")
@duration_option
@click.option(
    "--bandwidth",
    default=None,
    metavar="RATE",
    help="iperf3 -b for the limited run (default: a tenth of the unlimited rate)",
)
@sink_option
@force_option
@click.pass_context
def ooo_okay_cmd(
    ctx: click.Context, duration: float, bandwidth: str | None, sinks: tuple[str, ...], force: bool
) -> None:
    """The ooo_okay share with iperf3 unlimited, then rate-limited, side by side."""
    _check(duration)
    full, limited = lab_ooo_okay(_bus(ctx), sinks or ("hist",), duration, bandwidth, force=force)
    _out("")
    for r in (full, limited):
        tx = sum(_counter(r, "ooo_counts", "transmitted").values())
        ooo = sum(_counter(r, "ooo_counts", "ooo_okay").values())
        share = 100 * ooo / tx if tx else 0.0
        _out(
            f"{r.label:>22}: iperf3 {r.iperf_mbit:8.1f} Mbit/s, ooo_okay on {ooo:6d} of "
            f"{tx:6d} TCP skbs = {share:5.1f}%"
        )


@lab.command("fq-throttle")
@duration_option
@click.option("--flow-limit", type=int, default=10, show_default=True)
@click.option("--maxrate", default="10mbit", show_default=True)
@sink_option
@force_option
@click.pass_context
def fq_throttle_cmd(
    ctx: click.Context,
    duration: float,
    flow_limit: int,
    maxrate: str,
    sinks: tuple[str, ...],
    force: bool,
) -> None:
    """fq with a low flow_limit and a maxrate, UDP streams faster than maxrate."""
    _check(duration)
    res = lab_fq_throttle(_bus(ctx), sinks or ("hist",), duration, flow_limit, maxrate, force=force)
    thr = sum(_counter(res, "fq_counts", "throttled").values())
    drops = sum(_counter(res, "fq_counts", "flow_limit_drops").values())
    tc_thr = sum(v["throttled"] for v in res.fq_delta.values())
    tc_drops = sum(v["flows_plimit"] for v in res.fq_delta.values())
    _out(f"\niperf3 (UDP): {res.iperf_mbit:.1f} Mbit/s offered")
    _out(f"probe: throttled {thr}, flow_limit drops {drops}")
    _out(f"tc -s qdisc (fq children of tk0): throttled {tc_thr}, flows_plimit {tc_drops}")


@lab.command("rss-cpu")
@duration_option
@click.option(
    "--spread",
    type=click.Choice(["none", "rps", "rss", "both"]),
    default="both",
    show_default=True,
    help="none: the NIC hashes UDP by addresses only; rss: by ports too (NIC pair only); "
    "rps: RPS on the receiving device; both: none, then rss (NIC pair) or rps",
)
@click.option(
    "--link",
    type=click.Choice(["auto", "nics", "veth"]),
    default="auto",
    show_default=True,
    help="nics: the VM's virtio-net pair with RSS (vm/run); veth: a veth pair",
)
@sink_option
@force_option
@click.pass_context
def rss_cpu_cmd(
    ctx: click.Context,
    duration: float,
    spread: str,
    link: str,
    sinks: tuple[str, ...],
    force: bool,
) -> None:
    """Many UDP flows between two addresses: receive work per CPU, unspread and spread."""
    _check(duration)
    link = rss_link(link)
    if spread == "both":
        modes: tuple[str, ...] = ("none", "rss" if link == "nics" else "rps")
    else:
        modes = (spread,)
    bus = _bus(ctx)
    results = [
        lab_rss_cpu(bus, sinks or ("hist",), duration, m, link=link, force=force) for m in modes
    ]
    _out("")
    if link == "nics":
        _out("link: virtio-net NIC pair, RSS over one RX queue per CPU (queue n -> cpu n)")
    else:
        _out("link: veth pair (receive work runs on the sending CPU unless RPS moves it)")
    for r in results:
        per = _counter(r, "rss_counts", "packets")
        cpu, share, ratio = imbalance(per, len(per) or 1)
        cells = "  ".join(f"cpu{c}={n}" for c, n in sorted(per.items()))
        soft = "  ".join(f"cpu{c}={n}" for c, n in sorted(r.softnet_delta.items()))
        _out(
            f"{r.label:>11}: probe {cells}; busiest cpu{cpu} {100 * share:.1f}%, "
            f"imbalance {ratio:.2f}x"
        )
        if r.rxq_delta:
            rxq = "  ".join(f"q{q}={n}" for q, n in sorted(r.rxq_delta.items()))
            _out(f"{'':>11}  NIC RX queue counters (ethtool -S): {rxq}")
        _out(f"{'':>11}  softnet_stat processed: {soft}")
