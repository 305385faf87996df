"""Findings: computed from the data, the same for a live-like feed and its replay."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tracekit.base import kernel
from tracekit.base.findings import Finding, Findings, render
from tracekit.base.session import EventBatch, Session, Summary
from tracekit.plugin.bus import Bus, build_bus
from tracekit.plugin.contract import KernelAggregate
from tracekit.plugin.pipeline import SinkOptions
from tracekit.testing import feed
from tracekit.traces.replay import replay
from tracekit.traces.tracefile import TraceReader


def ip(s: str) -> int:
    return int(struct.unpack("<I", socket.inet_aton(s))[0])


@pytest.fixture(scope="module")
def bus() -> Bus:
    return build_bus()


def make_row(session_schema: Any, **kw: Any) -> tuple[Any, ...]:
    return tuple(kw.get(f.name, "" if f.is_str else 0) for f in session_schema.fields)


def record_and_replay(
    bus: Bus,
    tmp_path: Path,
    session: Session,
    batches: Sequence[list[tuple[Any, ...]]],
    counters: dict[str, dict[str, dict[int, int]]],
    kernel_agg: KernelAggregate | None = None,
) -> tuple[Summary, Summary, Path]:
    """The live path (a feed, as a run drives the sinks) recording a trace, and its replay."""
    path = tmp_path / f"{session.probe}.tkt"
    live = feed(
        bus, session, [f"msgpack={path}"], batches, counters=counters, kernel_agg=kernel_agg
    )
    again = replay(bus, str(path), (), SinkOptions())
    return live, again, path


def texts(summary: Summary) -> list[str]:
    return render(summary.findings, "text")


# -- txq-flip ---------------------------------------------------------------------------

XPS = {"net": {"devices": {"tk0": {"xps_cpus": {"0": "1", "1": "2", "2": "0", "3": "0"}}}}}


def txq_rows(schema: Any) -> list[tuple[Any, ...]]:
    def r(cpu: int, before: int, after: int, cause: int, sk: int, sport: int) -> tuple[Any, ...]:
        return make_row(
            schema,
            ts_ns=1,
            sk=sk,
            cpu=cpu,
            ifindex=3,
            saddr=ip("10.1.0.1"),
            daddr=ip("10.1.0.2"),
            sport=sport,
            dport=5201,
            family=2,
            queue_before=before,
            queue_after=after,
            ooo_okay=int(cause == 2),
            cause=cause,
            ifname="tk0",
            comm="iperf3",
        )

    data = 0xFFFF888012340000
    ctrl = 0xFFFF888056780000
    return (
        [r(0, 0xFFFF, 0, 1, data, 40000)]
        + [r(0, 1, 0, 2, data, 40000)] * 53
        + [r(1, 0, 1, 2, data, 40000)] * 54
        + [r(1, 0, 1, 2, ctrl, 39999)] * 3
    )


def test_txq_flip_names_the_socket_its_queues_cpus_causes_and_xps(bus: Bus, tmp_path: Path) -> None:
    spec = bus.probes.get("txq-flip")
    session = Session(probe="txq-flip", schema=spec.schema, metadata=XPS)
    rows = txq_rows(spec.schema)
    counters = {"txq_counts": {"calls": {0: 20000, 1: 300}, "changes": {0: 54, 1: 57}}}
    live, again, path = record_and_replay(bus, tmp_path, session, [rows[:40], rows[40:]], counters)
    first = live.findings[0]
    assert first.what == "socket-flips"
    assert "10.1.0.1:40000 > 10.1.0.2:5201 (iperf3)" in first.text
    assert "changed TX queue 107 times" in first.text
    assert "between queues 0 and 1" in first.text and "CPUs 0 and 1" in first.text
    assert "ooo_okay 107" in first.text
    assert "q1 -> q0 picked on cpu0: 53 (ooo_okay 53)" in first.details
    assert "q0 -> q1 picked on cpu1: 54 (ooo_okay 54)" in first.details
    assert "XPS map of tk0 for those CPUs: cpu0 -> q0; cpu1 -> q1" in first.details
    assert first.data["queues"] == [0, 1] and first.data["cpus"] == [0, 1]
    assert first.data["xps"] == {"0": [0], "1": [1]}
    # The control connection is the second socket; hints are hints.
    assert live.findings[1].data["flow"]["sport"] == 39999
    assert all(("may" in h or "consider" in h) for f in live.findings for h in f.hints)
    # The same text for the replay, computed again from the recording...
    assert texts(again) == texts(live)
    # ...whose header kept the XPS map and whose footer kept the findings.
    r = TraceReader(str(path))
    list(r.records())
    assert r.session.metadata["net"]["devices"]["tk0"]["xps_cpus"]["1"] == "2"
    assert r.footer is not None and texts(r.footer) == texts(live)
    from tracekit.traces.info import describe

    info = list(describe(str(path)))
    assert f"finding:   {first.text}" in info


def test_txq_flip_without_changes_says_so(bus: Bus) -> None:
    spec = bus.probes.get("txq-flip")
    out = feed(
        bus,
        Session(probe="txq-flip", schema=spec.schema),
        [],
        [],
        counters={"txq_counts": {"calls": {0: 500}, "changes": {0: 0}}},
    )
    assert [f.what for f in out.findings] == ["no-flips"]
    assert "no socket changed TX queue in 500 picks" in out.findings[0].text


# -- rss-cpu ----------------------------------------------------------------------------


def rss_rows(schema: Any, spread: bool) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(16):
        cpu = i % 2 if spread else 0
        rows += [
            make_row(
                schema,
                cpu=cpu,
                ifindex=7,
                hash=(0x1000 + i) if spread else 0x5A5A1234,
                saddr=ip("10.9.0.1"),
                daddr=ip("10.9.0.2"),
                len=1000,
                sport=5000 + i,
                dport=5201,
                rx_queue=cpu,
                proto=17,
                l4_hash=int(spread),
                ifname="tk1",
            )
        ] * 50
    return rows


RSS_META = {
    "net": {
        "devices": {"tk1": {"ifindex": 7, "rps_cpus": {"0": "0", "1": "0"}}},
        "rps_sock_flow_entries": 0,
    }
}


@pytest.mark.parametrize("spread", [False, True])
def test_rss_cpu_tells_a_hash_without_ports(bus: Bus, tmp_path: Path, spread: bool) -> None:
    spec = bus.probes.get("rss-cpu")
    session = Session(probe="rss-cpu", schema=spec.schema, metadata=RSS_META)
    rows = rss_rows(spec.schema, spread)
    per = {0: 400, 1: 400} if spread else {0: 800, 1: 3}
    live, again, _ = record_and_replay(
        bus, tmp_path, session, [rows], {"rss_counts": {"packets": per}}
    )
    whats = [f.what for f in live.findings]
    busiest = live.findings[0]
    if spread:
        assert whats == ["balanced"]
        assert busiest.data["balanced"] is True
    else:
        assert whats == ["one-cpu", "hash-ignores-ports"]
        assert "busiest cpu0 with 99.6% of 803 packets" in busiest.text
        assert "RX queues of tk1: q0=800" in busiest.details
        assert "RPS off on tk1 (rps_cpus 0 on its 2 RX queues)" in busiest.details
        h = live.findings[1]
        assert "16 UDP flows from 10.9.0.1 to 10.9.0.2 on tk1" in h.text
        assert "the NIC's RX hash ignores ports" in h.text
        assert "ethtool -N tk1 rx-flow-hash udp4 sdfn" in h.hints[0]
    assert texts(again) == texts(live)


def test_rss_cpu_aggregated_in_the_kernel_finds_the_same(bus: Bus) -> None:
    """With only hist the probe counts in the kernel: the hash is in its key."""
    spec = bus.probes.get("rss-cpu")
    schema = spec.schema
    rows = rss_rows(schema, spread=False)
    counts: dict[tuple[Any, ...], int] = {}
    for r in rows:
        k = tuple(r[schema.index(f)] for f in spec.agg_fields)
        counts[k] = counts.get(k, 0) + 1
    agg = KernelAggregate.from_counts(schema, spec.agg_fields, counts)
    session = Session(probe="rss-cpu", schema=schema, metadata=RSS_META)
    streamed = feed(bus, session, [], [rows], counters={"rss_counts": {"packets": {0: 800}}})
    counted = feed(
        bus, session, [], [], counters={"rss_counts": {"packets": {0: 800}}}, kernel_agg=agg
    )
    assert [f.what for f in counted.findings] == ["one-cpu", "hash-ignores-ports"]
    assert counted.findings[1].text == streamed.findings[1].text


# -- fq-throttle ------------------------------------------------------------------------


def fq_rows(schema: Any) -> list[tuple[Any, ...]]:
    def r(kind: int, sport: int = 0, delay: int = 0, q: int = 1, count: int = 1) -> Any:
        flow = (
            {"sk": 0xFFFF8880AA000000 + sport, "saddr": ip("10.2.0.1"), "daddr": ip("10.2.0.2")}
            if sport
            else {}
        )
        return make_row(
            schema,
            kind=kind,
            sport=sport,
            dport=5201 if sport else 0,
            delay_us=delay,
            queue=q,
            count=count,
            ifname="tk0",
            flow_limit=10,
            maxrate=1250000,
            **flow,
        )

    return (
        [r(1, 45962, 700)] * 90
        + [r(1, 54882, 1500, q=2)] * 60
        + [r(2, 45962, q=1)] * 40
        + [r(2, 54882, q=2)] * 10
        + [r(3)] * 300
    )


FQ_COUNTERS = {
    "fq_counts": {
        "throttled": {0: 150},
        "flow_limit_drops": {0: 50},
        "empty_dequeues": {0: 300},
        "dequeues": {0: 9000},
        "enqueues": {0: 8000},
    },
    "fq_drops": {"flow_limit": {0: 50}, "band_limit": {0: 0}, "horizon": {0: 0}},
}


def test_fq_throttle_throttles_drops_and_empty_dequeues_apart(bus: Bus, tmp_path: Path) -> None:
    spec = bus.probes.get("fq-throttle")
    session = Session(probe="fq-throttle", schema=spec.schema)
    live, again, _ = record_and_replay(bus, tmp_path, session, [fq_rows(spec.schema)], FQ_COUNTERS)
    by = {f.what: f for f in live.findings}
    assert list(by) == ["settings", "throttles", "flow-limit", "empty-dequeues"]
    assert "flow_limit 10 packets, maxrate 10 Mbit/s" in by["settings"].text
    t = by["throttles"]
    assert "fq throttled flows 150 times" in t.text and "2 flows" in t.text
    assert (
        "10.2.0.1:45962 > 10.2.0.2:5201 on tk0 q1: throttled 90 times, held median 512-1023 us"
        in t.details[0]
    )
    assert "150 throttle events, one per throttle, 150 in all" in t.details
    d = by["flow-limit"]
    assert d.text.startswith("flow 10.2.0.1:45962 > 10.2.0.2:5201 on tk0 q1 hit flow_limit 10")
    assert "40 packets dropped (of 50 flow_limit drops" in d.text
    assert "drops by the kernel's reason: flow_limit 50" in d.details
    assert "300 dequeues of 9000 returned nothing" in by["empty-dequeues"].text
    assert texts(again) == texts(live)


def test_fq_throttle_old_events_without_flow_are_explained(bus: Bus) -> None:
    """A recording of the probe before throttles carried their flow: one event per
    fq_dequeue call, its count the throttles in it."""
    spec = bus.probes.get("fq-throttle")
    schema = spec.schema
    rows = [make_row(schema, kind=1, count=2, ifname="tk0", queue=0)] * 10
    out = feed(
        bus,
        Session(probe="fq-throttle", schema=schema),
        [],
        [rows],
        counters={"fq_counts": {"throttled": {0: 20}}},
    )
    t = next(f for f in out.findings if f.what == "throttles")
    assert "10 throttle events carry 20 throttles" in " ".join(t.details)
    assert "20 throttles without their flow" in t.details


def test_fq_throttle_delay_histogram_is_per_kind(bus: Bus) -> None:
    spec = bus.probes.get("fq-throttle")
    assert spec.schema.histograms[0].by[0] == "kind"
    session = Session(probe="fq-throttle", schema=spec.schema)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        feed(bus, session, ["hist"], [fq_rows(spec.schema)], counters=FQ_COUNTERS)
    out = buf.getvalue()
    # Throttles' delays stand alone; drops and empty dequeues (no delay) apart.
    block = out.split("@throttle_delay[kind=throttle, ifname=tk0, queue=1] (us):\n")[1]
    block = block.split("\n\n")[0]
    assert "[512, 1K)" in block and "[0]" not in block
    assert "@throttle_delay[kind=empty_dequeue, ifname=tk0, queue=1] (us):" in out


# -- ooo-okay ---------------------------------------------------------------------------


def test_ooo_okay_share_rule_and_path_per_socket(bus: Bus, tmp_path: Path) -> None:
    spec = bus.probes.get("ooo-okay")
    schema = spec.schema
    paths = schema.field("path").choices
    rules = schema.field("rule").choices

    def r(ooo: int, low: int, rtx: int, path: str) -> Any:
        return make_row(
            schema,
            sk=0xFFFF1,
            saddr=ip("10.3.0.1"),
            sport=40000,
            daddr=ip("10.3.0.2"),
            dport=5201,
            ooo_okay=ooo,
            wmem_low=low,
            rtx_empty=rtx,
            path=paths.index(path),
            rule=rules.index("tcp_wmem_rtx"),
        )

    rows = (
        [r(1, 0, 1, "ack-softirq")] * 30
        + [r(1, 1, 0, "sendmsg")] * 10
        + [r(0, 0, 0, "sendmsg")] * 60
    )
    session = Session(probe="ooo-okay", schema=schema, params={"all": 1})
    counters = {
        "ooo_counts": {
            "transmitted": {0: 100},
            "ooo_okay": {0: 40},
            "wmem_low": {0: 10},
            "rtx_empty": {0: 30},
            "rule_tcp_wmem_rtx": {0: 100},
        }
    }
    live, again, _ = record_and_replay(bus, tmp_path, session, [rows], counters)
    share, sock = live.findings
    assert "ooo_okay set on 40 of 100 skbs (40.00%)" in share.text
    assert "paths of the skbs with ooo_okay: ack-softirq 30, sendmsg 10" in share.details
    assert sock.text.startswith("socket 10.3.0.1:40000 > 10.3.0.2:5201: ooo_okay on 40 skbs of 100")
    assert "retransmit queue empty 30, wmem low 10" in sock.text
    assert texts(again) == texts(live)


# -- the contract, output, trace file ---------------------------------------------------


class Broken(Findings):
    def add(self, batch: EventBatch) -> None:
        raise RuntimeError("boom")


def test_a_failing_findings_is_reported_and_the_sinks_go_on(
    bus: Bus, capsys: pytest.CaptureFixture[str]
) -> None:
    from tracekit.plugin.pipeline import Pipeline

    spec = bus.probes.get("txq-flip")
    session = Session(probe="txq-flip", schema=spec.schema)
    with Pipeline(bus, session, {}, findings=Broken) as pipe:
        pipe.batch(txq_rows(spec.schema))
        summary = pipe.end()
    assert summary.events == 111 and summary.findings == ()
    assert "findings of txq-flip failed in add and were stopped: RuntimeError: boom" in (
        capsys.readouterr().err
    )


def test_third_party_findings_through_the_contract(bus: Bus) -> None:
    """A probe's own Findings class: add sees every batch, finish the summary."""

    class Count(Findings):
        n = 0

        def add(self, batch: EventBatch) -> None:
            self.n += len(batch)

        def finish(self, summary: Summary) -> list[Finding]:
            return [Finding("mine", "count", f"{self.n} of {summary.events} events")]

    from tracekit.plugin.pipeline import Pipeline

    spec = bus.probes.get("txq-flip")
    with Pipeline(bus, Session(probe="txq-flip", schema=spec.schema), {}, findings=Count) as p:
        p.batch(txq_rows(spec.schema)[:5])
        p.batch(txq_rows(spec.schema)[:7])
        s = p.end()
    assert render(s.findings, "text") == ["finding (mine): 12 of 12 events"]


def test_replay_prints_findings_text_and_json(bus: Bus, tmp_path: Path) -> None:
    spec = bus.probes.get("txq-flip")
    session = Session(probe="txq-flip", schema=spec.schema, metadata=XPS)
    path = tmp_path / "t.tkt"
    live = feed(bus, session, [f"msgpack={path}"], [txq_rows(spec.schema)])
    cmd = [sys.executable, "-m", "tracekit", "replay", str(path), "--sink", "hist"]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    lines = [ln.removeprefix("tracekit: ") for ln in text.stderr.splitlines()]
    assert lines[-len(texts(live)) :] == texts(live)
    js = subprocess.run([*cmd, "--findings", "json"], capture_output=True, text=True, timeout=60)
    doc = json.loads(js.stderr.splitlines()[-1])
    assert doc["findings"][0]["what"] == "socket-flips"
    assert doc["findings"][0]["data"]["cpus"] == [0, 1]
    off = subprocess.run([*cmd, "--findings", "off"], capture_output=True, text=True, timeout=60)
    assert "finding" not in off.stderr


def test_a_forged_header_metadata_or_footer_finding_is_one_line(tmp_path: Path) -> None:
    from tracekit.traces.checks import Invalid, check_finding, check_plain

    assert check_plain({"a": (1, "x", {"b": None})}, "m", want_map=True) == {
        "a": [1, "x", {"b": None}]
    }
    with pytest.raises(Invalid, match="expected a map"):
        check_plain([1], "header.metadata", want_map=True)
    with pytest.raises(Invalid, match="nested deeper"):
        deep: Any = 1
        for _ in range(10):
            deep = {"x": deep}
        check_plain(deep, "header.metadata", want_map=True)
    with pytest.raises(Invalid, match="text"):
        check_finding({"probe": "p", "what": "w", "text": 3}, "footer.findings[0]")
    with pytest.raises(Invalid, match="expected plain data"):
        check_plain({"a": b"bytes"}, "m", want_map=True)
    assert msgpack  # the reader decodes arrays as tuples: check_plain takes those


def test_queue_maps_are_read_the_same_from_sysfs_and_from_a_namespace() -> None:
    text = (
        "/sys/class/net/tk0/ifindex:5\n"
        "/sys/class/net/tk0/queues/tx-0/xps_cpus:00000001\n"
        "/sys/class/net/tk0/queues/tx-1/xps_cpus:00000002\n"
        "/sys/class/net/tk1/queues/rx-0/rps_cpus:3\n"
        "/sys/class/net/tk1/queues/rx-0/rps_flow_cnt:0\n"
        "/proc/sys/net/core/rps_sock_flow_entries:0\n"
        "garbage\n"
    )
    got = kernel.parse_queue_lines(text)
    assert got == {
        "devices": {
            "tk0": {"ifindex": 5, "xps_cpus": {"0": "00000001", "1": "00000002"}},
            "tk1": {"rps_cpus": {"0": "3"}, "rps_flow_cnt": {"0": "0"}},
        },
        "rps_sock_flow_entries": 0,
    }
    here = kernel.net_queues()
    assert "lo" in here["devices"]  # type: ignore[operator]


class FakeBtf:
    """Members by (struct, member) -> (offset, size); struct sizes."""

    def __init__(self, members: dict[tuple[str, str], tuple[int, int]], sizes: dict[str, int]):
        self.members, self.sizes = members, sizes

    def member(self, struct: str, member: str) -> tuple[int, int]:
        from tracekit.base.errors import TracekitError

        if (struct, member) not in self.members:
            raise TracekitError(f"struct {struct} has no member {member}")
        return self.members[(struct, member)]

    def find_struct(self, name: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(size_or_type=self.sizes[name])


def test_fq_flow_lists_before_and_with_bands() -> None:
    """The lists fq throttles flows from: new and old (6.1), per band (6.8+)."""
    from tracekit.probes.fq_throttle import flow_lists

    old = FakeBtf(
        {
            ("fq_flow_head", "first"): (0, 8),
            ("fq_sched_data", "new_flows"): (16, 16),
            ("fq_sched_data", "old_flows"): (32, 16),
        },
        {},
    )
    assert flow_lists(old) == [16, 32]
    bands = FakeBtf(
        {
            ("fq_flow_head", "first"): (0, 8),
            ("fq_sched_data", "band_flows"): (64, 3 * 40),
            ("fq_perband_flows", "new_flows"): (0, 16),
            ("fq_perband_flows", "old_flows"): (16, 16),
        },
        {"fq_perband_flows": 40},
    )
    assert flow_lists(bands) == [64, 80, 104, 120, 144, 160]


# -- the real recordings of examples/traces/ ----------------------------------------------

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "traces"


def sample(bus: Bus, name: str) -> tuple[Summary, TraceReader]:
    path = SAMPLES / name
    r = TraceReader(str(path))
    list(r.records())
    assert r.footer is not None
    return replay(bus, str(path), (), SinkOptions()), r


def test_sample_txq_flip_findings_add_up_to_the_kernels_counter(bus: Bus) -> None:
    s, r = sample(bus, "txq-flip.tkt")
    flips = [f for f in s.findings if f.what == "socket-flips"]
    top = flips[0]
    assert top.data["flow"]["dport"] == 5201 and top.data["comm"] == "iperf3"
    assert top.data["queues"] == [0, 1] and top.data["cpus"] == [0, 1]
    # Every change the kernel counted is a socket's move or a first pick.
    assert r.footer is not None
    changes = sum(r.footer.counters["txq_counts"]["changes"].values())
    firsts = changes - sum(f.data["changes"] for f in flips)
    assert 0 <= firsts <= len(flips) + 2, (changes, [f.data["changes"] for f in flips])
    # Recorded before the header kept the XPS map: said, not guessed.
    assert "XPS map of tk0: not recorded (read at run time from sysfs)" in top.details
    assert texts(sample(bus, "txq-flip.tkt")[0]) == texts(s)


def test_sample_rss_cpu_names_the_busy_cpu_and_the_hash_without_ports(bus: Bus) -> None:
    s, r = sample(bus, "rss-cpu.tkt")
    by = {f.what: f for f in s.findings}
    # The lab's figures (examples/traces/README.md): NIC RX queue q1=1020, cpu1.
    assert by["one-cpu"].data["busiest_cpu"] == 1
    assert by["one-cpu"].data["rx_queues"]["tk1"] == {"1": 1020}
    h = by["hash-ignores-ports"]
    assert (h.data["ifname"], h.data["flows"], h.data["rx_queues"]) == ("tk1", 8, [1])
    assert r.footer is not None
    assert by["one-cpu"].data["packets"] == sum(r.footer.counters["rss_counts"]["packets"].values())


def test_sample_fq_throttle_drops_by_flow_add_up_to_tc(bus: Bus) -> None:
    s, _ = sample(bus, "fq-throttle.tkt")
    by = {f.what: f for f in s.findings}
    # tc -s qdisc said throttled 151, flows_plimit 350 (examples/traces/README.md).
    assert by["throttles"].data["throttled"] == 151
    assert sum(f["count"] for f in by["flow-limit"].data["flows"]) == 350
    assert by["flow-limit"].data["flows"][0]["dport"] == 5201
    # A recording made before throttles carried their flow says so.
    assert by["throttles"].data["without_flow"] == 151
    assert "which flows is not in this data" in by["throttles"].text


@pytest.mark.parametrize("name", ["ooo-okay.unlimited.tkt", "ooo-okay.limited.tkt"])
def test_sample_ooo_okay_share_is_the_footers(bus: Bus, name: str) -> None:
    s, r = sample(bus, name)
    assert r.footer is not None
    c = {k: sum(v.values()) for k, v in r.footer.counters["ooo_counts"].items()}
    share = s.findings[0]
    assert (share.data["ooo_okay"], share.data["transmitted"]) == (c["ooo_okay"], c["transmitted"])
    # The sockets' flags are the events' (the probe streamed the flagged skbs).
    socks = [f for f in s.findings if f.what == "socket"]
    assert socks and all(
        f.data["flow"]["dport"] == 5201 or f.data["flow"]["sport"] == 5201 for f in socks
    )
