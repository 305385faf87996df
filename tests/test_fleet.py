"""tracekit export, tracekit plot and the prometheus sink, on recorded traces.

The traces are synthetic but recorded through the live pipeline with the hist sink
beside (tests/fleet_data.py), so every count is checked against what hist printed
for the same events.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import fleet_data
import pytest

from tracekit.base.errors import UsageError
from tracekit.base.hist import Histogram
from tracekit.base.session import LostReport, Session
from tracekit.fleet.export import export
from tracekit.plugin.bus import Bus, build_bus
from tracekit.plugin.pipeline import Pipeline

duckdb = pytest.importorskip("duckdb")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("matplotlib")
prom_parser = pytest.importorskip("prometheus_client.parser")

TRACEKIT = [sys.executable, "-m", "tracekit"]
PROBES = tuple(fleet_data.GENERATORS)


def tk(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRACEKIT, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bus() -> Bus:
    return build_bus()


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory, bus: Bus) -> dict[str, tuple[Path, str]]:
    """probe -> (trace recorded on host lab-a, what the hist sink printed for it)."""
    d = tmp_path_factory.mktemp("traces")
    out = {}
    for probe in PROBES:
        p = d / f"{probe}.tkt"
        out[probe] = (p, fleet_data.record(bus, probe, p))
    return out


# -- export -------------------------------------------------------------------------


def test_parquet_counts_equal_what_hist_printed(
    traces: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    path, printed = traces["txq-flip"]
    hist = fleet_data.hist_counts(printed)
    out = tmp_path / "txq.parquet"
    result = export((str(path),), "parquet", str(out))
    rows = duckdb.sql(
        f"SELECT cpu, queue_before, queue_after, count(*) FROM '{out}' GROUP BY ALL"
    ).fetchall()
    got = {}
    for cpu, before, after, n in rows:
        key = f"[cpu={cpu}, queue_before={'none' if before == 0xFFFF else before}]"
        got.setdefault(("queue_after", key), {})[f"[{after}, {after + 1})"] = n
    want = {k: v for k, v in hist.items() if k[0] == "queue_after"}
    assert got == want and sum(map(sum, (v.values() for v in got.values()))) == result.events

    path, printed = traces["rss-cpu"]
    hist = fleet_data.hist_counts(printed)
    out = tmp_path / "rss.parquet"
    export((str(path),), "parquet", str(out))
    per_cpu = dict(duckdb.sql(f"SELECT cpu, count(*) FROM '{out}' GROUP BY cpu").fetchall())
    assert {f"[cpu={c}]": n for c, n in per_cpu.items()} == {
        k: v[""] for (name, k), v in hist.items() if name == "rx_packets"
    }
    # The kernel's own counter, printed by hist, equals the events (nothing sampled).
    assert sum(per_cpu.values()) == int(re.search(r"rss_counts.packets: total=(\d+)", printed)[1])


def test_exports_of_several_hosts_concatenate_with_typed_columns(
    traces: dict[str, tuple[Path, str]], tmp_path: Path, bus: Bus
) -> None:
    a = traces["txq-flip"][0]
    b = tmp_path / "b.tkt"
    fleet_data.record(bus, "txq-flip", b, hostname="lab-b", start_time=1_760_000_600.0)
    out = tmp_path / "fleet.parquet"
    export((str(a), str(b)), "parquet", str(out))
    schema = pq.read_schema(out)
    assert schema.field("sk").type == pa.uint64()
    assert schema.field("queue_after").type == pa.uint16()
    assert schema.field("ifname").type == pa.string()
    assert schema.field("start_time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("ooo_okay").metadata[b"display"] == b"bool"
    per_host = dict(
        duckdb.sql(f"SELECT host, count(*) FROM '{out}' GROUP BY host ORDER BY host").fetchall()
    )
    n = len(fleet_data.txq_flip_rows(bus.probes.get("txq-flip").schema))
    assert per_host == {"lab-a": n, "lab-b": n}
    # Kernel pointers above 2^63 survive as unsigned 64-bit integers.
    top = duckdb.sql(f"SELECT max(sk), any_value(params->>'ifindex') FROM '{out}'").fetchall()[0]
    assert top == (0xFFFF8880_0A1B_4E00, "0")
    starts = duckdb.sql(f"SELECT DISTINCT epoch(start_time) FROM '{out}' ORDER BY 1").fetchall()
    assert [s for (s,) in starts] == [1_760_000_000.0, 1_760_000_600.0]
    runs = pq.read_metadata(out).metadata[b"tracekit.runs"]
    assert b'"txq_counts"' in runs and b'"lab-b"' in runs


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl_hold_the_same_rows(
    traces: dict[str, tuple[Path, str]], tmp_path: Path, fmt: str
) -> None:
    path = traces["fq-throttle"][0]
    pq_out, out = tmp_path / "x.parquet", tmp_path / f"x.{fmt}"
    export((str(path),), "parquet", str(pq_out))
    export((str(path),), fmt, str(out), host="renamed")
    q = (
        "SELECT kind, sum(count), count(*), min(host), max(host) FROM {} "
        "GROUP BY kind ORDER BY kind"
    )
    want = duckdb.sql(q.format(f"'{pq_out}'")).fetchall()
    got = duckdb.sql(q.format(f"'{out}'")).fetchall()
    assert [r[:3] for r in got] == [r[:3] for r in want] and len(want) == 3
    assert {r[3] for r in got} == {"renamed"} and {r[3] for r in want} == {"lab-a"}


def test_export_refusals_are_one_line(traces: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    r = tk(
        "export", str(traces["txq-flip"][0]), str(traces["rss-cpu"][0]), "--to", "parquet", str(out)
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "its own file" in r.stderr
    assert not out.exists() and not Path(f"{out}.part").exists()
    out.write_text("x")
    r = tk("export", str(traces["txq-flip"][0]), "--to", "csv", str(out))
    assert r.returncode == 2 and "--force" in r.stderr and out.read_text() == "x"
    r = tk("export", str(tmp_path / "missing.tkt"), "--to", "csv", str(tmp_path / "m.csv"))
    assert r.returncode == 2 and r.stderr.startswith("tracekit: ") and "Traceback" not in r.stderr


def test_export_escapes_host_names_for_the_terminal(tmp_path: Path, bus: Bus) -> None:
    p = tmp_path / "evil.tkt"
    fleet_data.record(bus, "fq-throttle", p, hostname="h\x1b]0;owned\x07x")
    r = tk("export", str(p), "--to", "jsonl", str(tmp_path / "e.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and "h\\x1b]0;owned\\x07x" in r.stderr


def test_a_trace_cut_short_exports_what_it_has(
    traces: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    src = traces["rss-cpu"][0].read_bytes()
    cut = tmp_path / "cut.tkt"
    cut.write_bytes(src[: len(src) // 2])
    out = tmp_path / "cut.parquet"
    r = tk("export", str(cut), "--to", "parquet", str(out))
    assert r.returncode == 0, r.stderr
    assert "ends early" in r.stderr
    n = duckdb.sql(f"SELECT count(*) FROM '{out}'").fetchall()[0][0]
    assert 0 < n < 40_000 and n % 4096 == 0  # whole batches only


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("pyarrow", ["export", "{trace}", "--to", "parquet", "{tmp}/x.parquet"]),
        ("matplotlib", ["plot", "{trace}", "-o", "{tmp}/x.png"]),
    ],
)
def test_without_the_extra_the_command_says_what_to_install(
    traces: dict[str, tuple[Path, str]], tmp_path: Path, module: str, args: list[str]
) -> None:
    argv = [a.format(trace=traces["txq-flip"][0], tmp=tmp_path) for a in args]
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from tracekit.cli.main import main\n"
        f"main({argv!r})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 13, r.stderr
    assert r.stderr.count("\n") == 1 and "tracekit-ebpf[fleet]" in r.stderr, r.stderr


def test_the_prometheus_sink_needs_no_extra(traces: dict[str, tuple[Path, str]]) -> None:
    """It writes the exposition format itself: prometheus_client is not needed."""
    argv = ["replay", str(traces["txq-flip"][0]), "--sink", "prometheus=127.0.0.1:0"]
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from tracekit.cli.main import main\n"
        f"main({argv!r})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "serving metrics on http://127.0.0.1:" in r.stderr


# -- plot ---------------------------------------------------------------------------


@pytest.mark.parametrize("probe", PROBES)
def test_each_probe_plot_renders(
    traces: dict[str, tuple[Path, str]], tmp_path: Path, probe: str
) -> None:
    out = tmp_path / f"{probe}.png"
    r = tk("plot", str(traces[probe][0]), "-o", str(out))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_rss_cpu_plot_draws_every_packet_on_its_cpu(
    traces: dict[str, tuple[Path, str]], bus: Bus
) -> None:
    from tracekit.fleet.plot import Trace

    trace = Trace(str(traces["rss-cpu"][0]))
    fig = bus.probes.get("rss-cpu").plot(trace)
    width = trace.span().bins()[0]
    top = fig.axes[0]
    drawn = {p.get_label(): sum(p.get_data().values) * width for p in top.patches}
    printed = fleet_data.hist_counts(fleet_data.record(bus, "rss-cpu", Path(trace.path)))
    want = {
        f"cpu{fleet_data.key_values(k)['cpu']}": v[""]
        for (name, k), v in printed.items()
        if name == "rx_packets"
    }
    assert drawn.keys() == want.keys()
    for cpu, n in want.items():
        assert drawn[cpu] == pytest.approx(n)


def test_txq_flip_plot_marks_every_flip_of_the_sockets_it_draws(
    traces: dict[str, tuple[Path, str]], bus: Bus
) -> None:
    from tracekit.fleet.plot import Trace

    trace = Trace(str(traces["txq-flip"][0]))
    fig = bus.probes.get("txq-flip").plot(trace)
    marks = sum(len(c.get_offsets()) for ax in fig.axes for c in ax.collections)
    assert marks == len(fleet_data.txq_flip_rows(bus.probes.get("txq-flip").schema))


def test_a_plugin_adds_a_plot_and_svg_works(
    traces: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    from tracekit import hookimpl
    from tracekit.fleet.plot import new_figure, render
    from tracekit.plugin.registry import PlotRegistry, PlotSpec

    def events_per_second(trace: Any) -> Any:
        fig = new_figure(1)
        fig.axes[0].set_title(f"{trace.span().events} events")
        return fig

    class Plugin:
        @hookimpl
        def tracekit_register_plots(self, registry: PlotRegistry) -> None:
            registry.add(PlotSpec("rate", "fq-throttle", "events per second", events_per_second))

    b = build_bus(extra_plugins=(("rate-plot", Plugin()),))
    out = tmp_path / "rate.svg"
    assert render(str(traces["fq-throttle"][0]), str(out), "rate", bus=b) == "rate"
    n = len(fleet_data.fq_throttle_rows(b.probes.get("fq-throttle").schema))
    assert out.read_text().startswith("<?xml") and f"{n} events" in out.read_text()
    with pytest.raises(UsageError, match="plots: fq-throttle, rate"):
        render(str(traces["fq-throttle"][0]), str(out), "nope", bus=b)
    with pytest.raises(UsageError, match="must end in"):
        render(str(traces["fq-throttle"][0]), str(tmp_path / "x.gif"), bus=b)


# -- prometheus ---------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _session(bus: Bus, probe: str) -> Session:
    return Session(
        probe=probe,
        schema=bus.probes.get(probe).schema,
        params={"all": 1},
        kernel="6.1.0-lab",
        ncpus=4,
        hostname="lab-a",
    )


def test_prometheus_serves_while_running_and_matches_hist(bus: Bus) -> None:
    from tracekit.plugins.prometheus_sink import PrometheusSink

    session = _session(bus, "fq-throttle")
    rows = fleet_data.fq_throttle_rows(session.schema)
    sink = PrometheusSink("127.0.0.1:0")
    with Pipeline(bus, session, {"sink:prometheus": sink}) as pipe:
        pipe.batch(rows[:500])
        first = scrape(sink.port)
        assert first[("tracekit_events_total", ())] == 500
        assert first[("tracekit_run_ended", ())] == 0  # values still moving
        pipe.batch(rows[500:])
        pipe.lost(LostReport("perf", {1: 7}))
        pipe.counters({"fq_counts": {"throttled": {0: 11, 1: 4}}})
        live = scrape(sink.port)
        pipe.end()
    assert sink.server is None  # stopped when the session ended
    assert live[("tracekit_events_total", ())] == len(rows)
    assert live[("tracekit_lost_events_total", (("cpu", "1"), ("mechanism", "perf")))] == 7
    key = (
        "tracekit_kernel_counter_total",
        (("counter", "throttled"), ("cpu", "1"), ("map", "fq_counts")),
    )
    assert live[key] == 4
    info = [k for k in live if k[0] == "tracekit_run_info"]
    assert dict(info[0][1])["probe"] == "fq-throttle" and dict(info[0][1])["params"] == "all=1"
    # The delay histogram: every hist bucket as an le bucket, cumulative, plus sum and count.
    h = Histogram(session.schema.histograms[0], session.schema)
    h.add_rows(rows)
    ti = session.schema.index("delay_us")
    kinds = session.schema.field("kind").choices
    ki = session.schema.index("kind")
    for (kind, ifname, queue), buckets in h.data.items():
        labels = (("ifname", ifname), ("kind", kinds[kind]), ("queue", str(queue)))
        cum = 0
        for b in range(max(buckets) + 1):
            cum += buckets.get(b, 0)
            le = str((1 << b) - 1)
            got = live[
                (
                    "tracekit_fq_throttle_throttle_delay_us_bucket",
                    tuple(sorted((*labels, ("le", le)))),
                )
            ]
            assert got == cum, (labels, le)
        assert live[("tracekit_fq_throttle_throttle_delay_us_count", labels)] == cum
        want_sum = sum(
            r[ti]
            for r in rows
            if (r[ki], r[-1], r[session.schema.index("queue")]) == (kind, ifname, queue)
        )
        assert live[("tracekit_fq_throttle_throttle_delay_us_sum", labels)] == want_sum


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_replay_into_prometheus_scraped_over_http_equals_hist(
    traces: dict[str, tuple[Path, str]],
) -> None:
    path, printed = traces["txq-flip"]
    port = _free_port()
    proc = subprocess.Popen(
        [*TRACEKIT, "replay", str(path), "--sink", f"prometheus=127.0.0.1:{port},hold=600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        got = None
        while time.monotonic() < deadline:
            try:
                got = scrape(port)
                if got.get(("tracekit_run_ended", ())) == 1:
                    break  # the session ended: the footer's counters are in
            except OSError:
                pass
            time.sleep(0.2)
        assert got is not None and got[("tracekit_run_ended", ())] == 1
    finally:
        # SIGTERM ends the hold (600 s), and the replay ends well. No speed is claimed:
        # a hold SIGTERM did not end would outlast communicate's timeout five times over.
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    hist = fleet_data.hist_counts(printed)
    for (name, key), buckets in hist.items():
        if name != "queue_after":
            continue
        kv = fleet_data.key_values(key)
        labels = (("cpu", kv["cpu"]), ("queue_before", kv["queue_before"]))
        total = sum(buckets.values())
        assert got[("tracekit_txq_flip_queue_after_count", labels)] == total
        for label, n in buckets.items():
            lo = int(label[1:].split(",")[0])  # [q, q+1) -> le q, cumulative
            below = sum(v for lb, v in buckets.items() if int(lb[1:].split(",")[0]) < lo)
            lkey = tuple(sorted((*labels, ("le", str(lo)))))
            assert got[("tracekit_txq_flip_queue_after_bucket", lkey)] == below + n
    calls = int(re.search(r"txq_counts.calls: total=(\d+)", printed)[1])
    served = sum(
        v
        for (n, lb), v in got.items()
        if n == "tracekit_kernel_counter_total" and ("counter", "calls") in lb
    )
    assert served == calls


def test_labels_stay_bounded_and_memory_flat(bus: Bus) -> None:
    import tracemalloc

    from tracekit.plugins.prometheus_sink import PrometheusSink
    from tracekit.testing import synthetic_rows

    session = _session(bus, "rss-cpu")
    sink = PrometheusSink("127.0.0.1:0")
    ai = session.schema.index("saddr")

    def batch(i: int) -> list[tuple[Any, ...]]:
        # A new source address in every row: one series per flow would grow forever.
        rows = synthetic_rows(session.schema, 2000, seed=i)
        return [(*r[:ai], i * 2000 + j, *r[ai + 1 :]) for j, r in enumerate(rows)]

    with Pipeline(bus, session, {"sink:prometheus": sink}) as pipe:
        for i in range(5):
            pipe.batch(batch(i))
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for i in range(5, 40):
            pipe.batch(batch(i))
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        got = scrape(sink.port)
        pipe.end()
    flow = {lb for n, lb in got if n == "tracekit_rss_cpu_flow_cpu_total"}
    assert flow == {(("cpu", str(c)),) for c in range(4)}  # cpu only, no addresses
    assert got[("tracekit_events_total", ())] == 80_000
    assert grown < 200_000, grown  # 70k events later, no per-flow state kept

    wide = PrometheusSink("127.0.0.1:0,labels=all")
    with Pipeline(bus, session, {"sink:prometheus": wide}) as pipe:
        pipe.batch(batch(0))
        got = scrape(wide.port)
        pipe.end()
    flows = [lb for n, lb in got if n == "tracekit_rss_cpu_flow_cpu_total"]
    assert len(flows) > 100 and all(dict(lb).keys() >= {"saddr", "sport", "cpu"} for lb in flows)


def test_prometheus_refusals(traces: dict[str, tuple[Path, str]]) -> None:
    trace = str(traces["txq-flip"][0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = tk("replay", trace, "--sink", f"prometheus=127.0.0.1:{port}")
        assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "in use" in r.stderr
    for bad in (
        "prometheus=9435",
        "prometheus=127.0.0.1:x",
        "prometheus=:1,hold=-1",
        "prometheus=labels=x",
    ):
        r = tk("replay", trace, "--sink", bad)
        assert r.returncode == 2 and r.stderr.startswith("tracekit: --sink prometheus"), (
            bad,
            r.stderr,
        )


def test_docs_list_each_probe_metrics_and_labels(bus: Bus) -> None:
    from tracekit.plugins.prometheus_sink import describe

    doc = (Path(__file__).resolve().parents[1] / "docs" / "prometheus.md").read_text()
    for spec in bus.probes:
        if spec.name not in fleet_data.GENERATORS:
            continue
        for name, kind, labels in describe(spec.schema, spec.name):
            assert f"| `{name}` | {kind} | {labels or '-'} |" in doc, name
