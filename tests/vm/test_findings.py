"""Each lab's findings state the lab's cause, checked against the kernel's own counts
(tc -s qdisc, the NIC's per-queue counters) and, replayed, word for word the same."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import pytest

from tracekit.base.findings import render
from tracekit.base.stats import imbalance
from tracekit.lab.fq_throttle import lab_fq_throttle
from tracekit.lab.nics import find_nic_pair
from tracekit.lab.rss_cpu import lab_rss_cpu
from tracekit.lab.txq_flip import lab_txq_flip
from tracekit.live.run import Compiled, RunOptions, compile_probe
from tracekit.plugin.bus import Bus
from tracekit.plugin.pipeline import SinkOptions
from tracekit.traces.replay import replay

pytestmark = pytest.mark.vm


def quiet(fn, *args, **kw):  # type: ignore[no-untyped-def]
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


def replayed(bus: Bus, trace: Path) -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):
        s = replay(bus, str(trace), (), SinkOptions())
    return render(s.findings, "text")


def test_txq_flip_names_the_iperf3_socket_its_two_queues_and_cpus(
    bus: Bus, txq_compiled: Compiled, out_dir: Path
) -> None:
    trace = out_dir / "findings-txq-flip.tkt"
    res = quiet(
        lab_txq_flip,
        bus,
        (f"msgpack={trace}",),
        6,
        "fq",
        compiled=txq_compiled,
        force=True,
        quiet=True,
    )
    text = render(res.summary.findings, "text")
    print("\n".join(text))
    top = res.summary.findings[0]
    assert top.what == "socket-flips", text
    assert top.data["flow"]["dport"] == 5201 and top.data["comm"] == "iperf3", text
    # The two CPUs (client on 0, ACKs processed on 1) and their two queues, which XPS
    # maps them to and which tc counted packets on.
    assert top.data["cpus"] == [0, 1] and top.data["queues"] == [0, 1], text
    assert "between queues 0 and 1, picked on CPUs 0 and 1" in top.text
    assert top.data["xps"] == {"0": [0], "1": [1]}, text
    grew = sorted(q for q, n in res.queue_delta.items() if n > 0)
    assert grew == [0, 1], res.queue_delta
    flips = sum(m["count"] for m in top.data["moves"])
    assert flips == top.data["changes"] > 0
    assert replayed(bus, trace) == text


@pytest.fixture(scope="module")
def rss_nic(bus: Bus, rss_compiled: Compiled, out_dir: Path) -> dict[str, object]:
    if find_nic_pair() is None:
        pytest.skip("this VM was booted without the NIC pair (vm/run --no-nics)")
    out = {}
    for spread in ("none", "rss"):
        out[spread] = quiet(
            lab_rss_cpu,
            bus,
            (f"msgpack={out_dir / 'findings-rss.tkt'}",),
            4,
            spread,
            rate="1M",
            flows=16,
            compiled=rss_compiled,
            link="nics",
            force=True,
            quiet=True,
        )
    return out


def test_rss_cpu_unspread_names_the_busy_cpu_and_a_hash_without_ports(
    bus: Bus, rss_nic: dict, out_dir: Path
) -> None:
    res = rss_nic["none"]
    text = render(res.summary.findings, "text")
    print("\n".join(text))
    by = {f.what: f for f in res.summary.findings}
    assert "one-cpu" in by, text
    # The NIC's own per-queue counters say which queue took the flows (queue n's
    # interrupt is on cpu n): the finding's busy CPU is that one.
    busy_q, _, _ = imbalance(res.rxq_delta, len(res.rxq_delta))
    assert by["one-cpu"].data["busiest_cpu"] == busy_q, (res.rxq_delta, text)
    h = by["hash-ignores-ports"]
    assert h.data["ifname"] == "tk1" and h.data["flows"] == 16 and h.data["proto"] == "UDP"
    assert h.data["rx_queues"] == [busy_q]
    assert "ethtool -N tk1 rx-flow-hash udp4 sdfn" in h.hints[0]
    assert replayed(bus, out_dir / "findings-rss.none.tkt") == text


def test_rss_cpu_spread_over_ports_is_balanced_without_that_finding(
    bus: Bus, rss_nic: dict, out_dir: Path
) -> None:
    res = rss_nic["rss"]
    text = render(res.summary.findings, "text")
    print("\n".join(text))
    whats = [f.what for f in res.summary.findings]
    assert "hash-ignores-ports" not in whats and "one-cpu" not in whats, text
    assert whats[0] in ("balanced", "uneven"), text
    # Both queues took flows, as the NIC counted.
    assert all(n > 0 for n in res.rxq_delta.values()), res.rxq_delta
    assert replayed(bus, out_dir / "findings-rss.rss.tkt") == text


@pytest.fixture(scope="module", params=["core", "bcc"])
def fq_loaded(request: pytest.FixtureRequest, bus: Bus) -> Compiled:
    """fq-throttle through both loaders: the flows fq throttles are read from its
    lists and its tree by offsets CO-RE relocates and BCC takes from BTF."""
    subprocess.run(["modprobe", "sch_fq"], check=True)
    spec = bus.probes.get("fq-throttle")
    compiled = compile_probe(
        spec, spec.resolve_params({}), RunOptions(quiet=True, loader=request.param)
    )
    assert compiled.loader == request.param
    yield compiled
    compiled.probe.close()


def test_fq_throttle_names_the_flow_hitting_flow_limit(
    bus: Bus, fq_loaded: Compiled, out_dir: Path
) -> None:
    trace = out_dir / f"findings-fq.{fq_loaded.loader}.tkt"
    res = quiet(
        lab_fq_throttle,
        bus,
        (f"msgpack={trace}",),
        4,
        compiled=fq_loaded,
        force=True,
        quiet=True,
    )
    text = render(res.summary.findings, "text")
    print("\n".join(text))
    by = {f.what: f for f in res.summary.findings}
    tc_thr = sum(v["throttled"] for v in res.fq_delta.values())
    tc_plimit = sum(v["flows_plimit"] for v in res.fq_delta.values())
    assert tc_plimit > 0 and tc_thr > 0, res.tc_after
    # The settings the lab gave fq (flow_limit 10, maxrate 10mbit).
    assert "flow_limit 10 packets, maxrate 10 Mbit/s" in by["settings"].text, text
    d = by["flow-limit"]
    assert d.data["flow_limit"] == 10
    assert d.data["flows"][0]["dport"] == 5201 and "hit flow_limit 10" in d.text, text
    # Every flow_limit drop, by flow, is one tc counted in flows_plimit.
    assert sum(f["count"] for f in d.data["flows"]) == tc_plimit
    # Each throttle carries its flow now: as many as tc's `throttled`, none unknown.
    t = by["throttles"]
    assert t.data["in_events"] == t.data["events"] == tc_thr, (t.data, res.fq_delta)
    assert t.data["without_flow"] == 0, text
    assert all(f["dport"] == 5201 for f in t.data["flows"]), text
    assert "empty-dequeues" in by or "empty_dequeues" not in res.tc_after
    assert replayed(bus, trace) == text
