"""The metric model: what a metrics sink serves for a probe, whatever its wire format.

The ``prometheus`` sink serves it today; a later metrics sink (OTLP, StatsD, ...)
uses the same model so that one probe's metrics have one name, one set of labels and
one set of bucket bounds everywhere:

* **names**: ``tracekit_<probe>_<title>[_<unit>]``, characters outside
  ``[a-zA-Z0-9_]`` replaced by ``_`` (:func:`metric_name`). A counter's name is its
  base name: the Prometheus exposition adds ``_total``, as OpenMetrics does
  (:attr:`MetricSpec.samples` lists the names a scrape shows);
* **bounded labels**: a histogram keeps as labels only its key fields that are not
  addresses, ports or socket pointers (:data:`UNBOUNDED_DISPLAYS`): one series per
  CPU, queue, interface or kind, never one per flow (:func:`bounded_labels`);
* **bucket bounds**: the hist sink's buckets exactly. Values are integers, so the
  log2 bucket ``[2^(k-1), 2^k)`` has the inclusive upper bound ``2^k - 1`` and the
  linear bucket ``[q, q+step)`` has ``q + step - 1`` (:func:`bucket_bounds`);
* **the run's own metrics** (:data:`RUN_METRICS`): run info, end of run, events,
  lost events, in-kernel counters, and the series refused by the series cap.

Layer 0: this module imports nothing of tracekit above ``tracekit.base``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tracekit.base.schema import HistSpec, Schema
from tracekit.base.text import printable

MetricKind = Literal["counter", "gauge", "histogram"]

# Displays whose values are one per flow or per socket: not labels unless asked.
UNBOUNDED_DISPLAYS = frozenset({"ipv4", "ip", "port", "hex"})

# Default cap on the series a metrics sink keeps (label sets of the probe's metrics).
DEFAULT_MAX_SERIES = 10_000


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its base name, kind, label names and help text.

    ``name`` has no ``_total``; ``samples`` gives the names a Prometheus scrape shows
    (``name_total`` for a counter; ``name_bucket``, ``name_sum`` and ``name_count``,
    with an extra ``le`` label on the buckets, for a histogram).
    """

    name: str
    kind: MetricKind
    labels: tuple[str, ...]
    help: str
    # For a probe's metric: the schema field each label's value comes from.
    fields: tuple[str, ...] = ()

    @property
    def exposed(self) -> str:
        """The name docs and queries use for the metric as a whole."""
        return self.name + "_total" if self.kind == "counter" else self.name

    @property
    def samples(self) -> tuple[str, ...]:
        if self.kind == "counter":
            return (self.name + "_total",)
        if self.kind == "histogram":
            return (self.name + "_bucket", self.name + "_sum", self.name + "_count")
        return (self.name,)


RUN_INFO = MetricSpec(
    "tracekit_run_info",
    "gauge",
    ("probe", "params", "kernel", "hostname", "version", "mode", "sample_every"),
    "the run: probe, parameters, kernel, host, tracekit version",
)
RUN_ENDED = MetricSpec(
    "tracekit_run_ended", "gauge", (), "1 once the session ended: every value is final"
)
EVENTS = MetricSpec(
    "tracekit_events", "counter", (), "events received from the kernel (after sampling)"
)
LOST_EVENTS = MetricSpec(
    "tracekit_lost_events",
    "counter",
    ("mechanism", "cpu"),
    "events the kernel lost, per mechanism (perf, ringbuf, kretprobe, ratelimit) and CPU",
)
KERNEL_COUNTER = MetricSpec(
    "tracekit_kernel_counter",
    "counter",
    ("map", "counter", "cpu"),
    "the probe's in-kernel counters per CPU (exact, never sampled)",
)
SERIES_OVERFLOW = MetricSpec(
    "tracekit_series_overflow_events",
    "counter",
    ("metric",),
    "events not counted in a metric because its new series were beyond max_series",
)
SERIES = MetricSpec(
    "tracekit_series",
    "gauge",
    ("metric",),
    "series (label sets) each metric of the probe keeps",
)

# Served for every probe, before the probe's own metrics.
RUN_METRICS: tuple[MetricSpec, ...] = (
    RUN_INFO,
    RUN_ENDED,
    EVENTS,
    LOST_EVENTS,
    KERNEL_COUNTER,
    SERIES,
    SERIES_OVERFLOW,
)


def metric_name(*parts: str) -> str:
    """``parts`` joined by ``_``, every character outside ``[a-zA-Z0-9_]`` made ``_``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", "_".join(p for p in parts if p))


# Label names Prometheus reserves: ``le`` for histogram buckets, ``__*`` for itself.
_RESERVED_LABELS = frozenset({"le", "quantile"})


def label_names(fields: tuple[str, ...]) -> tuple[str, ...]:
    """Valid, distinct Prometheus label names for field names (a replayed trace may
    name its fields anything): characters outside ``[a-zA-Z0-9_]`` become ``_``, and
    a name that starts with a digit or ``__``, is reserved (``le``, ``quantile``) or is
    taken already gets a ``field_`` prefix (and a number, when still taken)."""
    out: list[str] = []
    for f in fields:
        n = re.sub(r"[^a-zA-Z0-9_]", "_", f)
        if not n or n[0].isdigit() or n.startswith("__") or n in _RESERVED_LABELS or n in out:
            n = "field_" + n
        base, i = n, 2
        while n in out:
            n, i = f"{base}_{i}", i + 1
        out.append(n)
    return tuple(out)


def bounded_labels(schema: Schema, spec: HistSpec, all_labels: bool = False) -> tuple[str, ...]:
    """The ``by`` fields of ``spec`` kept as labels: key fields whose display is not in
    :data:`UNBOUNDED_DISPLAYS` (all of them with ``all_labels``)."""
    if all_labels:
        return spec.by
    return tuple(
        n
        for n in spec.by
        if schema.field(n).key and schema.field(n).display not in UNBOUNDED_DISPLAYS
    )


def hist_metric(probe: str, schema: Schema, spec: HistSpec, all_labels: bool = False) -> MetricSpec:
    """The metric one histogram of the probe becomes: a counter for ``count``
    histograms, a histogram for ``log2`` and ``linear`` ones (its value's unit, if
    any, ends the name)."""
    base = metric_name("tracekit", probe, spec.title or spec.value or "count")
    fields = bounded_labels(schema, spec, all_labels)
    labels = label_names(fields)
    if spec.kind == "count":
        doc = printable(f"events by {', '.join(fields) or 'nothing'}")
        return MetricSpec(base, "counter", labels, doc, fields)
    field = schema.field(spec.value) if spec.value else None
    unit = field.unit if field is not None else ""
    name = metric_name(base, unit) if unit and not base.endswith(unit) else base
    doc = printable(
        f"{spec.kind} histogram of {spec.value}"
        + (f" ({unit})" if unit else "")
        + (f" by {', '.join(fields)}" if fields else "")
    )
    return MetricSpec(name, "histogram", labels, doc, fields)


def probe_metrics(schema: Schema, probe: str, all_labels: bool = False) -> list[MetricSpec]:
    """The metrics of a probe's default histograms, in the schema's order (what
    docs/prometheus.md lists per probe)."""
    return [hist_metric(probe, schema, spec, all_labels) for spec in schema.histograms]


def bucket_bounds(spec: HistSpec, top: int = 0) -> list[tuple[int, int]]:
    """(bucket index, inclusive upper bound) of every bucket a histogram exposes, in order.

    Bucket indexes are the hist sink's (``tracekit.base.hist.Histogram.bucket``). A
    log2 histogram exposes buckets 0..``top`` (its highest bucket seen so far, so a
    bound appears when a larger value does); a linear one all of ``[lo, hi)``, plus a
    bucket ``-1`` for values below ``lo`` when its bound ``lo - 1`` is not negative (a
    negative first bound makes Prometheus clients drop ``_sum`` and ``_count``;
    otherwise such values are in every bucket, being below all of them). Values at or
    above ``hi`` are in ``+Inf`` only. ``count`` histograms have no buckets.
    """
    if spec.kind == "log2":
        return [(b, (1 << b) - 1) for b in range(top + 1)]
    if spec.kind != "linear":
        return []
    nb = (spec.hi - spec.lo) // spec.step
    out = [(i, spec.lo + (i + 1) * spec.step - 1) for i in range(nb)]
    return [(-1, spec.lo - 1), *out] if spec.lo > 0 else out
