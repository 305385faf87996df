"""``tracekit run``: plan, load (BCC or CO-RE), attach, drain into sinks, detach, summarise.

The loader is chosen when the run is planned (``plan_run``: ``tracekit.bpf.load.
choose``) and the probe loaded through the one seam, ``tracekit.bpf.load.load``;
the drain loop is ``tracekit.live.drain`` and the stop signals
``tracekit.live.signals``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tracekit.base.errors import InterruptedBeforeStart, UsageError
from tracekit.base.findings import print_findings
from tracekit.base.session import EventBatch, Session, Summary
from tracekit.bpf.ksyms import KsymNamer
from tracekit.bpf.load import LoadChoice, choose, load
from tracekit.bpf.probe_base import LoadedProbe, LoadOptions, run_enrich
from tracekit.live.drain import drain_for
from tracekit.live.signals import StopSignals
from tracekit.plugin.bus import Bus
from tracekit.plugin.pipeline import Pipeline, SinkOptions, Sinks, build_sinks
from tracekit.plugin.registry import AttachPoint, ProbeSpec


@dataclass(frozen=True)
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
    # How the findings are printed on stderr after the summary: text, json or off.
    findings: str = "text"
    # Session metadata beside what the probe reads (``ProbeSpec.metadata``): a lab's
    # facts from inside its network namespaces (their XPS and RPS maps).
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # --time: how sinks that print show timestamps (SinkOptions.time).
    time: str = "rel"
    # End the run (as SIGTERM does) when the process that started tracekit dies.
    exit_with_parent: bool = False

    def load_options(self, stream: bool = True, aggregate: bool = False) -> LoadOptions:
        """What the loader is given for a run with these options."""
        return LoadOptions(
            loader=self.loader,
            output=self.output,
            stream=stream,
            aggregate=aggregate,
            sample=self.sample,
            max_events_per_sec=self.max_events_per_sec,
            page_cnt=self.page_cnt,
            quiet=self.quiet,
        )


def say(msg: str) -> None:
    print(f"tracekit: {msg}", file=sys.stderr, flush=True)


@dataclass
class Compiled:
    """A loaded probe and the attach points it is attached at."""

    probe: LoadedProbe  # BccProbe (BCC) or CoreProbe (CO-RE), or a stand-in
    points: list[AttachPoint]
    loader: str = "bcc"
    choice: LoadChoice | None = None


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
    choice: LoadChoice | None = None,
) -> Compiled:
    """Preflight (raising the first problem) and compile (BCC) or load (CO-RE),
    by ``choice`` (``tracekit.bpf.load.choose``, made here when not given)."""
    lopts = opts.load_options(stream, aggregate)
    if choice is None:
        choice = choose(spec, lopts)
    probe = load(spec, params, lopts, choice=choice)
    return Compiled(probe, list(choice.points), choice.loader, choice)


@dataclass(frozen=True)
class RunPlan:
    """Everything one run does, decided before anything is compiled or attached.

    ``tracekit run``, the labs and the ``tracekit_run_probe`` fixture each build one
    (``plan_run``) and hand it to ``execute``: sinks are built and checked once,
    the stream/aggregate choice is made once, and the session the sinks see is
    fixed here. A plan runs once (its sink objects hold one session's state).
    """

    spec: ProbeSpec
    # The parameters the probe runs with (its compiled ones when ``compiled`` is given).
    params: Mapping[str, int]
    sinks: Sinks
    # Stream single events to user space; count in the kernel (both may be on).
    stream: bool
    aggregate: bool
    opts: RunOptions
    # A probe compiled earlier and shared between runs (tests, labs); the run
    # neither compiles nor closes it.
    compiled: Compiled | None = None
    # Which loader, CO-RE object (path, SHA-256) and attach points the run uses,
    # decided once when planned (None for a plan of a shared compiled probe made
    # without one).
    load: LoadChoice | None = None

    def session(self) -> Session:
        """The session the sinks are handed, read-only to them."""
        sample = self.compiled.probe.sample if self.compiled else self.opts.sample
        return Session(
            metadata=session_metadata(self.spec, self.params, self.opts.metadata),
            probe=self.spec.name,
            schema=self.spec.schema,
            params=self.params,
            sample_every=sample if self.stream else 1,
            aggregated=(self.spec.agg_fields + self.spec.enriched_fields) if self.aggregate else (),
            streamed=self.stream,
        )


def session_metadata(
    spec: ProbeSpec, params: Mapping[str, int], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """What the probe reads from the machine (``ProbeSpec.metadata``), then ``extra``.

    A probe's reader that fails costs its metadata, not the run (one warning)."""
    out: dict[str, Any] = {}
    if spec.metadata is not None:
        try:
            out.update(spec.metadata(params))
        except Exception as exc:  # noqa: BLE001 - metadata explains, it never decides
            say(f"warning: {spec.name}: could not read its metadata: {type(exc).__name__}: {exc}")
    out.update(extra)
    return out


def plan_run(
    bus: Bus,
    spec: ProbeSpec,
    params: Mapping[str, int] | None,
    sink_args: tuple[str, ...],
    opts: RunOptions,
    *,
    compiled: Compiled | None = None,
) -> RunPlan:
    """Check and decide a run: sinks built, parameters and modes settled.

    ``params`` None means the probe's defaults, or the parameters ``compiled`` was
    compiled with; parameters that differ from a shared compiled probe's are a
    usage error (the probe would trace with its own, not the ones asked for).
    """
    sinks = build_sinks(bus, sink_args, SinkOptions(force=opts.force, time=opts.time), spec.schema)
    if compiled is None:
        values = dict(params) if params is not None else spec.resolve_params({})
        stream, aggregate = modes(spec, sinks.streams, opts, sinks.fields_needed)
        choice = choose(spec, opts.load_options(stream, aggregate))
        return RunPlan(spec, MappingProxyType(values), sinks, stream, aggregate, opts, load=choice)
    probe = compiled.probe
    if probe.spec.name != spec.name:
        raise UsageError(f"a compiled {probe.spec.name} probe cannot run as {spec.name}")
    have = dict(probe.params)
    if params is not None and dict(params) != have:
        raise UsageError(
            f"{spec.name}: parameters {_show(params)} differ from {_show(have)}, which the "
            "shared compiled probe was compiled with; compile one probe per parameter set"
        )
    if probe.aggregate and not probe.stream:
        missing = sinks.fields_needed - aggregated_fields(spec)
        if missing:
            raise UsageError(
                f"{', '.join(sorted(missing))}: not in {spec.name}'s in-kernel aggregate "
                f"({', '.join(sorted(aggregated_fields(spec)))}); add a streaming sink "
                "(console, msgpack) or choose one of these fields"
            )
    return RunPlan(
        spec,
        MappingProxyType(have),
        sinks,
        probe.stream,
        probe.aggregate,
        opts,
        compiled,
        load=compiled.choice,
    )


def _show(params: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "(none)"


def run_probe(
    bus: Bus,
    spec: ProbeSpec,
    params: Mapping[str, int] | None,
    sink_args: tuple[str, ...],
    opts: RunOptions,
    *,
    compiled: Compiled | None = None,
    until: Callable[[], bool] | None = None,
    on_attached: Callable[[], None] | None = None,
    on_detached: Callable[[], None] | None = None,
) -> Summary:
    """Plan a run (``plan_run``) and execute it."""
    plan = plan_run(bus, spec, params, sink_args, opts, compiled=compiled)
    return execute(bus, plan, until=until, on_attached=on_attached, on_detached=on_detached)


def execute(
    bus: Bus,
    plan: RunPlan,
    *,
    until: Callable[[], bool] | None = None,
    on_attached: Callable[[], None] | None = None,
    on_detached: Callable[[], None] | None = None,
) -> Summary:
    """Run a planned probe into its sinks; compiles unless the plan holds a probe.

    ``on_attached`` runs once the probe is attached, ``on_detached`` right after it
    is detached (its counters final), before the last drain and before the sinks end
    the session (a sink may take its time there: the prometheus sink's ``hold``), so
    what a lab reads then covers the probe's window and no more.

    Whatever happens (duration end, Ctrl-C, SIGTERM, an error), the probe is
    detached before this returns.
    """
    spec, opts = plan.spec, plan.opts
    session = plan.session()
    compiled = plan.compiled
    owned = compiled is None
    summary = Summary(interrupted=True)
    started = False
    pipe: Pipeline | None = None
    # ksym fields are named from /proc/kallsyms (read on a thread while the probe loads).
    namer = KsymNamer(session)
    with StopSignals(exit_with_parent=opts.exit_with_parent) as signals:
        try:
            if compiled is None:
                compiled = compile_probe(
                    spec, dict(plan.params), opts, plan.stream, plan.aggregate, plan.load
                )
            probe = compiled.probe
            enrich = spec.enrich

            def deliver(rows: list[tuple[Any, ...]] | EventBatch) -> None:
                # A batch is delivered whole: Ctrl-C in the middle would leave it
                # counted in the summary but missing from the sinks' output (a
                # trace's footer then names events its batches do not hold).
                with signals.held():
                    if len(rows) and enrich is not None:
                        rows = run_enrich(
                            probe, session, rows.rows if isinstance(rows, EventBatch) else rows
                        )
                    namer.name_batch(rows)
                    running.batch(rows)

            with signals.held():
                probe.open_output()
                probe.attach(compiled.points)
            with contextlib.ExitStack() as stack:
                # From "attached" on, a stop signal ends the run as an interrupted
                # run (summary, trace footer), never as "nothing attached": it is
                # noted until the sinks have started and the drain loop looks at it.
                with signals.noted():
                    if not opts.quiet:
                        where = ", ".join(a.describe() for a in probe.attached)
                        how = probe.output if probe.stream else "in-kernel aggregation"
                        say(f"attached {where} ({how}); Ctrl-C to stop")
                    if on_attached is not None:
                        on_attached()
                    pipe = stack.enter_context(Pipeline(bus, session, plan.sinks.objects))
                    running = pipe
                    started = True

                def stop() -> bool:
                    return signals.received is not None or (until is not None and until())

                # Counters are read while running only for a sink that shows them live
                # (prometheus): a map read per second is a system call per map.
                tick = (
                    (lambda: running.counters(probe.read_counters()))
                    if bus.implements("tracekit_counters")
                    else None
                )
                interrupted = drain_for(
                    probe, deliver, pipe.lost, opts.duration, stop, on_tick=tick
                )
                interrupted = interrupted or signals.received is not None
                with signals.deferred():
                    # Detach first so the last drain and the counters are final.
                    probe.detach()
                    if on_detached is not None:
                        # At once: what the kernel does from here on, the probe never sees.
                        on_detached()
                    deliver(probe.poll(0))
                    for r in probe.new_losses():
                        pipe.lost(r)
                    summary = pipe.end(
                        counters=probe.read_counters(),
                        kernel_agg=_enriched_agg(probe, session, namer),
                        interrupted=interrupted,
                        report=spec.report,
                    )
        except KeyboardInterrupt:
            pass  # before the session started (compile, attach) unless `started`
        finally:
            with signals.deferred():
                if compiled is not None:
                    compiled.probe.detach()
                    if owned:
                        compiled.probe.close()
    if not started or pipe is None:
        raise InterruptedBeforeStart(
            "interrupted before tracing started: nothing attached, nothing recorded"
        )
    if not opts.quiet:
        report_summary(summary)
        print_findings(summary.findings, opts.findings)
    pipe.raise_if_sink_failed()
    return summary


def _enriched_agg(
    probe: LoadedProbe, session: Session, namer: KsymNamer
) -> list[tuple[tuple[Any, ...], int]]:
    agg = probe.read_agg()
    if agg and probe.spec.enrich is not None:
        rows = run_enrich(probe, session, [r for r, _ in agg])
        agg = list(zip(rows, (n for _, n in agg), strict=True))
    namer.name_rows(r for r, _ in agg)
    return agg


def report_summary(summary: Summary) -> None:
    # stderr may be gone (SIGHUP: the terminal closed); the trace footer says it all.
    with contextlib.suppress(OSError):
        _report_summary(summary)


def _report_summary(summary: Summary) -> None:
    lost = f", {summary.lost_total} LOST" if summary.lost_total else ""
    say(f"{summary.events} events in {summary.duration:.1f}s{lost}")
    for source, per in summary.lost.items():
        cells = ", ".join(
            f"cpu{c}: {n}" if c >= 0 else f"all CPUs: {n}" for c, n in sorted(per.items())
        )
        say(f"lost {sum(per.values())} events ({source}; {cells})")
