"""The prometheus sink under scrape load, on loopback (a benchmark, not a test; host).

The drain (batches into the live pipeline, as ``tracekit run`` feeds them) runs for
``--seconds`` twice in one process: once alone, once while a second process hammers
``/metrics`` over 127.0.0.1. The second process makes ``--scrapes`` scrapes,
``--concurrency`` at a time, and meanwhile holds ``--half-open`` connections that
send half a request and stop, and ``--slow`` that trickle a header a byte at a time
(each is cut off at the server's ``timeout``, and reconnects). The sink starts with
``--series`` series filled (a new interface name per series, the fq-throttle probe's
log2 delay histogram: tens of samples per series).

It prints, side by side: the drain rate alone and under scrapes (events/s and their
ratio), the longest a single batch took in each, and the longest the draining
thread waited for the sink's lock (what the event path waits behind a scrape), the
scrapes' latency (median, 99th percentile, longest), how many got 200 or 503, the
renders the server made (scrapes that arrived during one share the next), the
process's RSS before and after, and its peak.

    .venv/bin/python bench/exporter_load.py [--seconds 8] [--series 2000] [--scrapes 2000]
    .venv/bin/python bench/exporter_load.py --format-under-lock    # 0.1.0's way, to compare
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import resource
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from tracekit.base.session import Session
from tracekit.plugin.bus import build_bus
from tracekit.plugin.pipeline import Pipeline
from tracekit.plugins.prometheus_sink import PrometheusSink
from tracekit.testing import synthetic_rows


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class TimedLock:
    """The sink's lock, timing how long the draining thread waits for it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # reentrant, for --format-under-lock
        self.drainer = threading.get_ident()
        self.worst = self.total = 0.0
        self.deferred = 0  # batches left for the next one while a scrape copied

    def acquire(self, blocking: bool = True) -> bool:
        t = time.perf_counter()
        ok = self.lock.acquire(blocking)
        if threading.get_ident() == self.drainer:
            w = time.perf_counter() - t
            self.worst = max(self.worst, w)
            self.total += w
            self.deferred += not ok
        return ok

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def drain(
    pipe: Pipeline, batches: list[list[tuple[Any, ...]]], seconds: float
) -> tuple[int, float]:
    """Feed batches for ``seconds``: (events, longest single batch in seconds)."""
    n, worst, i = 0, 0.0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        b = batches[i % len(batches)]
        t = time.monotonic()
        pipe.batch(b)
        worst = max(worst, time.monotonic() - t)
        n += len(b)
        i += 1
    return n, worst


def _get(port: int) -> tuple[int, float, int]:
    """(status, seconds, body bytes) of one scrape."""
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = bytearray()
        while chunk := c.recv(1 << 16):
            data += chunk
    status = int(bytes(data[9:12])) if data.startswith(b"HTTP/1.1 ") else 0
    return status, time.monotonic() - t, len(data)


def _hostile(port: int, stop: Any, half_open: int, slow: int) -> None:
    """Keep ``half_open`` half-sent requests and ``slow`` tricklers connected."""
    conns: list[socket.socket] = []
    trick: list[socket.socket] = []
    while not stop.is_set():
        conns = [c for c in conns if c.fileno() >= 0]
        while len(conns) < half_open:
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                conns.append(c)
            except OSError:
                break
        while len(trick) < slow:
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
                c.sendall(b"GET /metrics HTTP/1.1\r\n")
                trick.append(c)
            except OSError:
                break
        for c in list(trick):
            try:
                c.send(b"X")
            except OSError:
                c.close()
                trick.remove(c)
        # A half-open connection the server cut off (408 or 503) is replaced.
        for c in list(conns):
            c.setblocking(False)
            try:
                if c.recv(1 << 12) or True:
                    c.close()
                    conns.remove(c)
            except BlockingIOError:
                pass
            except OSError:
                c.close()
                conns.remove(c)
        time.sleep(0.05)
    for c in conns + trick:
        c.close()


def client(port: int, scrapes: int, concurrency: int, half_open: int, slow: int, out: Any) -> None:
    """The second process: the scrapes, and the hostile connections beside them."""
    stop = threading.Event()
    hostile = threading.Thread(target=_hostile, args=(port, stop, half_open, slow), daemon=True)
    hostile.start()
    results: list[tuple[int, float, int]] = []
    lock = threading.Lock()
    left = [scrapes]

    def worker() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                r = _get(port)
            except OSError:
                r = (0, 0.0, 0)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    hostile.join(10)
    out.send(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--scrapes", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--half-open", type=int, default=12)
    ap.add_argument("--slow", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=40)
    ap.add_argument(
        "--format-under-lock",
        action="store_true",
        help="hold the sink's lock while formatting, as 0.1.0's sink did (for comparison)",
    )
    a = ap.parse_args()

    bus = build_bus()
    spec = bus.probes.get("fq-throttle")
    session = Session(
        probe="fq-throttle", schema=spec.schema, params={}, kernel="bench", ncpus=4, hostname="b"
    )
    schema = session.schema
    ii, di = schema.index("ifname"), schema.index("delay_us")
    # The fill: one series per interface name, values over 20 log2 buckets.
    fill = [
        (*r[:di], (i * 7919) % (1 << 20), *r[di + 1 : ii], f"veth{i}", *r[ii + 1 :])
        for i, r in enumerate(synthetic_rows(schema, a.series, seed=1))
    ]
    # The stream: the fill's series again (their values moved), so the drain measures
    # counting, not growth.
    batches = [
        [
            (*r[:di], (r[di] + k) % (1 << 20), *r[di + 1 :])
            for r in (fill[(k * a.batch + j * 31) % len(fill)] for j in range(a.batch))
        ]
        for k in range(8)
    ]
    sink = PrometheusSink(
        f"127.0.0.1:0,max_series={2 * a.series},max_requests={a.max_requests},timeout=2"
    )
    timed = TimedLock()
    sink.lock = timed  # type: ignore[assignment]
    if a.format_under_lock:
        render = sink.render

        def render_under_lock() -> bytes:
            with timed:
                return render()

        sink.render = render_under_lock  # type: ignore[method-assign]
    with Pipeline(bus, session, {"sink:prometheus": sink}) as pipe:
        for i in range(0, len(fill), a.batch):
            pipe.batch(fill[i : i + a.batch])
        rss0 = rss_mb()
        alone, worst_alone = drain(pipe, batches, a.seconds)
        lock_alone, total_alone = timed.worst, timed.total
        timed.worst = timed.total = 0.0
        srv = sink.server
        assert srv is not None
        parent, child = mp.Pipe()
        proc = mp.get_context("fork").Process(
            target=client,
            args=(sink.port, a.scrapes, a.concurrency, a.half_open, a.slow, child),
        )
        proc.start()
        t0 = time.monotonic()
        loaded, worst_loaded = drain(pipe, batches, a.seconds)
        while not parent.poll(0.01):  # the drain goes on until the scrapes are done
            n, w = drain(pipe, batches, 0.2)
            loaded += n
            worst_loaded = max(worst_loaded, w)
        loaded_s = time.monotonic() - t0
        results = parent.recv()
        lock_loaded, total_loaded = timed.worst, timed.total
        deferred = timed.deferred
        proc.join(30)
        rss1 = rss_mb()
        stats = dict(srv.stats)
        with contextlib.redirect_stderr(None):
            pipe.end()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ok = [r for r in results if r[0] == 200]
    lat = sorted(r[1] for r in ok)
    size = statistics.median(r[2] for r in ok) if ok else 0
    rate_alone, rate_loaded = alone / a.seconds, loaded / loaded_s
    rows = [
        ("drain alone (events/s)", f"{rate_alone:,.0f}"),
        ("drain under scrapes (events/s)", f"{rate_loaded:,.0f}"),
        ("  ratio under / alone", f"{rate_loaded / rate_alone:.2f}"),
        ("longest batch alone (ms)", f"{worst_alone * 1e3:.1f}"),
        ("longest batch under scrapes (ms)", f"{worst_loaded * 1e3:.1f}"),
        ("longest wait for the sink's lock alone (ms)", f"{lock_alone * 1e3:.2f}"),
        ("longest wait for the lock under scrapes (ms)", f"{lock_loaded * 1e3:.2f}"),
        ("drain time spent waiting for the lock, alone", f"{total_alone / a.seconds:.3%}"),
        ("drain time spent waiting for it, under scrapes", f"{total_loaded / loaded_s:.3%}"),
        ("batches deferred while a scrape copied", f"{deferred:,}"),
        (
            "scrapes: 200 / 503 / failed",
            f"{len(ok):,} / {sum(r[0] == 503 for r in results):,} / "
            f"{sum(r[0] == 0 for r in results):,}",
        ),
    ]
    if lat:
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        ms = (statistics.median(lat) * 1e3, p99 * 1e3, lat[-1] * 1e3)
        rows.append(("scrape latency p50 / p99 / max (ms)", " / ".join(f"{x:.0f}" for x in ms)))
    rows += [
        ("renders (shared by waiting scrapes)", f"{stats.get('renders', 0):,}"),
        ("hostile cut off: 408 / 503", f"{stats.get('408', 0):,} / {stats.get('503', 0):,}"),
        ("RSS after fill / after load / peak (MB)", f"{rss0:.1f} / {rss1:.1f} / {peak:.1f}"),
    ]
    how = "formatting under the lock" if a.format_under_lock else "formatting outside the lock"
    print(f"series filled: {a.series:,}; scrape body: {size / 1e6:.1f} MB (median); {how}")
    for k, v in rows:
        print(f"{k:46} {v:>22}")


if __name__ == "__main__":
    main()
