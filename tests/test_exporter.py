"""The prometheus sink as an exporter a hostile local user can reach: each limit.

Series are capped (new interface names beyond the cap are counted, not kept), a scrape
formats outside the sink's lock (the drain goes on while one formats), and the HTTP
server bounds concurrent requests, request heads and how long a request may take.
Everything connects to 127.0.0.1 only; every wait is for a condition, bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tracekit.base.errors import UsageError
from tracekit.base.session import Session
from tracekit.plugin.bus import Bus, build_bus
from tracekit.plugin.pipeline import Pipeline
from tracekit.testing import synthetic_rows

prom_parser = pytest.importorskip("prometheus_client.parser")

from tracekit.plugins import prometheus_sink  # noqa: E402
from tracekit.plugins.prometheus_sink import MetricsServer, PrometheusSink  # noqa: E402


def wait_for(cond: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``limit`` seconds."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def scrape(port: int, path: str = "/metrics") -> dict[tuple[str, tuple[Any, ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def status_of(port: int, data: bytes) -> int:
    """Send ``data`` on a fresh connection; the status line's code (0: closed silently)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        with contextlib.suppress(OSError):
            c.sendall(data)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := c.recv(65536):
                reply += chunk
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture(scope="module")
def bus() -> Bus:
    return build_bus()


def _session(bus: Bus, probe: str) -> Session:
    return Session(
        probe=probe,
        schema=bus.probes.get(probe).schema,
        params={},
        kernel="6.1.0-lab",
        ncpus=4,
        hostname="lab-a",
    )


@contextlib.contextmanager
def server(render: Callable[[], bytes] = lambda: b"x 1\n", **kw: Any) -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", 0, render, **kw)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


# -- the series cap ---------------------------------------------------------------------


def test_series_cap_counts_the_overflow_and_reports_it(
    bus: Bus, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new interface name per event (a container's veth each): the sink keeps
    max_series series, counts the rest's events in their own series, and says so."""
    session = _session(bus, "fq-throttle")
    schema = session.schema
    ii = schema.index("ifname")
    rows = [(*r[:ii], f"veth{i}", *r[ii + 1 :]) for i, r in enumerate(synthetic_rows(schema, 3000))]
    sink = PrometheusSink("127.0.0.1:0,max_series=100")
    with Pipeline(bus, session, {"sink:prometheus": sink}) as pipe:
        for i in range(0, len(rows), 500):
            pipe.batch(rows[i : i + 500])
        got = scrape(sink.port)
        pipe.end()
    delay = "tracekit_fq_throttle_throttle_delay_us"
    flows = "tracekit_fq_throttle_events_by_flow_total"
    kept = {lb for n, lb in got if n == delay + "_count"}
    kinds = {lb for n, lb in got if n == flows}
    assert len(kept) == 50 and len(kinds) == 4  # the cap, split between the two metrics
    assert got[("tracekit_series", (("metric", delay),))] == len(kept)
    counted = sum(v for (n, _), v in got.items() if n == delay + "_count")
    over = got[("tracekit_series_overflow_events_total", (("metric", delay),))]
    assert over > 0 and counted + over == 3000  # every event counted once, served or not
    # The kinds (a handful) are within their share: nothing of theirs overflowed.
    assert got[("tracekit_series_overflow_events_total", (("metric", flows),))] == 0
    assert sum(v for (n, _), v in got.items() if n == flows) == 3000
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "max_series" in x]
    assert len(line) == 1 and f"{int(over):,} events" in line[0], err
    assert "tracekit_series_overflow_events_total" in line[0]


def test_no_report_without_overflow(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    session = _session(bus, "rss-cpu")
    sink = PrometheusSink("127.0.0.1:0")
    with Pipeline(bus, session, {"sink:prometheus": sink}) as pipe:
        pipe.batch(synthetic_rows(session.schema, 1000))
        pipe.end()
    assert sink.overflow_report() is None
    assert "max_series" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "arg",
    [
        "max_series=0",
        "max_series=1000001",
        "max_series=x",
        "max_requests=0",
        "max_requests=5000",
        "timeout=0",
        "timeout=nan",
        "hold=inf",
        "hold=nan",
        "hold=-1",
        "hold=100000",
    ],
)
def test_arguments_are_bounded(arg: str) -> None:
    with pytest.raises(UsageError, match=r"^--sink prometheus: ") as e:
        PrometheusSink(f"127.0.0.1:0,{arg}")
    assert "\n" not in str(e.value)


# -- scrapes do not hold up the drain -----------------------------------------------------


def test_a_scrape_formats_outside_the_lock(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a scrape is stopped in the middle of formatting, batches still go in."""
    session = _session(bus, "fq-throttle")
    rows = synthetic_rows(session.schema, 2000)
    sink = PrometheusSink("127.0.0.1:0")
    formatting, release = threading.Event(), threading.Event()
    real = prometheus_sink._label_values

    def slow_label_values(*a: Any) -> list[str]:
        formatting.set()
        assert release.wait(60), "never released"
        return real(*a)

    with Pipeline(bus, session, {"sink:prometheus": sink}) as pipe:
        pipe.batch(rows[:1000])
        monkeypatch.setattr(prometheus_sink, "_label_values", slow_label_values)
        result: list[Any] = []
        scraper = threading.Thread(target=lambda: result.append(scrape(sink.port)))
        scraper.start()
        assert formatting.wait(30), "the scrape never reached formatting"
        drain = threading.Thread(target=pipe.batch, args=(rows[1000:],))
        drain.start()
        drain.join(30)
        assert not drain.is_alive(), "the drain waited for a scrape's formatting"
        assert sink.events == 2000  # counted while the scrape was still formatting
        release.set()
        scraper.join(30)
        monkeypatch.setattr(prometheus_sink, "_label_values", real)
        assert result and result[0][("tracekit_events_total", ())] == 1000  # its snapshot
        assert scrape(sink.port)[("tracekit_events_total", ())] == 2000
        pipe.end()


# -- the HTTP server's limits -------------------------------------------------------------


def test_concurrent_requests_are_capped() -> None:
    """max_requests half-sent requests hold every slot: the next connection gets 503
    at once, and a slot comes back when a client goes."""
    with server(max_requests=4) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]
        try:
            for c in held:
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            wait_for(lambda: srv.busy == 4, "4 busy connections")
            assert status_of(srv.port, b"GET /metrics HTTP/1.1\r\n\r\n") == 503
            assert srv.stats["503"] == 1
            held.pop().close()
            wait_for(lambda: srv.busy == 3, "a slot freed")
            assert status_of(srv.port, b"GET /metrics HTTP/1.1\r\n\r\n") == 200
        finally:
            for c in held:
                c.close()
        wait_for(lambda: srv.busy == 0, "every slot freed")


def test_threads_stay_bounded_under_150_half_sent_requests() -> None:
    """The issue's 150 half-sent requests: at most max_requests threads serve them."""
    before = threading.active_count()
    with server(max_requests=40) as srv:
        conns = []
        try:
            for _ in range(150):
                c = socket.create_connection(("127.0.0.1", srv.port))
                c.sendall(b"GET /metrics HTTP/1.1\r\n")
                conns.append(c)
            wait_for(lambda: srv.stats["503"] + srv.busy == 150, "every connection answered")
            assert srv.busy == 40 and srv.stats["503"] == 110
            assert threading.active_count() <= before + 1 + 40
        finally:
            for c in conns:
                c.close()
        wait_for(lambda: srv.busy == 0, "every slot freed")


def test_request_heads_are_limited() -> None:
    with server() as srv:
        big = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 60_000 + b"\r\n\r\n"
        for _ in range(10):  # the 60 KB headers got 200 OK
            assert status_of(srv.port, big) == 431
        assert status_of(srv.port, b"GET /" + b"m" * 9000 + b" HTTP/1.1\r\n\r\n") == 431
        small = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 4000 + b"\r\n\r\n"
        assert status_of(srv.port, small) == 200
        wait_for(lambda: srv.busy == 0, "every slot freed")


def test_a_request_has_a_total_time_limit() -> None:
    """Half-open and trickling clients alike are cut off after ``timeout`` in total
    (a byte every 20 ms would keep a per-read timeout happy forever)."""
    with server(timeout=0.5) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as idle:
            assert idle.recv(100).startswith(b"HTTP/1.1 408 ")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\n")
            sent = 0
            with contextlib.suppress(OSError):
                while sent < 5000:  # 100 s at this pace, were it never cut off
                    slow.send(b"X")
                    sent += 1
                    time.sleep(0.02)
                    if srv.stats["408"] == 2:
                        break
            assert srv.stats["408"] == 2 and sent < 5000
        wait_for(lambda: srv.busy == 0, "every slot freed")


def test_methods_and_paths() -> None:
    with server(render=lambda: b"tracekit_x 1\n") as srv:
        assert status_of(srv.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n") == 405
        assert status_of(srv.port, b"GET /nope HTTP/1.1\r\n\r\n") == 404
        assert status_of(srv.port, b"nonsense\r\n\r\n") == 400
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as c:
            c.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := c.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\n")
        assert b"Content-Length: 13\r\n" in reply
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/x", timeout=30)
        assert e.value.code == 404


def test_scrapes_that_wait_share_one_render() -> None:
    """Requests that arrive while a render runs get the next render's bytes: one more
    render, not one each."""
    started, release = threading.Event(), threading.Event()
    n = [0]

    def render() -> bytes:
        n[0] += 1
        if n[0] == 1:
            started.set()
            assert release.wait(60)
        return f"tracekit_render {n[0]}\n".encode()

    with server(render=render, max_requests=10) as srv:
        results: list[dict[Any, float]] = []
        first = threading.Thread(target=lambda: results.append(scrape(srv.port)))
        first.start()
        assert started.wait(30)
        others = [
            threading.Thread(target=lambda: results.append(scrape(srv.port))) for _ in range(5)
        ]
        for t in others:
            t.start()
        wait_for(lambda: srv.busy == 6, "6 requests in")
        wait_for(lambda: srv.stats["heads"] == 6, "6 request heads read")
        release.set()
        for t in [first, *others]:
            t.join(30)
        assert len(results) == 6 and srv.stats["renders"] == 2
        assert sorted(r[("tracekit_render", ())] for r in results) == [1, 2, 2, 2, 2, 2]


# -- the exposition itself ---------------------------------------------------------------

# What promtool's linter says of names that were served before it was run on them
# (renaming them would break every dashboard built on them).
KNOWN_LINT = {
    "tracekit_kernel_counter_total metric name should not include type 'counter'",
    "tracekit_fq_throttle_throttle_delay_us metric names should not contain abbreviated units",
}


@pytest.mark.parametrize("probe", ["fq-throttle", "txq-flip", "rss-cpu", "ooo-okay"])
def test_exposition_passes_promtool_and_round_trips(bus: Bus, probe: str) -> None:
    """The sink writes the text format itself: promtool parses it, and every label
    value comes back as the hist sink shows it, quotes and backslashes included."""
    import shutil
    import subprocess

    if not shutil.which("promtool"):
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus")
    session = Session(
        probe=probe,
        schema=bus.probes.get(probe).schema,
        params={"x": 1},
        kernel='6.1.0 "lab"',
        ncpus=4,
        hostname='host\\with"quotes',
    )
    schema = session.schema
    rows = synthetic_rows(schema, 3000)
    if "ifname" in schema.names:
        ii = schema.index("ifname")
        rows = [(*r[:ii], 'e"t\\h\x1b0', *r[ii + 1 :]) for r in rows]
    sink = PrometheusSink("127.0.0.1:0")
    with Pipeline(bus, session, {"sink:prometheus": sink}) as pipe:
        pipe.batch(rows)
        pipe.counters({"m": {"c": {0: 3, 1: 4}}})
        body = sink.render()
        got = scrape(sink.port)
        pipe.end()
    p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    said = {x.strip() for x in (p.stdout + p.stderr).decode().splitlines() if x.strip()}
    assert p.returncode in (0, 3) and said <= KNOWN_LINT, said
    info = dict(next(lb for n, lb in got if n == "tracekit_run_info"))
    assert info["hostname"] == 'host\\with"quotes' and info["kernel"] == '6.1.0 "lab"'
    assert got[("tracekit_events_total", ())] == 3000
    if probe == "fq-throttle":  # the one whose metrics have an ifname label
        names = {dict(lb).get("ifname") for n, lb in got if "ifname" in dict(lb)}
        assert names == {'e"t\\\\h\\x1b0'}  # printable's escapes, as the hist sink shows it


def test_a_batch_never_waits_for_a_scrapes_copy(bus: Bus) -> None:
    """A scrape's thread holding the lock (preempted in the middle of its copy, say):
    the batch is kept for the next one, and every event is counted in the end."""
    session = _session(bus, "rss-cpu")
    rows = synthetic_rows(session.schema, 3000)
    sink = PrometheusSink("127.0.0.1:0")
    with Pipeline(bus, session, {"sink:prometheus": sink}) as pipe:
        pipe.batch(rows[:1000])
        with sink.lock:  # what a scrape's copy holds
            drain = threading.Thread(target=pipe.batch, args=(rows[1000:2000],))
            drain.start()
            drain.join(30)
            assert not drain.is_alive(), "the drain waited for the lock"
            assert len(sink.pending) == 1 and sink.events == 1000
        pipe.batch(rows[2000:2500])  # counts the pending batch, then its own
        assert sink.events == 2500 and not sink.pending
        with sink.lock:
            drain = threading.Thread(target=pipe.batch, args=(rows[2500:],))
            drain.start()
            drain.join(30)
            assert not drain.is_alive()
        pipe.end()  # the end of the session counts what is still pending
    assert sink.events == 3000 and not sink.pending
    cpu = sum(n for (k, b), n in sink.hists[0].cells.items())
    assert cpu == 3000


def test_docs_state_the_limits_the_sink_enforces() -> None:
    from pathlib import Path

    from tracekit.base.metrics import DEFAULT_MAX_SERIES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "prometheus.md").read_text()
    ps = prometheus_sink
    assert f"| `max_series=N` | {DEFAULT_MAX_SERIES:,} | 1..{ps.MAX_SERIES_LIMIT:,} |" in doc
    assert f"| `max_requests=N` | {ps.DEFAULT_MAX_REQUESTS} | 1..{ps.MAX_REQUESTS_LIMIT} |" in doc
    assert f"| `timeout=S` | {ps.DEFAULT_TIMEOUT:g} | 0.1..600 seconds |" in doc
    assert f"| `hold=S` | 0 | 0..{ps.MAX_HOLD:.0f} seconds |" in doc
    assert f"at most {ps.MAX_REQUEST_HEAD // 1024} KiB" in doc
    assert f"taken within {ps.WRITE_TIMEOUT:g} s" in doc
    with pytest.raises(UsageError, match=r"from 0\.1 to 600"):
        PrometheusSink("timeout=601")
