"""The ``prometheus`` sink: ``/metrics`` in the Prometheus exposition format, live.

``--sink prometheus[=ADDR:PORT][,hold=SECONDS][,labels=all]`` serves, while the run
runs (with no ``--duration``, until Ctrl-C, like an exporter):

* ``tracekit_run_info{probe, params, kernel, hostname, version, mode, sample_every}`` 1
* ``tracekit_run_ended``: 0 while tracing, 1 once the session ended and every value
  is final (what a scrape during ``hold`` is waiting for)
* ``tracekit_events_total``: events the sink received (streamed, after sampling)
* ``tracekit_lost_events_total{mechanism, cpu}``: events the kernel lost
* ``tracekit_kernel_counter_total{map, counter, cpu}``: the probe's in-kernel
  counters, read about once a second while it runs and exact at the end
* one metric per default histogram of the probe: a counter
  ``tracekit_<probe>_<title>_total`` for counts, a Prometheus histogram
  ``tracekit_<probe>_<title>[_<unit>]`` (``le`` buckets, ``_sum``, ``_count``) for
  log2 and linear histograms. The ``le`` bounds are the hist sink's buckets exactly:
  integer values, so log2 bucket ``[2^(k-1), 2^k)`` is ``le="2^k - 1"``.

Label values stay few: a histogram keeps as labels only its key fields that are not
addresses, ports or socket pointers (one series per CPU, queue, interface, kind;
never one per flow). ``labels=all`` keeps them all, for a short run on a test bed.
docs/prometheus.md lists each built-in probe's metrics and labels.

The default address is 127.0.0.1:9435, loopback: exposing a tracer's data to the
network is a choice to make with ``prometheus=0.0.0.0:9435``. ``hold=SECONDS`` keeps
serving after the session ends, so a last scrape sees the final values (a replay
ends at once otherwise); Ctrl-C or SIGTERM ends the hold early.
"""

from __future__ import annotations

import contextlib
import errno
import math
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any

from tracekit import hookimpl
from tracekit.base.errors import UsageError
from tracekit.base.schema import HistSpec, Schema, format_value
from tracekit.base.session import EventBatch, LostReport, Session, Summary
from tracekit.fleet.extras import need, printable
from tracekit.plugin.pipeline import SinkOptions
from tracekit.plugin.registry import SinkRegistry, SinkSpec

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 9435
# hold=SECONDS: at most a day of serving after the run ends.
MAX_HOLD = 24 * 3600.0
# Displays whose values are one per flow or per socket: not labels unless asked.
UNBOUNDED_DISPLAYS = frozenset({"ipv4", "ip", "port", "hex"})


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def metric_name(*parts: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", "_".join(p for p in parts if p))


def bounded_labels(schema: Schema, spec: HistSpec, all_labels: bool = False) -> tuple[str, ...]:
    """The ``by`` fields of ``spec`` kept as Prometheus labels."""
    if all_labels:
        return spec.by
    return tuple(
        n
        for n in spec.by
        if schema.field(n).key and schema.field(n).display not in UNBOUNDED_DISPLAYS
    )


def hist_metric(probe: str, schema: Schema, spec: HistSpec) -> str:
    base = metric_name("tracekit", probe, spec.title or spec.value or "count")
    if spec.kind == "count":
        return base  # the exposition adds _total
    unit = schema.field(spec.value).unit if spec.value else ""
    return metric_name(base, unit) if unit and not base.endswith(unit) else base


def describe(schema: Schema, probe: str, all_labels: bool = False) -> list[tuple[str, str, str]]:
    """(metric, type, labels) for a probe's histograms: what docs/prometheus.md lists."""
    out = []
    for spec in schema.histograms:
        kind = "counter" if spec.kind == "count" else "histogram"
        name = hist_metric(probe, schema, spec) + ("_total" if kind == "counter" else "")
        out.append((name, kind, ", ".join(bounded_labels(schema, spec, all_labels))))
    return out


class _HistState:
    """One histogram's series: counts per (labels, bucket) and sums per labels."""

    def __init__(self, probe: str, schema: Schema, spec: HistSpec, all_labels: bool) -> None:
        self.spec = spec
        self.schema = schema
        self.name = hist_metric(probe, schema, spec)
        self.labels = bounded_labels(schema, spec, all_labels)
        from tracekit.base.hist import Histogram  # here: runs without this sink never load it

        self.bucket = Histogram(spec, schema).bucket
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
        self.counts: dict[Any, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.sums: dict[Any, int] = defaultdict(int)
        field = schema.field(spec.value) if spec.value else None
        self.doc = printable(
            f"{spec.kind} histogram of {spec.value}"
            + (f" ({field.unit})" if field is not None and field.unit else "")
            + (f" by {', '.join(self.labels)}" if self.labels else "")
            if spec.value
            else f"events by {', '.join(self.labels) or 'nothing'}"
        )

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        keys = map(self.key, rows)
        counts, sums, bucket = self.counts, self.sums, self.bucket
        if self.vi is None:
            for k, n in Counter(keys).items():
                counts[k][0] += n
            return
        # Counted at C speed first; the Python loop then runs once per distinct
        # (labels, value) pair, not once per event.
        for (k, v), n in Counter(zip(keys, map(itemgetter(self.vi), rows), strict=True)).items():
            counts[k][bucket(v)] += n
            sums[k] += v * n

    def add_weighted(self, pairs: Sequence[tuple[tuple[Any, ...], int]]) -> None:
        for r, n in pairs:
            k = self.key(r)
            if self.vi is None:
                self.counts[k][0] += n
            else:
                self.counts[k][self.bucket(r[self.vi])] += n
                self.sums[k] += r[self.vi] * n

    def label_values(self, key: Any, symbols: Mapping[int, str]) -> list[str]:
        return [
            format_value(self.schema.field(n), v, symbols)
            for n, v in zip(self.labels, key, strict=True)
        ]

    def bounds(self) -> list[tuple[int, str]]:
        """(bucket index, le) for every bucket this histogram exposes, in order."""
        s = self.spec
        if s.kind == "log2":
            top = max((max(b) for b in self.counts.values() if b), default=0)
            return [(b, str((1 << b) - 1)) for b in range(top + 1)]
        nb = (s.hi - s.lo) // s.step
        out = [(i, str(s.lo + (i + 1) * s.step - 1)) for i in range(nb)]
        # Values below lo: their own bucket only when its bound is not negative (a
        # negative first bound makes the client drop _sum and _count); otherwise
        # they are counted in every bucket, being below all of them.
        return [(-1, str(s.lo - 1)), *out] if s.lo > 0 else out


class PrometheusSink:
    def __init__(self, arg: str | None) -> None:
        self.addr, self.port = DEFAULT_ADDR, DEFAULT_PORT
        self.hold = 0.0
        self.all_labels = False
        self._parse(arg or "")
        self.lock = threading.Lock()
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self.session: Session | None = None
        self.hists: list[_HistState] = []
        self.events = 0
        self.lost: dict[tuple[str, int], int] = defaultdict(int)
        self.counters: Mapping[str, Mapping[str, Mapping[int, int]]] = {}
        self.ended = False

    def _parse(self, arg: str) -> None:
        for part in (p.strip() for p in arg.split(",")):
            if not part:
                continue
            k, sep, v = part.partition("=")
            if sep and k == "hold":
                try:
                    self.hold = float(v)
                except ValueError:
                    raise UsageError(f"--sink prometheus: hold={v!r} is not seconds") from None
                # nan compares false with every bound, and inf failed the sink at the end.
                if not (math.isfinite(self.hold) and 0 <= self.hold <= MAX_HOLD):
                    raise UsageError(
                        f"--sink prometheus: hold={v!r}: must be seconds from 0 to {MAX_HOLD:.0f}"
                    )
            elif sep and k == "labels":
                if v not in ("all", "bounded"):
                    raise UsageError(f"--sink prometheus: labels={v!r}: valid: bounded, all")
                self.all_labels = v == "all"
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
                    f"--sink prometheus: unknown option {part!r} (ADDR:PORT, hold=S, labels=all)"
                )

    def configure(self, opts: SinkOptions) -> None:
        need("prometheus_client", "--sink prometheus")
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
        pc = need("prometheus_client", "--sink prometheus")
        self.session = session
        self.hists = [
            _HistState(session.probe, session.schema, spec, self.all_labels)
            for spec in session.schema.histograms
        ]
        registry = pc.CollectorRegistry(auto_describe=False)
        registry.register(self)
        try:
            self.server, self.thread = pc.start_http_server(
                self.port, addr=self.addr, registry=registry
            )
        except OSError as exc:
            raise UsageError(
                f"--sink prometheus: cannot listen on {self.addr}:{self.port}: {exc.strerror}"
            ) from None
        self.port = int(self.server.server_port)
        print(
            f"tracekit: serving metrics on http://{self.addr}:{self.port}/metrics",
            file=sys.stderr,
            flush=True,
        )

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        if session.aggregated:
            return  # counted in the kernel; the aggregate arrives with the summary
        with self.lock:
            self.events += len(batch.rows)
            for h in self.hists:
                h.add(batch.rows)

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
                    self.counters = summary.counters
                    if session.aggregated:
                        for h in self.hists:
                            h.add_weighted(summary.kernel_agg)
                    self.ended = True
                if self.hold > 0:
                    time.sleep(self.hold)
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM during hold: stop serving now
        finally:
            self.close()

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
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- the collector --------------------------------------------------------------

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        s = self.session
        if s is None:
            return
        with self.lock:
            info = GaugeMetricFamily(
                "tracekit_run_info",
                "the run: probe, parameters, kernel, host, tracekit version",
                labels=["probe", "params", "kernel", "hostname", "version", "mode", "sample_every"],
            )
            params = ",".join(f"{k}={v}" for k, v in sorted(s.params.items()))
            info.add_metric(
                [
                    s.probe,
                    params,
                    s.kernel,
                    s.hostname,
                    s.tracekit_version,
                    s.mode,
                    str(s.sample_every),
                ],
                1,
            )
            yield info
            ended = GaugeMetricFamily(
                "tracekit_run_ended", "1 once the session ended: every value is final"
            )
            ended.add_metric([], 1 if self.ended else 0)
            yield ended
            ev = CounterMetricFamily(
                "tracekit_events", "events received from the kernel (after sampling)"
            )
            ev.add_metric([], self.events)
            yield ev
            lost = CounterMetricFamily(
                "tracekit_lost_events",
                "events the kernel lost, per mechanism (perf, ringbuf, kretprobe, ratelimit) "
                "and CPU",
                labels=["mechanism", "cpu"],
            )
            for (source, cpu), n in sorted(self.lost.items()):
                lost.add_metric([source, str(cpu) if cpu >= 0 else "all"], n)
            yield lost
            kc = CounterMetricFamily(
                "tracekit_kernel_counter",
                "the probe's in-kernel counters per CPU (exact, never sampled)",
                labels=["map", "counter", "cpu"],
            )
            for m, labels in sorted(self.counters.items()):
                for label, per in labels.items():
                    for cpu, n in sorted(per.items()):
                        kc.add_metric([m, label, str(cpu)], n)
            yield kc
            for h in self.hists:
                yield from self._hist_families(h, CounterMetricFamily, HistogramMetricFamily)

    def _hist_families(self, h: _HistState, counter: Any, histogram: Any) -> Iterator[Any]:
        symbols = self.session.symbols if self.session else {}
        if h.spec.kind == "count":
            fam = counter(h.name, h.doc, labels=list(h.labels))
            for key, buckets in h.counts.items():
                fam.add_metric(h.label_values(key, symbols), buckets[0])
            yield fam
            return
        fam = histogram(h.name, h.doc, labels=list(h.labels))
        bounds = h.bounds()
        for key, buckets in h.counts.items():
            listed = {b for b, _ in bounds}
            cum = sum(n for b, n in buckets.items() if b < 0 and b not in listed)
            out = []
            for b, le in bounds:
                cum += buckets.get(b, 0)
                out.append((le, cum))
            out.append(("+Inf", sum(buckets.values())))
            fam.add_metric(h.label_values(key, symbols), out, sum_value=h.sums[key])
        yield fam


@hookimpl
def tracekit_register_sinks(registry: SinkRegistry) -> None:
    registry.add(
        SinkSpec(
            name="prometheus",
            description="serves /metrics for Prometheus while running "
            "(prometheus[=ADDR:PORT][,hold=S][,labels=all])",
            factory=PrometheusSink,
        )
    )
