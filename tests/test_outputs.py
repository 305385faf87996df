"""Every output true (issue 24, item 4): help, export, JSON, headings, replay, new."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.base.schema import Schema
from tracekit.base.session import Session
from tracekit.plugin.contract import KernelAggregate
from tracekit.testing import feed

TRACEKIT = [sys.executable, "-m", "tracekit"]


def tk(*args: str, cwd: Path | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRACEKIT, *args], capture_output=True, text=True, timeout=120, cwd=cwd, **kw
    )


# -- help ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        ((), "Usage: tracekit [OPTIONS] COMMAND"),
        (("lab",), "Usage: tracekit lab [OPTIONS] COMMAND"),
        (("new",), "Usage: tracekit new [OPTIONS] {probe|sink} NAME"),
    ],
)
def test_bare_commands_print_their_help_readably(args: tuple[str, ...], usage: str) -> None:
    r = tk(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(usage + " ") or r.stdout.startswith(usage + "\n")
    assert "\\x0a" not in r.stdout + r.stderr
    # The same text --help prints.
    assert r.stdout == tk(*args, "--help").stdout


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("run",),
        ("replay",),
        ("export",),
        ("plot",),
        ("new",),
        ("info",),
        ("lab",),
        ("lab", "txq-flip"),
        ("lab", "rss-cpu"),
    ],
)
def test_help_has_examples(args: tuple[str, ...]) -> None:
    r = tk(*args, "--help")
    assert r.returncode == 0, r.stderr
    _, sep, ex = r.stdout.partition("Examples:\n")
    assert sep, r.stdout
    lines = [ln.strip() for ln in ex.splitlines() if ln.strip()]
    assert lines and all(ln.startswith(("tracekit", "sudo tracekit", "pip", "#")) for ln in lines)


def test_a_click_error_is_one_line() -> None:
    r = tk("new", "bogus", "x")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "\\x0" not in r.stderr, r.stderr


# -- tracekit new ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "why"),
    [
        ("sink", "hist", "sink 'hist' exists already"),
        ("sink", "console", "sink 'console' exists already"),
        ("probe", "txq-flip", "probe 'txq-flip' exists already"),
        ("probe", "lab", "a plugin named 'lab'"),
    ],
)
def test_new_refuses_a_name_that_is_taken(tmp_path: Path, kind: str, name: str, why: str) -> None:
    r = tk("new", kind, name, cwd=tmp_path)
    assert r.returncode == 2 and why in r.stderr, r.stderr
    assert r.stderr.startswith("tracekit: ") and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_new_says_pip_install_of_the_folder(tmp_path: Path) -> None:
    r = tk("new", "sink", "statsd-x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pip install ./tracekit-statsd-x," in r.stdout
    assert (tmp_path / "tracekit-statsd-x" / "pyproject.toml").is_file()


# -- export ------------------------------------------------------------------------------


def _rss_session(**kw: object) -> Session:
    from tracekit.plugin.bus import build_bus

    spec = build_bus(load_entry_points=False).probes.get("rss-cpu")
    base: dict[str, object] = {
        "probe": "rss-cpu",
        "schema": spec.schema,
        "kernel": "6.1.0-test",
        "ncpus": 2,
        "hostname": "lab-a",
        "start_time": 1_760_000_000.0,
    }
    return Session(**{**base, **kw})  # type: ignore[arg-type]


def _rss_rows(schema: Schema, n: int) -> list[tuple[object, ...]]:
    from tracekit.testing import synthetic_rows

    return synthetic_rows(schema, n, seed=3)


def _agg(schema: Schema, rows: list[tuple[object, ...]]) -> KernelAggregate:
    from collections import Counter

    fields = ("cpu", "rx_queue")
    idx = [schema.index(f) for f in fields]
    return KernelAggregate.from_counts(
        schema, fields, Counter(tuple(r[i] for i in idx) for r in rows)
    )


def _record(path: Path, session: Session, batches: list, agg: KernelAggregate | None) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        feed(None, session, [f"msgpack={path}"], batches, kernel_agg=agg, force=True)


def test_export_takes_a_trace_that_streamed_and_counted_in_the_kernel(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")  # the fleet extra
    import duckdb

    session = _rss_session()
    rows = _rss_rows(session.schema, 3000)
    trace = tmp_path / "both.tkt"
    _record(trace, session, [rows[:1000], rows[1000:]], _agg(session.schema, rows))
    out = tmp_path / "both.parquet"
    r = tk("export", str(trace), "--to", "parquet", str(out))
    assert r.returncode == 0, r.stderr
    assert "exported 3000 events from 1 trace" in r.stderr
    got = duckdb.sql(f"SELECT cpu, sport, count(*) FROM '{out}' GROUP BY ALL").fetchall()
    from collections import Counter

    ci, pi = session.schema.index("cpu"), session.schema.index("sport")
    assert {(c, p): n for c, p, n in got} == Counter((r[ci], r[pi]) for r in rows)


def test_export_of_a_kernel_counted_trace_is_its_aggregate_table(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")  # the fleet extra
    import duckdb
    import pyarrow.parquet as pq

    session = _rss_session()
    rows = _rss_rows(session.schema, 2000)
    agg = _agg(session.schema, rows)
    trace = tmp_path / "agg.tkt"
    _record(trace, session, [], agg)
    out = tmp_path / "agg.parquet"
    r = tk("export", str(trace), "--to", "parquet", str(out))
    assert r.returncode == 0, r.stderr
    assert "exported 2000 kernel-counted events as their aggregate table" in r.stderr
    names = pq.read_schema(out).names
    assert names[:3] == ["cpu", "rx_queue", "count"] and "host" in names and "ts_ns" not in names
    got = duckdb.sql(f"SELECT cpu, rx_queue, count FROM '{out}'").fetchall()
    want = {
        (row[session.schema.index("cpu")], row[session.schema.index("rx_queue")]): n
        for row, n in agg.rows
    }
    assert {(c, q): n for c, q, n in got} == want and sum(want.values()) == 2000
    # JSON lines too, through standard output.
    r = tk("export", str(trace), "--to", "jsonl", "-")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert {(o["cpu"], o["rx_queue"]): o["count"] for o in objs} == want


def test_export_refuses_to_mix_streamed_and_counted_traces(tmp_path: Path) -> None:
    session = _rss_session()
    rows = _rss_rows(session.schema, 100)
    a, b = tmp_path / "a.tkt", tmp_path / "b.tkt"
    _record(a, session, [rows], None)
    _record(b, session, [], _agg(session.schema, rows))
    r = tk("export", str(a), str(b), "--to", "jsonl", str(tmp_path / "x.jsonl"))
    assert r.returncode == 2 and "export them to separate files" in r.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_an_older_trace_that_streamed_and_counted_exports_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traces from before the header said ``streamed``: the batches tell."""
    session = _rss_session()
    rows = _rss_rows(session.schema, 500)
    trace = tmp_path / "old.tkt"
    old_header = Session.header

    def header(self: Session) -> dict[str, object]:
        h = old_header(self)
        del h["streamed"]
        return h

    monkeypatch.setattr(Session, "header", header)
    _record(trace, session, [rows], _agg(session.schema, rows))
    monkeypatch.undo()
    from tracekit.traces.tracefile import TraceReader

    assert not TraceReader(str(trace)).streamed_known
    r = tk("export", str(trace), "--to", "jsonl", "-")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 500
    r = tk("replay", str(trace), "--sink", "hist=len,by=cpu")
    assert r.returncode == 0, r.stderr
    assert "holds streamed events, and counts the kernel kept by cpu, rx_queue" in r.stderr
    assert "@len[cpu=" in r.stdout


def test_replay_of_a_kernel_counted_trace_says_so_and_gives_no_live_advice(
    tmp_path: Path,
) -> None:
    session = _rss_session()
    rows = _rss_rows(session.schema, 100)
    trace = tmp_path / "agg.tkt"
    _record(trace, session, [], _agg(session.schema, rows))
    r = tk("replay", str(trace), "--sink", "hist=count,by=cpu")
    assert r.returncode == 0, r.stderr
    assert "holds counts the kernel kept by cpu, rx_queue (no single events)" in r.stderr
    assert "# counted in the kernel by cpu, rx_queue\n" in r.stdout
    r = tk("replay", str(trace), "--sink", "hist=len")
    assert r.returncode != 0
    assert "this trace holds only the counts the kernel kept by cpu, rx_queue" in r.stderr
    assert "add a streaming sink" not in r.stderr
    info = tk("info", str(trace))
    assert "holds:     counts the kernel kept by cpu, rx_queue (no single events)" in info.stdout


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    session = _rss_session()
    trace = tmp_path / "in.tkt"
    _record(trace, session, [_rss_rows(session.schema, 200)], None)
    return trace


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_never_overwrites_its_input(small_trace: Path, fmt: str) -> None:
    before = small_trace.read_bytes()
    link = small_trace.with_name("hard.tkt")
    os.link(small_trace, link)
    for out in (small_trace, link, Path(f"{small_trace.parent}/./in.tkt")):
        r = tk("export", str(small_trace), "--to", fmt, str(out), "--force")
        assert r.returncode == 2 and "is one of the traces being exported" in r.stderr, r.stderr
    assert small_trace.read_bytes() == before
    assert sorted(p.name for p in small_trace.parent.iterdir()) == ["hard.tkt", "in.tkt"]


def test_export_replaces_no_symlink_and_no_device(small_trace: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.jsonl"
    target.write_text("keep\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    for out in (link, Path("/dev/null"), tmp_path):
        r = tk("export", str(small_trace), "--to", "jsonl", str(out), "--force")
        assert r.returncode == 2, (out, r.stderr)
        assert any(w in r.stderr for w in ("symbolic link", "not a regular", "directory")), r.stderr
    assert link.is_symlink() and target.read_text() == "keep\n"
    assert os.path.exists("/dev/null") and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    # A dangling link is no more replaced than any other.
    target.unlink()
    r = tk("export", str(small_trace), "--to", "jsonl", str(link), "--force")
    assert r.returncode == 2 and link.is_symlink() and not target.exists()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_dash_writes_to_stdout(small_trace: Path, tmp_path: Path, fmt: str) -> None:
    pytest.importorskip("pyarrow")  # the fleet extra
    proc = subprocess.run(
        [*TRACEKIT, "export", str(small_trace), "--to", fmt, "-"],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"to - in" in proc.stderr  # the summary stays on stderr
    file = tmp_path / f"file.{fmt}"
    r = tk("export", str(small_trace), "--to", fmt, str(file))
    assert r.returncode == 0, r.stderr
    if fmt == "parquet":
        import io

        import pyarrow.parquet as pq

        a, b = pq.read_table(io.BytesIO(proc.stdout)), pq.read_table(file)
        assert a.num_rows == 200 and a.equals(b)
    else:
        assert proc.stdout == file.read_bytes() and proc.stdout.count(b"\n") >= 200
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_export_leaves_nothing(small_trace: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tkt"
    data = small_trace.read_bytes()
    cut.write_bytes(data[:20] + bytes([data[20] ^ 0xFF]) + data[21:])
    out = tmp_path / "out.parquet"
    out.write_text("old\n")
    r = tk("export", str(cut), "--to", "parquet", str(out), "--force")
    assert r.returncode != 0 and out.read_text() == "old\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file


# -- console: JSON values, headings, --time ------------------------------------------------


@pytest.fixture
def rss_trace(tmp_path: Path) -> tuple[Path, Session, list[tuple[object, ...]]]:
    session = _rss_session()
    rows = sorted(_rss_rows(session.schema, 50), key=lambda r: r[0])
    trace = tmp_path / "rss.tkt"
    _record(trace, session, [rows], None)
    return trace, session, rows


def test_console_json_carries_values(
    rss_trace: tuple[Path, Session, list[tuple[object, ...]]],
) -> None:
    import ipaddress

    trace, session, rows = rss_trace
    r = tk("replay", str(trace), "--sink", "console=json")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(x) for x in r.stdout.splitlines()][:-1]
    assert len(objs) == len(rows)
    s = session.schema
    for o, row in zip(objs, rows, strict=True):
        assert o["ts_ns"] == row[s.index("ts_ns")] and type(o["ts_ns"]) is int  # ns, raw
        assert o["hash"] == row[s.index("hash")] and type(o["hash"]) is int  # hex on a console
        assert o["cpu"] == row[s.index("cpu")] and o["len"] == row[s.index("len")]
        v = int(row[s.index("saddr")])  # type: ignore[call-overload]
        assert o["saddr"] == str(ipaddress.IPv4Address(v.to_bytes(4, "little")))


def test_console_heads_each_column_with_the_unit_it_shows(
    rss_trace: tuple[Path, Session, list[tuple[object, ...]]],
) -> None:
    trace, session, _rows = rss_trace
    r = tk("replay", str(trace))
    head, first, *_ = r.stdout.splitlines()
    cols = head.split()
    assert cols[0] == "time(s)" and "ts_ns(ns)" not in cols
    assert first.split()[0] == "0.000000"  # seconds since the first event
    units = {f.name: f.unit for f in session.schema.fields if f.unit}
    for name, unit in units.items():
        if name != "ts_ns":
            assert f"{name}({unit})" in cols


def test_time_wall_shows_wall_clock(
    rss_trace: tuple[Path, Session, list[tuple[object, ...]]],
) -> None:
    import datetime as dt

    trace, session, rows = rss_trace
    ts = int(rows[0][0])  # type: ignore[call-overload]
    want = session.start_time + (ts - session.monotonic_ns) / 1e9
    r = tk("replay", str(trace), "--time", "wall")
    assert r.returncode == 0, r.stderr
    head, first, *_ = r.stdout.splitlines()
    assert head.split()[0] == "time(UTC)"
    assert first.split()[0] == dt.datetime.fromtimestamp(want, tz=dt.UTC).strftime("%H:%M:%S.%f")
    r = tk("replay", str(trace), "--time", "wall", "--sink", "console=json")
    o = json.loads(r.stdout.splitlines()[0])
    assert o["ts_ns"] == ts
    assert dt.datetime.fromisoformat(o["wall_time"]).timestamp() == pytest.approx(want, abs=1e-5)
    r = tk("replay", str(trace), "--time", "noon")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_live_sessions_record_the_clock_their_timestamps_use() -> None:
    import time

    session = _rss_session(start_time=time.time())
    # Seconds since 1970 of "now" in the kernel's clock is now.
    assert session.wall_time(time.monotonic_ns()) == pytest.approx(time.time(), abs=0.5)
    assert Session.from_header(session.header()).monotonic_ns == session.monotonic_ns


# -- plots -------------------------------------------------------------------------------


def _rss_trace_busy_on(tmp_path: Path, busy: int) -> Path:
    """cpu0 is seen first, and ``busy`` takes most packets: the subtitle's old bug."""
    session = _rss_session(ncpus=2)
    s = session.schema
    base = _rss_rows(s, 1)[0]
    rows = []
    for i in range(1000):
        cpu = 0 if i < 20 or i % 50 == 0 else busy
        r = list(base)
        r[s.index("ts_ns")] = 10**12 + i * 10**6
        r[s.index("cpu")] = cpu
        r[s.index("rx_queue")] = cpu
        r[s.index("sport")] = 40000 + i % 8
        r[s.index("hash")] = 0xABCD
        rows.append(tuple(r))
    trace = tmp_path / "busy.tkt"
    _record(trace, session, [rows[:500], rows[500:]], None)
    return trace


def _hist_busiest(trace: Path) -> tuple[int, float]:
    import re

    r = tk("replay", str(trace), "--sink", "hist=count,by=cpu")
    counts = {int(c): int(n) for c, n in re.findall(r"@count\[cpu=(\d+)\]: (\d+)", r.stdout)}
    cpu = max(counts, key=lambda c: (counts[c], -c))
    return cpu, counts[cpu] / sum(counts.values())


def test_rss_cpu_plot_names_the_busiest_cpu_as_hist_counts_it(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the fleet extra
    from tracekit.fleet.plot import Trace
    from tracekit.plugin.bus import build_bus

    trace_path = _rss_trace_busy_on(tmp_path, busy=1)
    cpu, share = _hist_busiest(trace_path)
    assert cpu == 1
    fig = build_bus().probes.get("rss-cpu").plot(Trace(str(trace_path)))
    title = fig.axes[1].get_title(loc="left")
    assert f"overall cpu{cpu} has {100 * share:.1f}%" in title, title


def test_rss_cpu_plot_has_per_queue_and_per_flow_views(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the fleet extra
    from tracekit.fleet.plot import Trace
    from tracekit.plugin.bus import build_bus

    trace = Trace(str(_rss_trace_busy_on(tmp_path, busy=1)))
    fig = build_bus().probes.get("rss-cpu").plot(trace)
    queues = fig.axes[2]
    assert "per RX queue" in queues.get_title(loc="left")
    width = trace.span().bins()[0]
    drawn = {p.get_label(): round(sum(p.get_data().values) * width) for p in queues.patches}
    assert drawn == {"rxq 0": 20 + 20 - 1, "rxq 1": 1000 - 39}
    flows = fig.axes[3]
    assert "8 share one hash value" in flows.get_title(loc="left")
    # Each flow's bar lengths add up to its packets: 1000 packets over 8 source ports.
    bars = [b.get_width() for b in flows.patches]
    assert sum(bars) == 1000 and len(flows.get_yticklabels()) == 8


def _fq_trace(tmp_path: Path, seconds: float) -> Path:
    from tracekit.plugin.bus import build_bus
    from tracekit.probes.fq_throttle import KINDS

    spec = build_bus(load_entry_points=False).probes.get("fq-throttle")
    s = spec.schema
    session = _rss_session(probe="fq-throttle", schema=s)
    base = [0 if not f.is_str else "tk0" for f in s.fields]
    rows = []
    n = int(seconds * 1000)
    for i in range(n + 1):  # one throttle a millisecond, from 0 to ``seconds``
        r = list(base)
        r[s.index("ts_ns")] = 10**12 + i * 10**6
        r[s.index("kind")] = KINDS.index("throttle")
        r[s.index("count")] = 1
        r[s.index("queue")] = i % 2
        rows.append(tuple(r))
    trace = tmp_path / "fq.tkt"
    _record(trace, session, [rows], None)
    return trace


@pytest.mark.parametrize("seconds", [2.345, 7.01, 0.999])
def test_plots_have_no_partial_last_bin(tmp_path: Path, seconds: float) -> None:
    pytest.importorskip("matplotlib")  # the fleet extra
    from tracekit.fleet.plot import Trace
    from tracekit.plugin.bus import build_bus

    trace = Trace(str(_fq_trace(tmp_path, seconds)))
    width, n = trace.span().bins()
    assert width * n == pytest.approx(seconds)
    fig = build_bus().probes.get("fq-throttle").plot(trace)
    for p in fig.axes[0].patches:
        rates = p.get_data().values
        # 500 throttles a second on each queue, the last bin as full as the others.
        assert rates[-1] == pytest.approx(500, rel=0.1), rates
        assert min(rates) == pytest.approx(500, rel=0.1)


def test_plot_legends_are_not_over_the_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the fleet extra
    from tracekit.fleet.plot import Trace
    from tracekit.plugin.bus import build_bus

    bus = build_bus()
    for probe, path in (
        ("fq-throttle", _fq_trace(tmp_path, 2.0)),
        ("rss-cpu", _rss_trace_busy_on(tmp_path, busy=1)),
    ):
        fig = bus.probes.get(probe).plot(Trace(str(path)))
        fig.canvas.draw()
        legends = 0
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is None:
                continue
            legends += 1
            box, area = leg.get_window_extent(), ax.get_window_extent()
            assert box.x0 >= area.x1, (probe, ax.get_title(loc="left"))
        assert legends >= 1


@pytest.mark.parametrize("lab", ["fq-throttle", "rss-cpu"])
def test_lab_rate_is_checked_before_anything_runs(lab: str) -> None:
    r = tk("lab", lab, "--rate", "5x", "--duration", "1")
    assert r.returncode == 2 and r.stderr == (
        "tracekit: --rate '5x': a rate as iperf3 -b takes it, like 500K or 5M\n"
    )
    assert "--rate RATE" in tk("lab", lab, "--help").stdout
