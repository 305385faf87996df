"""The ``prometheus`` sink: ``/metrics`` in the Prometheus exposition format, live.

``--sink prometheus[=ADDR:PORT][,hold=S][,labels=all][,max_series=N][,max_requests=N]
[,timeout=S]`` serves, while the run runs (with no ``--duration``, until Ctrl-C, like
an exporter), the metrics of tracekit's metric model (``tracekit.base.metrics``):

* ``tracekit_run_info{probe, params, kernel, hostname, version, mode, sample_every}`` 1
* ``tracekit_run_ended``: 0 while tracing, 1 once the session ended and every value
  is final (what a scrape during ``hold`` is waiting for)
* ``tracekit_events_total``: events the sink received (streamed, after sampling)
* ``tracekit_lost_events_total{mechanism, cpu}``: events the kernel lost
* ``tracekit_kernel_counter_total{map, counter, cpu}``: the probe's in-kernel
  counters, read about once a second while it runs and exact at the end
* ``tracekit_series{metric}`` and ``tracekit_series_overflow_events_total{metric}``:
  the series each metric keeps, and the events not counted because their series
  would have been beyond ``max_series``
* one metric per default histogram of the probe (a counter for counts, a Prometheus
  histogram for log2 and linear ones), with bounded labels: no addresses, ports or
  socket pointers unless ``labels=all``. docs/prometheus.md lists each probe's.

**Series are capped** (``max_series``, default 10,000 label sets over all of the
probe's metrics, split evenly among them): a new label set beyond a metric's share is
not created, its events are counted in ``tracekit_series_overflow_events_total{metric}``
instead, and the end of the session says how many there were.

**A scrape never holds up the drain**: it copies the counts under the sink's lock (a
dictionary copy per metric) and formats the copy outside it; a batch that arrives
while the lock is held waits in a list for the next batch instead of the drain
waiting. One scrape formats at a time; scrapes that arrive meanwhile share the next
one's text, and renders take at most a quarter of the time.

**The HTTP server is bounded**: at most ``max_requests`` (default 40, as
node_exporter's ``--web.max-requests``) connections are served at once, the next
get ``503`` at once; a request's line and headers must arrive within ``timeout``
seconds (default 10, in total, however slowly they trickle) and hold at most 8 KiB
(else ``408`` / ``431``); a response must be taken within 30 s. Only ``GET`` and
``HEAD`` of ``/metrics`` (and ``/``) are served, one request per connection.

The default address is 127.0.0.1:9435, loopback: exposing a tracer's data to the
network is a choice to make with ``prometheus=0.0.0.0:9435``. ``hold=SECONDS`` keeps
serving after the session ends, so a last scrape sees the final values (a replay
ends at once otherwise); Ctrl-C or SIGTERM ends the hold early.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from tracekit import hookimpl
from tracekit.base import metrics
from tracekit.base.errors import UsageError
from tracekit.base.metrics import MetricSpec, bucket_bounds, hist_metric
from tracekit.base.schema import HistSpec, Schema, format_value
from tracekit.base.session import EventBatch, LostReport, Session, Summary
from tracekit.base.text import printable
from tracekit.plugin.pipeline import SinkOptions
from tracekit.plugin.registry import SinkRegistry, SinkSpec

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 9435
# Kept for plugins that imported them from here; the model lives in tracekit.base.metrics.
UNBOUNDED_DISPLAYS = metrics.UNBOUNDED_DISPLAYS
metric_name = metrics.metric_name
bounded_labels = metrics.bounded_labels

# Limits of the sink's arguments (each refused with one line outside them).
MAX_HOLD = 86_400.0  # a day
MAX_SERIES_LIMIT = 1_000_000
DEFAULT_MAX_REQUESTS = 40  # node_exporter's --web.max-requests
MAX_REQUESTS_LIMIT = 1024
DEFAULT_TIMEOUT = 10.0
# The HTTP server's fixed limits.
MAX_REQUEST_HEAD = 8192  # request line and headers, bytes
WRITE_TIMEOUT = 30.0  # seconds to take a whole response
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RENDER_SHARE = 0.25  # of the time renders may take, back to back
MAX_PENDING_ROWS = 1 << 16  # rows that may wait for a scrape's copy before the drain waits


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def describe(schema: Schema, probe: str, all_labels: bool = False) -> list[tuple[str, str, str]]:
    """(metric, type, labels) for a probe's histograms: what docs/prometheus.md lists."""
    return [
        (m.exposed, m.kind, ", ".join(m.labels))
        for m in metrics.probe_metrics(schema, probe, all_labels)
    ]


class _Budget:
    """One metric's share of ``max_series``: the cap split evenly among the probe's
    metrics, so one metric's flood of new label sets cannot starve the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class _HistState:
    """One histogram's series: counts per (labels, bucket) and sums per labels."""

    def __init__(
        self, probe: str, schema: Schema, spec: HistSpec, all_labels: bool, budget: _Budget
    ) -> None:
        from tracekit.base.hist import Histogram  # here: runs without this sink never load it

        self.spec = spec
        self.schema = schema
        self.metric: MetricSpec = hist_metric(probe, schema, spec, all_labels)
        self.name = self.metric.name
        self.labels = self.metric.fields  # schema fields, in the order of metric.labels
        self.doc = self.metric.help
        self.bucket = Histogram(spec, schema).bucket
        self.budget = budget
        idx = tuple(schema.index(n) for n in self.labels)
        self.key: Callable[[tuple[Any, ...]], Any]
        if len(idx) > 1:
            self.key = itemgetter(*idx)
        elif len(idx) == 1:
            i0 = idx[0]
            self.key = lambda r: (r[i0],)
        else:
            self.key = lambda r: ()
        self.vi = schema.index(spec.value) if spec.value else None
        # Flat, so that a snapshot is one C-level dict copy (nothing can run
        # in between): (labels, bucket) -> count, and labels -> sum (its keys are the
        # series kept, for count histograms too).
        self.cells: defaultdict[tuple[Any, int], int] = defaultdict(int)
        self.sums: dict[Any, int] = {}
        self.overflow = 0  # events whose new series the cap refused

    def _admit(self, k: Any, n: int) -> bool:
        """Whether series ``k`` is kept: made if the budget allows, else its ``n``
        events are counted as overflow."""
        if k in self.sums:
            return True
        if self.budget.used >= self.budget.limit:
            self.overflow += n
            return False
        self.budget.used += 1
        self.sums[k] = 0
        return True

    def add(self, rows: Sequence[tuple[Any, ...]]) -> None:
        keys = map(self.key, rows)
        cells, admit = self.cells, self._admit
        if self.vi is None:
            for k, n in Counter(keys).items():
                if admit(k, n):
                    cells[k, 0] += n
            return
        # Counted at C speed first; the Python loop then runs once per distinct
        # (labels, value) pair, not once per event.
        bucket, sums = self.bucket, self.sums
        for (k, v), n in Counter(zip(keys, map(itemgetter(self.vi), rows), strict=True)).items():
            if admit(k, n):
                cells[k, bucket(v)] += n
                sums[k] += v * n

    def add_weighted(self, pairs: Sequence[tuple[tuple[Any, ...], int]]) -> None:
        for r, n in pairs:
            k = self.key(r)
            if not self._admit(k, n):
                continue
            if self.vi is None:
                self.cells[k, 0] += n
            else:
                self.cells[k, self.bucket(r[self.vi])] += n
                self.sums[k] += r[self.vi] * n

    def snapshot(self) -> _HistSnapshot:
        """A copy of the counts, taken under the sink's lock: two dict copies, each
        one C call, so the lock is held for microseconds even with the cap's series."""
        return _HistSnapshot(self, dict(self.cells), dict(self.sums), self.overflow)


@dataclass
class _HistSnapshot:
    state: _HistState
    cells: dict[tuple[Any, int], int]
    sums: dict[Any, int]
    overflow: int

    def series(self) -> Iterator[tuple[Any, dict[int, int]]]:
        """(labels, bucket -> count) per series, in the order the series appeared."""
        per: dict[Any, dict[int, int]] = {k: {} for k in self.sums}
        for (k, b), n in self.cells.items():
            per[k][b] = n
        return iter(per.items())


@dataclass
class _Snapshot:
    session: Session
    ended: bool
    events: int
    lost: dict[tuple[str, int], int]
    counters: Mapping[str, Mapping[str, Mapping[int, int]]]
    hists: list[_HistSnapshot]


def _label_values(h: _HistState, key: Any, symbols: Mapping[int, str]) -> list[str]:
    return [format_value(h.schema.field(n), v, symbols) for n, v in zip(h.labels, key, strict=True)]


class PrometheusSink:
    def __init__(self, arg: str | None) -> None:
        self.addr, self.port = DEFAULT_ADDR, DEFAULT_PORT
        self.hold = 0.0
        self.all_labels = False
        self.max_series = metrics.DEFAULT_MAX_SERIES
        self.max_requests = DEFAULT_MAX_REQUESTS
        self.timeout = DEFAULT_TIMEOUT
        self._parse(arg or "")
        self.lock = threading.Lock()
        self.server: MetricsServer | None = None
        self.session: Session | None = None
        self.hists: list[_HistState] = []
        self.events = 0
        self.pending: list[Sequence[tuple[Any, ...]]] = []
        self.pending_rows = 0
        self.lost: dict[tuple[str, int], int] = defaultdict(int)
        self.counters: Mapping[str, Mapping[str, Mapping[int, int]]] = {}
        self.ended = False

    # -- arguments ------------------------------------------------------------------

    @staticmethod
    def _number(k: str, v: str, lo: float, hi: float, integer: bool) -> float:
        what = "an integer" if integer else "seconds"
        if integer and not (v.isascii() and v.lstrip("-").isdigit() and len(v) <= 12):
            raise UsageError(f"--sink prometheus: {k}={v!r} is not {what}")
        try:
            x = int(v) if integer else float(v)
        except ValueError:
            raise UsageError(f"--sink prometheus: {k}={v!r} is not {what}") from None
        if not (math.isfinite(x) and lo <= x <= hi):
            lo_, hi_ = (int(b) if float(b).is_integer() else b for b in (lo, hi))
            raise UsageError(f"--sink prometheus: {k}={v!r}: must be {what} from {lo_} to {hi_}")
        return x

    def _parse(self, arg: str) -> None:
        for part in (p.strip() for p in arg.split(",")):
            if not part:
                continue
            k, sep, v = part.partition("=")
            if sep and k == "hold":
                self.hold = self._number(k, v, 0, MAX_HOLD, False)
            elif sep and k == "labels":
                if v not in ("all", "bounded"):
                    raise UsageError(f"--sink prometheus: labels={v!r}: valid: bounded, all")
                self.all_labels = v == "all"
            elif sep and k == "max_series":
                self.max_series = int(self._number(k, v, 1, MAX_SERIES_LIMIT, True))
            elif sep and k == "max_requests":
                self.max_requests = int(self._number(k, v, 1, MAX_REQUESTS_LIMIT, True))
            elif sep and k == "timeout":
                self.timeout = self._number(k, v, 0.1, 600, False)
            elif not sep:
                host, colon, port = part.rpartition(":")
                ok = port.isascii() and port.isdigit() and len(port) <= 5
                if not colon or not ok or not 0 <= int(port) < 65536:
                    raise UsageError(
                        f"--sink prometheus={arg}: expected ADDR:PORT (127.0.0.1:{DEFAULT_PORT})"
                    )
                self.addr, self.port = host.strip("[]") or DEFAULT_ADDR, int(port)
            else:
                raise UsageError(
                    f"--sink prometheus: unknown option {part!r} (ADDR:PORT, hold=S, "
                    "labels=all, max_series=N, max_requests=N, timeout=S)"
                )

    def configure(self, opts: SinkOptions) -> None:
        # Refuse a taken port before the probe compiles, not when tracing starts.
        if self.port:
            self._trial_bind()

    def _trial_bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.addr, self.port))
            except OSError as exc:
                why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise UsageError(
                    f"--sink prometheus: cannot listen on {self.addr}:{self.port}: {why}"
                ) from None

    # -- session hooks ------------------------------------------------------------

    @hookimpl
    def tracekit_session_start(self, session: Session) -> None:
        self.session = session
        specs = session.schema.histograms
        share = max(1, self.max_series // max(1, len(specs)))
        self.hists = [
            _HistState(session.probe, session.schema, spec, self.all_labels, _Budget(share))
            for spec in specs
        ]
        self.server = MetricsServer(
            self.addr,
            self.port,
            self.render,
            max_requests=self.max_requests,
            timeout=self.timeout,
        )
        try:
            self.server.start()
        except OSError as exc:
            self.server = None
            raise UsageError(
                f"--sink prometheus: cannot listen on {self.addr}:{self.port}: {exc.strerror}"
            ) from None
        self.port = self.server.port
        print(
            f"tracekit: serving metrics on http://{self.addr}:{self.port}/metrics",
            file=sys.stderr,
            flush=True,
        )

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        if session.aggregated:
            return  # counted in the kernel; the aggregate arrives with the summary
        rows = batch.rows
        # While a scrape copies the counts (microseconds, but its thread may be
        # preempted meanwhile), the batch waits in ``pending`` instead of the drain
        # waiting for the lock: the next batch counts it (or the end of the session).
        if not self.lock.acquire(blocking=self.pending_rows >= MAX_PENDING_ROWS):
            self.pending.append(rows)
            self.pending_rows += len(rows)
            return
        try:
            self._fold(rows)
        finally:
            self.lock.release()

    def _fold(self, rows: Sequence[tuple[Any, ...]] | None = None) -> None:
        """Count the pending batches, then ``rows``; the caller holds the lock."""
        batches, self.pending, self.pending_rows = self.pending, [], 0
        if rows is not None:
            batches.append(rows)
        for b in batches:
            self.events += len(b)
            for h in self.hists:
                h.add(b)

    @hookimpl
    def tracekit_lost_events(self, session: Session, lost: LostReport) -> None:
        with self.lock:
            for cpu, n in lost.per_cpu.items():
                self.lost[(lost.source, cpu)] += n

    @hookimpl
    def tracekit_counters(
        self, session: Session, counters: dict[str, dict[str, dict[int, int]]]
    ) -> None:
        with self.lock:
            self.counters = counters

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: Summary) -> None:
        try:
            with self._stop_signals():
                with self.lock:
                    self._fold()
                    self.counters = summary.counters
                    if session.aggregated:
                        for h in self.hists:
                            h.add_weighted(summary.kernel_agg)
                    self.ended = True
                self._report_overflow()
                if self.hold > 0:
                    time.sleep(self.hold)
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM during hold: stop serving now
        finally:
            self.close()

    def overflow_report(self) -> str | None:
        """One line on the series the cap refused, or None when it refused none."""
        over = [h for h in self.hists if h.overflow]
        if not over:
            return None
        parts = ", ".join(f"{h.metric.exposed}: {h.overflow:,} events" for h in over)
        return (
            f"tracekit: --sink prometheus: max_series={self.max_series:,} reached; "
            f"events of new series not served ({parts}), counted in "
            f"{metrics.SERIES_OVERFLOW.exposed}"
        )

    def _report_overflow(self) -> None:
        line = self.overflow_report()
        if line is not None:
            print(line, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """Ctrl-C and SIGTERM raise KeyboardInterrupt, for ``hold``.

        A live run ends its session with stop signals deferred (the probe is being
        detached), so the hold would never end early: it takes the signals itself,
        from before ``tracekit_run_ended`` turns 1 (a scraper that sees it may end
        the hold at once), then gives them back.
        """
        old: dict[signal.Signals, Any] = {}
        if self.hold > 0 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, _interrupt)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # -- scrapes --------------------------------------------------------------------

    def snapshot(self) -> _Snapshot | None:
        """Everything a scrape shows, copied under the lock (no formatting here)."""
        s = self.session
        if s is None:
            return None
        with self.lock:
            return _Snapshot(
                session=s,
                ended=self.ended,
                events=self.events,
                lost=dict(self.lost),
                counters=self.counters,
                hists=[h.snapshot() for h in self.hists],
            )

    def render(self) -> bytes:
        """The exposition text of a snapshot, formatted outside the lock."""
        snap = self.snapshot()
        return b"" if snap is None else exposition(snap)


def _esc(v: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    if "\\" in v or '"' in v or "\n" in v:
        v = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return v


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    return ("+Inf" if v > 0 else "-Inf") if math.isinf(v) else repr(float(v))


class _Writer:
    """The text exposition format (version 0.0.4), written straight from a snapshot:
    each series' labels are formatted once, whatever its number of buckets."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def head(self, m: MetricSpec) -> str:
        name = m.exposed
        doc = m.help.replace("\\", "\\\\").replace("\n", "\\n")
        self.parts.append(f"# HELP {name} {doc}\n# TYPE {name} {m.kind}\n")
        return name

    @staticmethod
    def labels(names: Sequence[str], values: Sequence[str]) -> str:
        return ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True))

    def sample(self, name: str, labels: str, value: float) -> None:
        self.parts.append(
            f"{name}{{{labels}}} {_num(value)}\n" if labels else f"{name} {_num(value)}\n"
        )


def exposition(snap: _Snapshot) -> bytes:
    """A snapshot in the Prometheus text format."""
    w = _Writer()
    s = snap.session
    name = w.head(metrics.RUN_INFO)
    params = ",".join(f"{k}={v}" for k, v in sorted(s.params.items()))
    values = [s.probe, params, s.kernel, s.hostname, s.tracekit_version, s.mode]
    w.sample(name, w.labels(metrics.RUN_INFO.labels, [*values, str(s.sample_every)]), 1)
    w.sample(w.head(metrics.RUN_ENDED), "", 1 if snap.ended else 0)
    w.sample(w.head(metrics.EVENTS), "", snap.events)
    name = w.head(metrics.LOST_EVENTS)
    for (source, cpu), n in sorted(snap.lost.items()):
        w.sample(name, w.labels(("mechanism", "cpu"), (source, str(cpu) if cpu >= 0 else "all")), n)
    name = w.head(metrics.KERNEL_COUNTER)
    for m, labels in sorted(snap.counters.items()):
        for label, per in labels.items():
            for cpu, n in sorted(per.items()):
                w.sample(name, w.labels(("map", "counter", "cpu"), (m, label, str(cpu))), n)
    series, over = w.head(metrics.SERIES), None
    for hs in snap.hists:
        w.sample(series, w.labels(("metric",), (hs.state.metric.exposed,)), len(hs.sums))
    over = w.head(metrics.SERIES_OVERFLOW)
    for hs in snap.hists:
        w.sample(over, w.labels(("metric",), (hs.state.metric.exposed,)), hs.overflow)
    symbols = s.symbols
    for hs in snap.hists:
        h = hs.state
        name = w.head(h.metric)
        names = h.metric.labels
        # Keys whose labels print the same (values a kernel's enum does not name, say,
        # which all print as their number's text) are one series, summed: the format
        # allows each label set once.
        merged: dict[str, dict[int, int]] = {}
        sums: dict[str, float] = {}
        for key, buckets in hs.series():
            lab = w.labels(names, _label_values(h, key, symbols))
            into = merged.setdefault(lab, {})
            for b, n in buckets.items():
                into[b] = into.get(b, 0) + n
            sums[lab] = sums.get(lab, 0) + hs.sums.get(key, 0)
        if h.spec.kind == "count":
            for lab, buckets in merged.items():
                w.sample(name, lab, buckets.get(0, 0))
            continue
        top = max((b for _, b in hs.cells), default=0)
        bounds = [(b, f'le="{le}"') for b, le in bucket_bounds(h.spec, top)]
        listed = {b for b, _ in bounds}
        bucket, total, count = (
            h.metric.name + "_bucket",
            h.metric.name + "_sum",
            h.metric.name + "_count",
        )
        for lab, buckets in merged.items():
            pre = lab + "," if lab else ""
            cum = sum(n for b, n in buckets.items() if b < 0 and b not in listed)
            for b, le in bounds:
                cum += buckets.get(b, 0)
                w.sample(bucket, pre + le, cum)
            n = sum(buckets.values())
            w.sample(bucket, pre + 'le="+Inf"', n)
            w.sample(count, lab, n)
            w.sample(total, lab, sums[lab])
    return "".join(w.parts).encode()


# -- the HTTP server -------------------------------------------------------------------


class MetricsServer:
    """A small HTTP/1.x server for ``/metrics``, bounded in every direction.

    One thread accepts; each connection is served by a thread of its own, at most
    ``max_requests`` at once (the next connections get ``503`` at once, from the
    accepting thread, without reading them). A request's line and headers must
    arrive within ``timeout`` seconds in total and hold at most ``MAX_REQUEST_HEAD``
    bytes; a response must be taken within ``WRITE_TIMEOUT``. One request per
    connection (``Connection: close``), no request bodies.

    ``render`` builds the body; one render runs at a time, and requests that arrived
    while one ran share the next render's bytes.
    """

    def __init__(
        self,
        addr: str,
        port: int,
        render: Callable[[], bytes],
        *,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        timeout: float = DEFAULT_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_head: int = MAX_REQUEST_HEAD,
    ) -> None:
        self.addr, self.port = addr, port
        self.render = render
        self.max_requests = max_requests
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.max_head = max_head
        self.slots = threading.BoundedSemaphore(max_requests)
        self.sock: socket.socket | None = None
        self.acceptor: threading.Thread | None = None
        self.stopping = threading.Event()
        self._render_lock = threading.Lock()
        self._body: bytes | None = None
        self._body_started = -math.inf
        self._next_render = -math.inf
        self._stats_lock = threading.Lock()
        self.busy = 0  # connections being served now
        self.stats: Counter[str] = Counter()  # responses by status, and renders

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.addr, self.port))
            sock.listen(min(128, 4 * self.max_requests))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self.acceptor = threading.Thread(
            target=self._accept_loop, name="tracekit-metrics", daemon=True
        )
        self.acceptor.start()

    def stop(self) -> None:
        self.stopping.set()
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            sock.close()
        if self.acceptor is not None:
            self.acceptor.join(timeout=5)
            self.acceptor = None

    def _count(self, what: str, busy: int = 0) -> None:
        with self._stats_lock:
            self.stats[what] += 1
            self.busy += busy

    def _accept_loop(self) -> None:
        sock = self.sock
        assert sock is not None
        while not self.stopping.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                time.sleep(0.01)  # EMFILE and the like: let connections end first
                continue
            if not self.slots.acquire(blocking=False):
                self._refuse(conn)
                continue
            self._count("accepted", busy=1)
            try:
                threading.Thread(
                    target=self._serve, args=(conn,), name="tracekit-metrics-req", daemon=True
                ).start()
            except RuntimeError:  # no thread to be had
                self._count("refused", busy=-1)
                self.slots.release()
                conn.close()

    def _refuse(self, conn: socket.socket) -> None:
        """503 without waiting: a fresh socket's send buffer takes it. What the client
        sent already is read first (without waiting), so the close does not reset
        the connection before the client reads the answer."""
        self._count("503")
        try:
            conn.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                conn.recv(self.max_head)
            conn.send(_response(503, b"too many requests at once\n", extra="Retry-After: 1\r\n"))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        status = 0
        try:
            status = self._handle(conn)
        except OSError:
            status = 0  # the client went away or took too long to read
        except Exception as exc:  # noqa: BLE001 - a bug in rendering: answer 500, say it once
            status = 500
            if not self.stats["500"]:
                print(f"tracekit: --sink prometheus: {printable(repr(exc))}", file=sys.stderr)
            with contextlib.suppress(OSError):
                conn.sendall(_response(500, b"internal error\n"))
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self._count(str(status) if status else "dropped", busy=-1)
            self.slots.release()

    def _read_head(self, conn: socket.socket) -> tuple[int, bytes]:
        """(0, head) once the head is in, or (status, b"") to answer and close."""
        deadline = time.monotonic() + self.timeout
        buf = bytearray()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                end = buf.find(b"\n\n")
            if end >= 0:
                return (0, bytes(buf[:end])) if end <= self.max_head else (431, b"")
            if len(buf) > self.max_head:
                return 431, b""
            left = deadline - time.monotonic()
            if left <= 0:
                return 408, b""
            conn.settimeout(left)
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                return 408, b""
            if not chunk:
                return -1, b""  # closed before a whole request
            buf += chunk

    def _handle(self, conn: socket.socket) -> int:
        status, head = self._read_head(conn)
        if status < 0:
            return 0
        arrived = time.monotonic()
        self._count("heads")
        conn.settimeout(self.write_timeout)  # sendall: the total time to send
        if status:
            msg = b"request too slow\n" if status == 408 else b"request head too large\n"
            conn.sendall(_response(status, msg))
            return status
        line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            conn.sendall(_response(400, b"bad request\n"))
            return 400
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            conn.sendall(_response(405, b"GET or HEAD only\n", extra="Allow: GET, HEAD\r\n"))
            return 405
        if target == b"/":
            body = b'<html><body><a href="/metrics">/metrics</a></body></html>\n'
            ctype = "text/html; charset=utf-8"
        elif target == b"/metrics":
            body, ctype = self._metrics(arrived), CONTENT_TYPE
        else:
            conn.sendall(_response(404, b"not found: try /metrics\n"))
            return 404
        # The head alone, then the body: a large body is not copied per connection.
        conn.sendall(_response(200, body, ctype=ctype, head_only=True))
        if method != b"HEAD":
            conn.sendall(body)
        return 200

    def _metrics(self, arrived: float) -> bytes:
        """The body for a request that arrived at ``arrived``: a render begun after.

        Renders take at most ``RENDER_SHARE`` of the time: after one that took ``r``
        seconds the next waits until ``r / RENDER_SHARE`` after the first began, so
        a flood of scrapes slows the scrapes, not the drain (formatting holds
        Python's interpreter lock, which the drain needs too).
        """
        with self._render_lock:
            if self._body is None or self._body_started < arrived:
                wait = self._next_render - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                started = time.monotonic()
                self._body = self.render()
                took = time.monotonic() - started
                self._body_started = started
                self._next_render = started + took / RENDER_SHARE
                self._count("renders")
            return self._body


def _response(
    status: int,
    body: bytes,
    *,
    ctype: str = "text/plain; charset=utf-8",
    extra: str = "",
    head_only: bool = False,
) -> bytes:
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        500: "Internal Server Error",
        405: "Method Not Allowed",
        408: "Request Timeout",
        431: "Request Header Fields Too Large",
        503: "Service Unavailable",
    }[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    ).encode()
    return head if head_only else head + body


@hookimpl
def tracekit_register_sinks(registry: SinkRegistry) -> None:
    registry.add(
        SinkSpec(
            name="prometheus",
            description="serves /metrics for Prometheus while running "
            "(prometheus[=ADDR:PORT][,hold=S][,labels=all][,max_series=N]"
            "[,max_requests=N][,timeout=S])",
            factory=PrometheusSink,
        )
    )
