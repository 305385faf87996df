"""The metric model (tracekit.base.metrics) and the one ``printable``.

The model is what every metrics sink serves: the prometheus sink's scrape must show
exactly the names, labels and bucket bounds the model gives, and the hist sink's
buckets must land under the bounds the model names.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import tracekit
from tracekit.base import metrics, text
from tracekit.base.hist import Histogram
from tracekit.base.schema import Field, HistSpec, Schema
from tracekit.plugin.bus import build_bus

ROOT = Path(__file__).resolve().parents[1]


def test_model_is_public_and_layer_zero() -> None:
    assert tracekit.MetricSpec is metrics.MetricSpec
    assert tracekit.probe_metrics is metrics.probe_metrics
    tree = ast.parse((ROOT / "tracekit" / "base" / "metrics.py").read_text())
    imported = {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module is not None
    }
    assert all(not m.startswith("tracekit.") or m.startswith("tracekit.base.") for m in imported)


def test_bounds_are_the_hist_sinks_buckets() -> None:
    """Every value lands in the bucket whose bound is the first >= the value."""
    schema = Schema(fields=(Field("v", type="u64"),))
    for spec in (
        HistSpec(value="v", kind="log2"),
        HistSpec(value="v", kind="linear", lo=0, hi=16, step=1),
        HistSpec(value="v", kind="linear", lo=10, hi=50, step=5),
    ):
        h = Histogram(spec, schema)
        for v in range(0, 200):
            b = h.bucket(v)
            bounds = metrics.bucket_bounds(spec, top=b if spec.kind == "log2" else 0)
            les = [le for _, le in bounds]
            idx = [i for i, _ in bounds]
            first = next((le for le in les if v <= le), None)
            if b in idx:
                assert first == les[idx.index(b)], (spec.kind, v, b)
            else:  # beyond hi: only +Inf holds it
                assert first is None and v >= spec.hi, (spec.kind, v, b)
    # A negative first bound is never exposed (clients drop _sum and _count then).
    below = HistSpec(value="v", kind="linear", lo=0, hi=4, step=1)
    assert [le for _, le in metrics.bucket_bounds(below)] == [0, 1, 2, 3]


def test_labels_bounded_and_valid() -> None:
    bus = build_bus()
    seen = {}
    for spec in bus.probes:
        for m in metrics.probe_metrics(spec.schema, spec.name):
            seen[m.name] = m
            for f in m.fields:
                assert spec.schema.field(f).display not in metrics.UNBOUNDED_DISPLAYS
            assert len(m.labels) == len(m.fields)
    assert seen["tracekit_rss_cpu_flow_cpu"].labels == ("cpu",)
    assert seen["tracekit_txq_flip_queue_after"].kind == "histogram"
    assert (
        seen["tracekit_txq_flip_queue_after"].samples[0] == "tracekit_txq_flip_queue_after_bucket"
    )
    # A replayed trace may name its fields anything: label names stay valid and distinct.
    names = metrics.label_names(("a-b", "a_b", "le", "__name__", "9x", ""))
    assert len(set(names)) == 6
    assert all(n[0].isalpha() and not n.startswith("__") and n != "le" for n in names), names


def test_one_printable_that_doubles_backslashes() -> None:
    s = "eth\\x1b0\x1b[2J"
    assert text.printable(s) == "eth\\\\x1b0\\x1b[2J"
    assert tracekit.printable is text.printable
    from tracekit.fleet import extras

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert extras.printable(s) == text.printable(s)
    assert any(issubclass(x.category, DeprecationWarning) for x in w)


@pytest.mark.parametrize("top", ["tracekit", "plugins", "probes"])
def test_every_printable_used_is_the_one_that_doubles_backslashes(top: str) -> None:
    """No module imports ``printable`` from anywhere but tracekit.base.text (or
    ``tracekit``, which re-exports it), nor defines one of its own."""
    for path in (ROOT / top).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(a.name == "printable" for a in node.names):
                assert node.module in ("tracekit.base.text", "tracekit"), (path, node.module)
            if isinstance(node, ast.FunctionDef) and node.name == "printable":
                assert path.name in ("text.py", "extras.py"), path
                if path.name == "extras.py":  # the deprecated alias forwards
                    assert "_printable(text)" in ast.unparse(node)
    from tracekit.fleet import export, plot
    from tracekit.plugins import prometheus_sink

    for mod in (export, plot, prometheus_sink):
        assert mod.printable is text.printable, mod.__name__
