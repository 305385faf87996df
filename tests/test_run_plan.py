"""A run is planned once: sinks built once, parameters settled, the session read-only."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from click.testing import CliRunner

from tracekit import (
    Field,
    KernelNames,
    RunOptions,
    Schema,
    Session,
    SinkOptions,
    SinkRegistry,
    SinkSpec,
    UsageError,
    hookimpl,
)
from tracekit.cli.main import cli
from tracekit.live.run import Compiled, plan_run
from tracekit.plugin.bus import build_bus
from tracekit.plugin.pipeline import Pipeline
from tracekit.testing import StandInProbe

S = Schema(fields=(Field("cpu", "u32", key=True), Field("n", "u16")))


class Counting:
    """A sink plugin whose factory records every sink object it builds."""

    def __init__(self) -> None:
        self.built: list[str | None] = []

    @hookimpl
    def tracekit_register_sinks(self, registry: SinkRegistry) -> None:
        def make(arg: str | None) -> object:
            self.built.append(arg)
            return object()

        registry.add(SinkSpec("counting", "counts its own construction", make))


def test_tracekit_run_builds_each_sink_once_and_compiles_the_given_params(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tracekit.cli.main as tcli
    import tracekit.live.run as trun

    plugin = Counting()
    bus = build_bus(extra_plugins=(("counting", plugin),))
    monkeypatch.setattr(tcli, "_bus", lambda ctx: bus)
    compiled_with: list[dict[str, int]] = []

    def stop(spec: Any, params: dict[str, int], *a: Any) -> Any:
        compiled_with.append(params)
        raise UsageError("stopped before compiling")

    monkeypatch.setattr(trun, "compile_probe", stop)
    args = ["run", "txq-flip", "--sink", "counting=a", "--sink", "counting=b"]
    res = CliRunner().invoke(cli, [*args, "--param", "ifindex=3"])
    assert isinstance(res.exception, UsageError), res.output
    assert str(res.exception) == "stopped before compiling"
    assert plugin.built == ["a", "b"]  # once each: it used to be twice
    assert compiled_with == [{"ifindex": 3}]


def _shared(spec: Any, params: dict[str, int]) -> Compiled:
    # Only what planning reads of a compiled probe: nothing is attached.
    return StandInProbe(spec, params=params).compiled()


def test_params_differing_from_a_shared_compiled_probe_are_refused() -> None:
    bus = build_bus()
    spec = bus.probes.get("txq-flip")
    shared = _shared(spec, {"ifindex": 0})
    with pytest.raises(UsageError, match=r"ifindex=7 differ from ifindex=0"):
        plan_run(bus, spec, {"ifindex": 7}, ("hist",), RunOptions(), compiled=shared)
    # None: the compiled probe's own; the same ones: accepted.
    for given in (None, {"ifindex": 0}):
        plan = plan_run(bus, spec, given, ("hist",), RunOptions(), compiled=shared)
        assert dict(plan.params) == {"ifindex": 0} and plan.session().params == {"ifindex": 0}
    with pytest.raises(UsageError, match="cannot run as ooo-okay"):
        plan_run(bus, bus.probes.get("ooo-okay"), None, ("hist",), RunOptions(), compiled=shared)


def test_the_plan_and_its_session_are_read_only() -> None:
    bus = build_bus()
    spec = bus.probes.get("ooo-okay")
    streamed = plan_run(bus, spec, None, ("console",), RunOptions(sample=4))
    assert streamed.stream and streamed.session().sample_every == 4
    assert streamed.session().aggregated == ()
    counted = plan_run(bus, spec, None, ("hist",), RunOptions(sample=4))
    assert (counted.stream, counted.aggregate) == (False, True)
    session = counted.session()
    assert session.sample_every == 1 and "path" in session.aggregated
    with pytest.raises(dataclasses.FrozenInstanceError):
        counted.stream = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.sample_every = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        counted.params["all"] = 1  # type: ignore[index]
    # 0.1.0's way for enrich to name an address still works, deprecated; the name
    # is recorded as the session's names record any (append-only).
    with pytest.warns(DeprecationWarning, match=r"session.symbols\[...\] = .*0\.3\.0"):
        session.symbols[1] = "x"  # type: ignore[index]
    assert session.names.added_since((0, 0))[0] == [(1, "x")]
    with pytest.raises(TypeError):
        counted.sinks.objects["sink:x"] = object()  # type: ignore[index]


def test_the_session_copies_its_params() -> None:
    params = {"all": 1}
    session = Session(probe="p", schema=S, params=params)
    params["all"] = 0
    assert session.params == {"all": 1} and session.header()["params"] == {"all": 1}


def test_kernel_names_say_what_was_added_since_a_mark() -> None:
    names = KernelNames()
    names.add_symbols({1: "a", 2: "b"})
    mark = names.mark()
    assert names.added_since(mark) == ([], [])
    names.add_symbols({2: "b", 3: "c"})  # 2 again: not new
    names.add_stacks({7: [1, 3]})
    assert names.added_since(mark) == ([(3, "c")], [(7, [1, 3])])
    assert names.added_since((0, 0))[0] == [(1, "a"), (2, "b"), (3, "c")]
    assert names.labels("paths") is names.labels("paths")


class Broken:
    @hookimpl
    def tracekit_events(self, session: Session, batch: Any) -> None:
        raise RuntimeError("boom")


def test_the_pipeline_owns_its_summary_and_failures(capsys: pytest.CaptureFixture[str]) -> None:
    bus = build_bus(load_entry_points=False)
    session = Session(probe="p", schema=S)
    with Pipeline(bus, session, {"sink:broken": Broken()}) as pipe:
        pipe.batch([(0, 1), (1, 2)])
        summary = pipe.end(counters={"m": {"x": {0: 3}}}, interrupted=True)
        with pytest.raises(RuntimeError, match="ends once"):
            pipe.end()
    assert summary.events == 2 and summary.interrupted and summary.counters["m"]["x"] == {0: 3}
    assert list(pipe.failures.errors) == ["sink:broken"]
    assert "sink sink:broken failed in tracekit_events" in capsys.readouterr().err
    # A second session on the same bus starts with no failures of its own.
    with Pipeline(bus, session, {}) as again:
        again.end()
    assert not again.failures and not hasattr(bus, "failures")


# -- executing a plan, with a user-space stand-in for the loaded probe ----------------
#
# The kernel side (compiling, attaching, buffers) is covered by the VM tests; this one
# checks tracekit's own plumbing on any machine: the plan's sinks get every batch the
# probe yields, enrich records names in the session, the trace stores them, and the
# summary is the pipeline's.

NAMES = {0xFFFF0001: "tcp_sendmsg", 0xFFFF0002: "tcp_ack", 0xFFFF0003: "tcp_v4_do_rcv"}
STACKS = {1: [0xFFFF0001], 2: [0xFFFF0002, 0xFFFF0003]}
COUNTERS = {"ooo_counts": {"transmitted": {0: 40}, "ooo_okay": {0: 10}}}


def test_execute_delivers_enriches_records_names_and_summarises(tmp_path: Any) -> None:
    from tracekit.live.run import execute
    from tracekit.probes.ooo_okay import PATHS, path_of
    from tracekit.testing import synthetic_rows
    from tracekit.traces.replay import replay
    from tracekit.traces.tracefile import SYMBOLS, TraceReader

    bus = build_bus(load_entry_points=False)
    spec = bus.probes.get("ooo-okay")
    sid = spec.schema.index("stack_id")
    rows = [
        (*r[:sid], 1 + i % 2, *r[sid + 1 :]) for i, r in enumerate(synthetic_rows(spec.schema, 40))
    ]
    probe = StandInProbe(
        spec, [rows[:25], rows[25:]], stacks=STACKS, symbols=NAMES, counters=COUNTERS
    )
    trace = tmp_path / "t.tkt"
    plan = plan_run(
        bus,
        spec,
        None,
        (f"msgpack={trace}",),
        RunOptions(duration=60, quiet=True),
        compiled=probe.compiled(),
    )
    summary = execute(bus, plan, until=lambda: not probe.batches)
    assert summary.events == 40 and not summary.interrupted and probe.detached >= 1
    assert summary.notes == (
        "ooo_okay share: 10/40 skbs = 25.00% (wmem low: 0, rtx queue empty: 0)",
    )
    # Each stack walked and each address named once, however many events carry them.
    assert (probe.lookups, probe.symbol_calls) == ({"tk_stacks": 2}, 3)
    reader = TraceReader(str(trace))
    stored: dict[int, str] = {}
    path = spec.schema.index("path")
    paths = set()
    for rec in reader.records():
        if rec.kind == SYMBOLS:
            stored.update(rec.payload[0])
        elif rec.payload is not None and hasattr(rec.payload, "rows"):
            paths.update(r[path] for r in rec.payload.rows)
    assert stored == NAMES
    want = {PATHS.index(path_of([NAMES[a] for a in s])) for s in STACKS.values()}
    assert paths == want and len(want) == 2
    assert replay(bus, str(trace), (), SinkOptions()).events == 40


def test_a_stop_signal_right_after_attached_ends_the_run_as_interrupted(tmp_path: Any) -> None:
    """SIGTERM between "attached" and the drain loop (the sinks still starting: seen
    on a loaded 7.2 VM) is an interrupted run with a summary and a trace footer,
    not "interrupted before tracing started: nothing attached"."""
    import os
    import signal

    from tracekit.live.run import execute
    from tracekit.testing import synthetic_rows
    from tracekit.traces.tracefile import TraceReader

    bus = build_bus(load_entry_points=False)
    spec = bus.probes.get("rss-cpu")
    probe = StandInProbe(spec, [synthetic_rows(spec.schema, 5)] * 100)
    trace = tmp_path / "t.tkt"
    plan = plan_run(
        bus,
        spec,
        None,
        (f"msgpack={trace}",),
        RunOptions(duration=60, quiet=True),
        compiled=probe.compiled(),
    )
    summary = execute(bus, plan, on_attached=lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert summary.interrupted and probe.detached >= 1
    assert len(probe.batches) > 90, "the run went on draining after the signal"
    reader = TraceReader(str(trace))
    list(reader.records())
    assert reader.footer is not None and reader.footer.interrupted


def test_the_summary_sinks_get_is_read_only() -> None:
    """Every sink's tracekit_session_end gets one Summary that none can change."""
    import dataclasses

    from tracekit.base.session import LostReport, Summary

    seen: list[Summary] = []

    class Meddler:
        @hookimpl
        def tracekit_session_end(self, session: Any, summary: Summary) -> None:
            seen.append(summary)
            with pytest.raises(dataclasses.FrozenInstanceError):
                summary.events = 0  # type: ignore[misc]
            with pytest.raises(TypeError):
                summary.counters["c"] = {}  # type: ignore[index]
            with pytest.raises(TypeError):
                summary.counters["c"]["x"][0] = 5  # type: ignore[index]
            with pytest.raises(TypeError):
                summary.lost["perf"][0] = 0  # type: ignore[index]
            with pytest.raises(AttributeError):
                summary.notes.append("x")  # type: ignore[attr-defined]

    bus = build_bus(load_entry_points=False)
    spec = bus.probes.get("rss-cpu")
    session = Session(probe="rss-cpu", schema=spec.schema, params={})
    with Pipeline(bus, session, {"meddler": Meddler()}) as pipe:
        pipe.lost(LostReport("perf", {0: 3}))
        got = pipe.end(counters={"c": {"x": {0: 1}}}, report=lambda s: ["a note"])
    assert pipe.failures.errors == {}, pipe.failures.errors
    assert seen == [got]
    assert got.lost == {"perf": {0: 3}} and got.counters == {"c": {"x": {0: 1}}}
    assert got.notes == ("a note",)
