"""ooo-okay in the VM: with txq-flip in the same run, and the seed's rate experiment."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tracekit.base.hist import Histogram
from tracekit.base.session import Session
from tracekit.lab.netns import NetnsLab
from tracekit.lab.ooo_okay import lab_ooo_okay
from tracekit.lab.traced import LabRun
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus

from .conftest import attached_residue, trace_rows
from .helpers import assert_replay_prints, check_ooo_okay_runs, printed

pytestmark = pytest.mark.vm


def test_every_flip_happens_on_an_ooo_okay_skb(
    bus: Bus, txq_compiled: Compiled, ooo_compiled: Compiled
) -> None:
    """Both probes attached at once; each txq-flip flip is matched to the skb it moved."""
    probes = [txq_compiled.probe, ooo_compiled.probe]
    rows: dict[str, list[tuple[object, ...]]] = {"txq": [], "ooo": []}
    with NetnsLab(txqueues=4, qdisc="fq") as lab:
        server = lab.start_server(1)
        try:
            for p, c in zip(probes, (txq_compiled, ooo_compiled), strict=True):
                p.open_output()
                p.attach(c.points)
            client = lab.start_client(0, 6)
            while client.poll() is None:
                rows["txq"] += txq_compiled.probe.poll(50)
                rows["ooo"] += ooo_compiled.probe.poll(50)
        finally:
            for p in probes:
                p.detach()
            server.kill()
        rows["txq"] += txq_compiled.probe.poll(0)
        rows["ooo"] += ooo_compiled.probe.poll(0)
    tnames, onames = txq_compiled.probe.spec.schema.names, ooo_compiled.probe.spec.schema.names
    flips = [dict(zip(tnames, r, strict=True)) for r in rows["txq"]]
    skbs = [dict(zip(onames, r, strict=True)) for r in rows["ooo"]]
    moved = [f for f in flips if f["queue_before"] != 0xFFFF]
    assert moved, "no queue changes in the lab run"
    last: dict[tuple[object, object], dict[str, object]] = {}
    events = sorted(
        [(s["ts_ns"], 0, s) for s in skbs] + [(f["ts_ns"], 1, f) for f in moved],
        key=lambda e: (e[0], e[1]),
    )
    checked = 0
    for _, kind, e in events:
        key = (e["sk"], e["cpu"])
        if kind == 0:
            last[key] = e
            continue
        skb = last.get(key)
        # ip_queue_xmit() comes before netdev_pick_tx() for the same skb on the same
        # CPU; the socket is owned meanwhile, so nothing else of it is sent between.
        assert skb is not None, f"flip without a transmitted skb before it: {e}"
        assert skb["ooo_okay"] == 1 and e["ooo_okay"] == 1, (skb, e)
        checked += 1
    assert checked == len(moved)


@pytest.fixture(scope="module")
def rate_runs(bus: Bus, ooo_compiled: Compiled, out_dir: Path) -> tuple[LabRun, LabRun, str]:
    trace = out_dir / "ooo-okay.tkt"
    (full, limited), live = printed(
        lab_ooo_okay,
        bus,
        ("hist", f"msgpack={trace}"),
        5,
        None,
        compiled=ooo_compiled,
        force=True,
        quiet=True,
    )
    return full, limited, live


def test_counters_match_streamed_skbs_and_the_rate_limit_raises_the_share(
    rate_runs: tuple, out_dir: Path
) -> None:
    full, limited, _ = rate_runs
    check_ooo_okay_runs(full, limited, out_dir / "ooo-okay.limited.tkt")


def test_kernel_aggregate_and_streamed_events_give_the_same_histogram(
    rate_runs: tuple, out_dir: Path
) -> None:
    reader, rows = trace_rows(out_dir / "ooo-okay.limited.tkt")
    session: Session = reader.session
    names = session.schema.names
    footer = reader.footer
    assert footer is not None and footer.kernel_agg
    for spec in session.schema.histograms:
        streamed = Histogram(spec, session.schema)
        streamed.add_rows(tuple(r[n] for n in names) for r in rows if r["ooo_okay"])
        kernel = Histogram(spec, session.schema)
        kernel.add_weighted(footer.kernel_agg)
        assert streamed.render(session.symbols) == kernel.render(session.symbols)


def test_replay_prints_what_the_live_lab_printed(rate_runs: tuple, out_dir: Path) -> None:
    _, _, live = rate_runs
    assert_replay_prints(live, out_dir / "ooo-okay.unlimited.tkt", out_dir / "ooo-okay.limited.tkt")
    assert "ooo_okay share:" in live and "ack-" in live


def test_nothing_left_attached() -> None:
    time.sleep(0.5)
    assert attached_residue() == []
