"""``tracekit run``: preflight, compile, attach, drain into sinks, detach, summarise."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracekit.bus import Bus
from tracekit.contract import sink_fields_needed
from tracekit.errors import InterruptedBeforeStart, UsageError
from tracekit.loader import LoadedProbe, StopSignals, drain_for, remove_stale_bcc_events
from tracekit.pipeline import (
    Pipeline,
    SinkOptions,
    make_sinks,
    raise_if_sink_failed,
    sinks_stream,
)
from tracekit.preflight import choose_loader, preflight
from tracekit.probe_base import KernelProbe
from tracekit.registry import AttachPoint, ProbeSpec
from tracekit.session import EventBatch, Session, Summary


@dataclass
class RunOptions:
    duration: float | None = None
    output: str = "auto"
    max_events_per_sec: int = 0
    page_cnt: int = 64
    force: bool = False
    quiet: bool = False
    # Stream 1 in N events (counters and in-kernel aggregates stay exact).
    sample: int = 1
    # None: decide from the sinks (stream when one needs events, aggregate in the
    # kernel otherwise). Tests force both to compare the two paths.
    stream: bool | None = None
    aggregate: bool | None = None
    # auto: the CO-RE object where it can serve, else BCC (tracekit check says why).
    loader: str = "auto"


def say(msg: str) -> None:
    print(f"tracekit: {msg}", file=sys.stderr, flush=True)


@dataclass
class Compiled:
    probe: KernelProbe  # LoadedProbe (BCC) or CoreProbe (CO-RE)
    points: list[AttachPoint]
    loader: str = "bcc"


def fields_needed(sinks: dict[str, object], spec: ProbeSpec) -> frozenset[str]:
    """The fields the run's sinks read from events (``tracekit.Sink.fields_needed``)."""
    out: set[str] = set()
    for obj in sinks.values():
        out.update(sink_fields_needed(obj, spec.schema))
    return frozenset(out)


def aggregated_fields(spec: ProbeSpec) -> frozenset[str]:
    """The fields an in-kernel aggregate of ``spec`` carries."""
    return frozenset(spec.agg_fields + spec.enriched_fields)


def modes(
    spec: ProbeSpec,
    streaming_sinks: bool,
    opts: RunOptions,
    needed: frozenset[str] = frozenset(),
) -> tuple[bool, bool]:
    """(stream, aggregate): what the kernel side does for this run's sinks.

    Aggregating in the kernel is only chosen when the aggregate carries every field
    the sinks read (``--sink hist=wmem`` on a probe that aggregates by path only
    streams events instead of failing after the run).
    """
    covered = needed <= aggregated_fields(spec)
    stream = (
        opts.stream
        if opts.stream is not None
        else (streaming_sinks or not spec.kernel_aggregation or not covered)
    )
    aggregate = (
        opts.aggregate if opts.aggregate is not None else (spec.kernel_aggregation and not stream)
    )
    return stream, aggregate and spec.kernel_aggregation


def compile_probe(
    spec: ProbeSpec,
    params: dict[str, int],
    opts: RunOptions,
    stream: bool = True,
    aggregate: bool = False,
) -> Compiled:
    """Preflight (raising the first problem) and compile (BCC) or load (CO-RE)."""
    # Counter labels computed on this machine (CounterMap.labels_from), once: the
    # loader reads as many slots as there are labels.
    spec = spec.resolved()
    loader, why = choose_loader(spec, opts.loader, aggregate=aggregate, output=opts.output)
    report, points = preflight(spec, loader)
    report.raise_first()
    if loader == "core":
        from tracekit.core_build import find_object
        from tracekit.core_loader import CoreProbe

        path, _ = find_object(spec)
        assert path is not None  # choose_loader said so
        if not opts.quiet:
            say(f"loading {spec.name} ({why})")
        core = CoreProbe(
            spec,
            params,
            path,
            output=opts.output,
            stream=stream,
            aggregate=aggregate,
            sample=opts.sample,
            max_events_per_sec=opts.max_events_per_sec,
            page_cnt=opts.page_cnt,
        )
        return Compiled(core, points, "core")
    remove_stale_bcc_events()
    if not opts.quiet:
        say(f"compiling {spec.name} ...")
    probe = LoadedProbe(
        spec,
        params,
        output=opts.output,
        stream=stream,
        max_events_per_sec=opts.max_events_per_sec,
        page_cnt=opts.page_cnt,
        aggregate=aggregate,
        sample=opts.sample,
    )
    return Compiled(probe, points)


def run_probe(
    bus: Bus,
    spec: ProbeSpec,
    params: dict[str, int],
    sink_args: tuple[str, ...],
    opts: RunOptions,
    *,
    compiled: Compiled | None = None,
    until: Callable[[], bool] | None = None,
    on_attached: Callable[[], None] | None = None,
    on_detached: Callable[[], None] | None = None,
) -> Summary:
    """Run one probe into the given sinks; ``compiled`` reuses an already compiled probe.

    ``on_attached`` runs once the probe is attached, ``on_detached`` right after it
    is detached (its counters final), before the last drain and before the sinks end
    the session (a sink may take its time there: the prometheus sink's ``hold``), so
    what a lab reads then covers the probe's window and no more.

    Whatever happens (duration end, Ctrl-C, SIGTERM, an error), the probe is
    detached before this returns.
    """
    if compiled is not None:
        params = dict(compiled.probe.params)  # what the probe was compiled with
    session = Session(probe=spec.name, schema=spec.schema, params=params)
    sinks = make_sinks(bus, sink_args, SinkOptions(force=opts.force), spec.schema)
    needed = fields_needed(sinks, spec)
    if compiled is not None and compiled.probe.aggregate and not compiled.probe.stream:
        missing = needed - aggregated_fields(spec)
        if missing:
            raise UsageError(
                f"{', '.join(sorted(missing))}: not in {spec.name}'s in-kernel aggregate "
                f"({', '.join(sorted(aggregated_fields(spec)))}); add a streaming sink "
                "(console, msgpack) or choose one of these fields"
            )
    owned = compiled is None
    summary = Summary(interrupted=True)
    started = False
    with StopSignals() as signals:
        try:
            if compiled is None:
                stream, aggregate = modes(spec, sinks_stream(bus, sink_args), opts, needed)
                compiled = compile_probe(spec, params, opts, stream, aggregate)
            probe = compiled.probe
            session.sample_every = probe.sample if probe.stream else 1
            session.aggregated = (spec.agg_fields + spec.enriched_fields) if probe.aggregate else ()
            enrich = spec.enrich

            def deliver(rows: list[tuple[Any, ...]] | EventBatch) -> None:
                # A batch is delivered whole: Ctrl-C in the middle would leave it
                # counted in the summary but missing from the sinks' output (a
                # trace's footer then names events its batches do not hold).
                with signals.held():
                    if len(rows) and enrich is not None:
                        rows = enrich(
                            probe.bpf, session, rows.rows if isinstance(rows, EventBatch) else rows
                        )
                    pipe.batch(rows)

            with signals.held():
                probe.open_output()
                probe.attach(compiled.points)
            if not opts.quiet:
                where = ", ".join(a.describe() for a in probe.attached)
                how = probe.output if probe.stream else "in-kernel aggregation"
                say(f"attached {where} ({how}); Ctrl-C to stop")
            if on_attached is not None:
                on_attached()
            with Pipeline(bus, session, sinks) as pipe:
                started = True
                # Counters are read while running only for a sink that shows them live
                # (prometheus): a map read per second is a system call per map.
                tick = (
                    (lambda: pipe.counters(probe.read_counters()))
                    if bus.implements("tracekit_counters")
                    else None
                )
                interrupted = drain_for(
                    probe, deliver, pipe.lost, opts.duration, until, on_tick=tick
                )
                with signals.deferred():
                    # Detach first so the last drain and the counters are final.
                    probe.detach()
                    if on_detached is not None:
                        # At once: what the kernel does from here on, the probe never sees.
                        on_detached()
                    deliver(probe.poll(0))
                    for r in probe.new_losses():
                        pipe.lost(r)
                    pipe.summary.counters = probe.read_counters()
                    pipe.summary.kernel_agg = _enriched_agg(probe, session)
                    pipe.summary.interrupted = interrupted
                    if spec.report is not None:
                        pipe.summary.notes = spec.report(pipe.summary)
                    summary = pipe.end()
        except KeyboardInterrupt:
            pass  # before the session started (compile, attach) unless `started`
        finally:
            with signals.deferred():
                if compiled is not None:
                    compiled.probe.detach()
                    if owned:
                        compiled.probe.close()
    if not started:
        raise InterruptedBeforeStart(
            "interrupted before tracing started: nothing attached, nothing recorded"
        )
    if not opts.quiet:
        report_summary(summary)
    raise_if_sink_failed(bus)
    return summary


def _enriched_agg(probe: KernelProbe, session: Session) -> list[tuple[tuple[Any, ...], int]]:
    agg = probe.read_agg()
    enrich = probe.spec.enrich
    if not agg or enrich is None:
        return agg
    rows = enrich(probe.bpf, session, [r for r, _ in agg])
    return list(zip(rows, (n for _, n in agg), strict=True))


def report_summary(summary: Summary) -> None:
    lost = f", {summary.lost_total} LOST" if summary.lost_total else ""
    say(f"{summary.events} events in {summary.duration:.1f}s{lost}")
    for source, per in summary.lost.items():
        cells = ", ".join(
            f"cpu{c}: {n}" if c >= 0 else f"all CPUs: {n}" for c, n in sorted(per.items())
        )
        say(f"lost {sum(per.values())} events ({source}; {cells})")
