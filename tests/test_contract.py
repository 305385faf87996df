"""The plugin contract: one import, the Sink base class, hookwrappers, counters, min_kernel."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import tracekit
from tracekit import (
    CounterMap,
    EventBatch,
    Field,
    KernelAggregate,
    PluginError,
    Schema,
    Session,
    Sink,
    SinkOptions,
    SinkRegistry,
    SinkSpec,
    UsageError,
    feed,
    hookimpl,
)
from tracekit.base.errors import KernelTooOldError
from tracekit.bpf.preflight import Report, check_kernel_version
from tracekit.plugin.bus import build_bus

S = Schema(fields=(Field("cpu", "u32", key=True), Field("q", "u16", key=True), Field("n", "u16")))


def sink_plugin(*specs: SinkSpec) -> object:
    class P:
        @hookimpl
        def tracekit_register_sinks(self, registry: SinkRegistry) -> None:
            for s in specs:
                registry.add(s)

    return P()


def test_all_names_resolve_and_match_the_lazy_table() -> None:
    assert set(tracekit.__all__) == {"__version__", "hookimpl", *tracekit._LAZY}
    for name in tracekit.__all__:
        assert getattr(tracekit, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tracekit.nope  # noqa: B018


def test_import_tracekit_stays_light() -> None:
    """``import tracekit`` loads pluggy and, of its own modules, only the old-path finder."""
    code = (
        "import sys, tracekit; print(sorted(m for m in sys.modules if m.startswith('tracekit.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['tracekit._compat']"


class Recording(Sink):
    def __init__(self, arg: str | None) -> None:
        self.field = arg or "cpu"
        self.calls: list[str] = []
        self.force = False

    def configure(self, opts: SinkOptions) -> None:
        self.calls.append("configure")
        self.force = opts.force

    def check_schema(self, schema: Schema) -> None:
        self.calls.append("check_schema")
        if self.field not in schema.names:
            raise UsageError(f"--sink rec={self.field}: no such field")

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        self.calls.append("events")


def test_sink_methods_are_called_before_the_session_in_order() -> None:
    made: list[Recording] = []

    def factory(arg: str | None) -> Recording:
        made.append(Recording(arg))
        return made[-1]

    bus = build_bus(
        extra_plugins=(("p", sink_plugin(SinkSpec("rec", "r", factory))),),
        load_entry_points=False,
    )
    feed(bus, Session(probe="x", schema=S), ["rec"], [[(0, 1, 2)]], force=True)
    assert made[0].calls == ["configure", "check_schema", "events"] and made[0].force
    with pytest.raises(UsageError, match="no such field"):
        feed(bus, Session(probe="x", schema=S), ["rec=nope"], [])
    assert Sink().fields_needed(S) == frozenset()


def test_misspelt_sink_method_is_refused_not_ignored() -> None:
    class Typo:
        def __init__(self, arg: str | None) -> None:
            pass

        def check_shema(self, schema: Schema) -> None:  # never called by tracekit
            raise AssertionError

    bus = build_bus(
        extra_plugins=(("p", sink_plugin(SinkSpec("typo", "t", Typo))),),
        load_entry_points=False,
    )
    with pytest.raises(PluginError, match=r"'check_shema' is never called.*'check_schema'"):
        feed(bus, Session(probe="x", schema=S), ["typo"], [])
    assert PluginError.exit_code == 14


def test_hookwrappers_are_refused_at_registration() -> None:
    class Wrapper:
        @hookimpl(hookwrapper=True)
        def tracekit_register_sinks(self, registry: SinkRegistry) -> Any:
            yield

    with pytest.raises(PluginError, match="plugin w: tracekit_register_sinks is a hookwrapper"):
        build_bus(extra_plugins=(("w", Wrapper()),), load_entry_points=False)

    class SessionWrapper(Sink):
        def __init__(self, arg: str | None) -> None:
            pass

        @hookimpl(wrapper=True)
        def tracekit_events(self, session: Session, batch: EventBatch) -> Any:
            return (yield)

    bus = build_bus(
        extra_plugins=(("p", sink_plugin(SinkSpec("wrap", "w", SessionWrapper))),),
        load_entry_points=False,
    )
    with pytest.raises(PluginError, match="sink:wrap: tracekit_events is a hookwrapper"):
        feed(bus, Session(probe="x", schema=S), ["wrap"], [[(0, 1, 2)]])
    assert not bus.pm.has_plugin("sink:wrap")  # nothing left registered


def test_kernel_aggregate_feeds_the_hist_sink() -> None:
    agg = KernelAggregate.from_counts(S, ("cpu", "q"), {(0, 1): 5, (1, 1): 2})
    assert agg.rows == [((0, 1, 0), 5), ((1, 1, 0), 2)]  # full rows, schema order, zeros
    import contextlib
    import io

    buf = io.StringIO()
    session = Session(probe="x", schema=S)
    with contextlib.redirect_stdout(buf):
        summary = feed(None, session, ["hist=count,by=cpu+q"], [], kernel_agg=agg)
    # The sinks saw a session saying what the kernel aggregated; the caller's is
    # read-only and unchanged.
    assert "# counted in the kernel by cpu, q" in buf.getvalue() and session.aggregated == ()
    assert summary.kernel_agg == tuple(agg.rows)  # read-only: a tuple
    assert "@count[cpu=0, q=1]: 5" in buf.getvalue() and "@count[cpu=1, q=1]: 2" in buf.getvalue()
    with pytest.raises(ValueError, match="has 1 values"):
        KernelAggregate.from_counts(S, ("cpu", "q"), {(0,): 1})


def test_hist_hides_counters_at_zero_and_says_how_many() -> None:
    import contextlib
    import io

    buf = io.StringIO()
    counters = {"drops": {"NOT_SPECIFIED": {0: 0, 1: 0}, "NO_SOCKET": {0: 3, 1: 1}, "X": {0: 0}}}
    with contextlib.redirect_stdout(buf):
        feed(None, Session(probe="x", schema=S), ["hist"], [], counters=counters)
    out = buf.getvalue()
    assert "@drops.NO_SOCKET: total=4  cpu0=3  cpu1=1" in out
    assert "NOT_SPECIFIED" not in out and "total=0" not in out
    assert "# drops: 2 counters at zero not shown" in out


def test_counter_labels_computed_when_the_probe_loads() -> None:
    calls: list[int] = []

    def reasons() -> list[str]:
        calls.append(1)
        return ["NOT_SPECIFIED", "NO_SOCKET"]

    cm = CounterMap("drops", labels_from=reasons)
    assert not calls  # not at import or registration
    assert cm.resolved().labels == ("NOT_SPECIFIED", "NO_SOCKET") and len(calls) == 1
    fixed = CounterMap("c", ("a", "b"))
    assert fixed.resolved() is fixed  # fixed labels: unchanged, as before
    with pytest.raises(ValueError, match="labels or labels_from, not both"):
        CounterMap("both", ("a",), labels_from=reasons)
    with pytest.raises(UsageError, match="no labels"):
        CounterMap("empty").resolved()  # outside a ProbeSpec, whose C would name them
    with pytest.raises(UsageError, match="duplicate"):
        CounterMap("d", labels_from=lambda: ["a", "a"]).resolved()


def test_min_kernel_is_checked_and_names_both_versions() -> None:
    bus = build_bus(load_entry_points=False)
    spec = bus.probes.get("ooo-okay")  # min_kernel 5.8
    r = Report()
    check_kernel_version(r, spec, release="5.4.0-150-generic")
    assert r.checks[0].error is KernelTooOldError and KernelTooOldError.exit_code == 15
    assert r.checks[0].message == (
        "probe ooo-okay needs Linux 5.8 or later; this kernel is 5.4.0-150-generic"
    )
    for ok in ("5.8.0", "6.1.0-18-amd64", "6.10.3+", "not-a-version"):
        r = Report()
        check_kernel_version(r, spec, release=ok)
        assert r.ok, ok
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"min_kernel must be MAJOR\.MINOR"):
        replace(spec, min_kernel="five")


def test_event_struct_other_than_tk_event_is_refused() -> None:
    from dataclasses import replace

    spec = build_bus(load_entry_points=False).probes.get("txq-flip")
    with pytest.raises(ValueError, match="event_struct must be 'tk_event'"):
        replace(spec, event_struct="my_event")
