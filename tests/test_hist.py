from __future__ import annotations

import pytest

from tracekit.base.hist import Histogram, log2_bucket, log2_label, parse_hist_arg
from tracekit.base.schema import Field, HistSpec, Schema

S = Schema(
    fields=(
        Field("cpu", "u32", key=True),
        Field("lat", "u64", unit="us"),
        Field("q", "u16", key=True, display="queue"),
    )
)


@pytest.mark.parametrize("v,b", [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (1023, 10), (1024, 11)])
def test_log2_buckets(v: int, b: int) -> None:
    assert log2_bucket(v) == b


def test_log2_labels_like_bpftrace() -> None:
    assert [log2_label(b) for b in (0, 1, 2, 3, 11, 21)] == [
        "[0]",
        "[1]",
        "[2, 4)",
        "[4, 8)",
        "[1K, 2K)",
        "[1M, 2M)",
    ]


def test_linear_render_matches_bpftrace_layout() -> None:
    h = Histogram(
        HistSpec(value="q", by=("cpu",), kind="linear", lo=0, hi=12, step=1, title="qa"), S
    )
    h.add_rows([(6, 0, 6)] * 5 + [(6, 0, 11)] * 2 + [(11, 0, 13)] * 6)
    text = h.render()
    assert text.splitlines() == [
        "@qa[cpu=6]:",
        "[6, 7)                 5 |" + "@" * 52 + "|",
        "[7, 8)                 0 |" + " " * 52 + "|",
        "[8, 9)                 0 |" + " " * 52 + "|",
        "[9, 10)                0 |" + " " * 52 + "|",
        "[10, 11)               0 |" + " " * 52 + "|",
        "[11, 12)               2 |" + "@" * 20 + " " * 32 + "|",
        "",
        "@qa[cpu=11]:",
        "[12, ...)              6 |" + "@" * 52 + "|",
    ]


def test_log2_histogram_with_unit_and_keys_shown_by_display() -> None:
    h = Histogram(HistSpec(value="lat", by=("q",)), S)
    h.add_rows([(0, 3, 0xFFFF), (0, 5, 0xFFFF), (0, 100, 1)])
    text = h.render()
    assert "@lat[q=none] (us):" in text and "@lat[q=1] (us):" in text
    assert "[2, 4)                 1 |" in text and "[64, 128)              1 |" in text


def test_count_kind() -> None:
    h = Histogram(HistSpec(value=None, by=("cpu",), kind="count"), S)
    h.add_rows([(0, 1, 1), (0, 1, 1), (1, 1, 1)])
    assert h.render().splitlines() == ["@count[cpu=0]: 2", "@count[cpu=1]: 1"]


def test_empty_histogram_says_so() -> None:
    assert Histogram(HistSpec(value="lat"), S).render() == "@lat (us): no events\n"


def test_parse_hist_arg() -> None:
    assert parse_hist_arg("lat,by=cpu+q", S) == HistSpec(value="lat", by=("cpu", "q"))
    assert parse_hist_arg("q,by=cpu,linear=0:8:2", S) == HistSpec(
        value="q", by=("cpu",), kind="linear", lo=0, hi=8, step=2
    )
    assert parse_hist_arg("count,by=cpu", S).kind == "count"
    with pytest.raises(KeyError):
        parse_hist_arg("nope", S)
    with pytest.raises(ValueError):
        parse_hist_arg("lat,linear=1:2", S)
    with pytest.raises(ValueError):
        parse_hist_arg("lat,colour=red", S)


def test_hist_sink_prints_the_kernel_aggregate(capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from tracekit.base.session import Session
    from tracekit.plugin.bus import build_bus
    from tracekit.plugin.pipeline import Pipeline, SinkOptions, build_sinks

    both = Session(probe="p", schema=S, aggregated=("cpu", "q"))
    kernel_only = replace(both, streamed=False)
    bus = build_bus(load_entry_points=False)
    for session, arg, agg, ok in (
        (both, "count,by=cpu+q", [((0, 0, 1), 5), ((1, 0, 1), 2)], True),
        (kernel_only, "count,by=cpu+q", [((0, 0, 1), 5), ((1, 0, 1), 2)], True),
        (kernel_only, "lat,by=cpu", [((0, 0, 1), 5)], False),
        (replace(kernel_only, mode="replay"), "lat,by=cpu", [((0, 0, 1), 5)], False),
    ):
        sinks = build_sinks(bus, (f"hist={arg}",), SinkOptions(), S)
        with Pipeline(bus, session, sinks.objects) as pipe:
            if session.streamed:
                pipe.batch([(0, 9, 9)] * 100)  # streamed too: the aggregate is what counts
            pipe.end(kernel_agg=agg)
        out, err = capsys.readouterr()
        if ok:
            assert (
                "@count[cpu=0, q=1]: 5" in out
                and "@count[cpu=1, q=1]: 2" in out
                and not pipe.failures
            )
            assert "# counted in the kernel by cpu, q" in out
            assert ("100 streamed events are not counted twice" in out) == session.streamed
        elif session.mode == "live":
            assert "needs lat, which the kernel did not aggregate" in err
            assert "add a streaming sink" in err
            assert list(pipe.failures.errors) == ["sink:hist"]
        else:
            # On a replay there is no sink to add: say what the trace holds.
            assert "this trace holds only the counts the kernel kept by cpu, q" in err
            assert "add a streaming sink" not in err


def test_hist_of_a_field_the_kernel_did_not_count_uses_the_streamed_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run that streamed and counted in the kernel: hist=lat reads the events."""
    from tracekit.base.session import Session
    from tracekit.plugin.bus import build_bus
    from tracekit.plugin.pipeline import Pipeline, SinkOptions, build_sinks

    session = Session(probe="p", schema=S, aggregated=("cpu", "q"))
    bus = build_bus(load_entry_points=False)
    sinks = build_sinks(bus, ("hist=lat,by=cpu;count,by=cpu",), SinkOptions(), S)
    with Pipeline(bus, session, sinks.objects) as pipe:
        pipe.batch([(0, 9, 9)] * 100)
        pipe.end(kernel_agg=[((0, 0, 1), 5)])
    out, err = capsys.readouterr()
    assert not pipe.failures and err == ""
    assert "@lat[cpu=0] (us):" in out and "[8, 16)              100 |" in out
    assert "@count[cpu=0]: 5" in out  # the kernel's count, not the 100 streamed


def test_hist_on_a_field_the_kernel_does_not_aggregate_streams_instead() -> None:
    """``--sink hist=wmem`` on ooo-okay: the kernel's aggregate has no wmem, so the run
    streams events (it used to aggregate, then fail as a sink after the whole run)."""
    from tracekit.live.run import RunOptions, modes
    from tracekit.plugin.bus import build_bus
    from tracekit.plugin.pipeline import SinkOptions, build_sinks

    bus = build_bus()
    spec = bus.probes.get("ooo-okay")
    for arg, expect in (
        ("hist=wmem", (True, False)),
        ("hist=count,by=wmem_low+path", (False, True)),
        ("hist", (False, True)),
    ):
        sinks = build_sinks(bus, (arg,), SinkOptions(), spec.schema)
        assert modes(spec, sinks.streams, RunOptions(), sinks.fields_needed) == expect, arg


def test_hist_field_missing_from_a_precompiled_aggregate_is_a_usage_error() -> None:
    """A lab or test reusing a probe compiled to aggregate: refused before attaching."""
    from tracekit.base.errors import UsageError
    from tracekit.live.run import RunOptions, run_probe
    from tracekit.plugin.bus import build_bus
    from tracekit.testing import StandInProbe

    bus = build_bus()
    spec = bus.probes.get("ooo-okay")
    # Compiled to aggregate only: refused before anything is attached.
    probe = StandInProbe(spec, aggregate=True, stream=False)
    with pytest.raises(UsageError, match=r"wmem: not in ooo-okay's in-kernel aggregate"):
        run_probe(bus, spec, None, ("hist=wmem",), RunOptions(), compiled=probe.compiled())
    assert probe.attached == [] and probe.detached == 0



def test_keys_beyond_the_counter_limit_are_folded_and_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tracekit.base.hist as hist

    monkeypatch.setattr(hist, "MAX_HIST_CELLS", 3)
    h = Histogram(HistSpec(value="lat", by=("cpu",)), S)
    h.add_rows([(cpu, 5, 0) for cpu in range(10)])  # 10 keys, one bucket each
    h.add_rows([(0, 5, 0), (0, 100, 0)])  # an old cell, then a new cell of an old key
    assert h.cells == 3 and h.folded == 8
    assert sum(sum(b.values()) for b in h.data.values()) == 12  # nothing lost
    out = h.render()
    assert "# @lat: 8 events with keys seen after 3 counters" in out
    assert out.index("@lat[cpu=2]") < out.index("@lat[other keys]")


def test_sparse_wide_histograms_leave_out_empty_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    import tracekit.base.hist as hist

    spec = HistSpec(value="lat", by=("cpu",), kind="linear", lo=0, hi=10_000, step=1)
    h = Histogram(spec, S)
    h.add_rows([(0, 0, 0), (0, 9_999, 0)])
    assert len(h.render().splitlines()) == 10_000 + 1  # dense: every bucket, like bpftrace
    monkeypatch.setattr(hist, "MAX_DENSE_LINES", 100)
    out = h.render().splitlines()
    assert out[0] == "# @lat: empty buckets left out (too many to print)"
    assert [ln.split()[0] for ln in out[2:]] == ["[0,", "[9999,"]
