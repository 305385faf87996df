"""A session's path through the bus: sinks built, started, fed batches, ended.

Live runs (``tracekit.bpf.bcc``) and replays (``tracekit.traces.replay``) both drive a
``Pipeline``, which is why a replay prints exactly what the live run printed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tracekit.base.errors import SinkFailedError, UsageError
from tracekit.base.findings import Finding, Findings
from tracekit.base.schema import Schema
from tracekit.base.session import EventBatch, LostReport, Session, Summary
from tracekit.base.text import printable
from tracekit.plugin.bus import Bus, SinkFailures
from tracekit.plugin.contract import SinkOptions, configure_sink, sink_fields_needed

__all__ = ["Pipeline", "SinkOptions", "Sinks", "build_sinks", "parse_sink_arg"]


def parse_sink_arg(text: str) -> tuple[str, str | None]:
    name, sep, arg = text.partition("=")
    name = name.strip()
    if not name:
        raise UsageError(f"bad --sink {text!r}: expected NAME or NAME=ARG")
    return name, (arg if sep else None)


@dataclass(frozen=True)
class Sinks:
    """A session's sinks, built once from ``--sink`` arguments, with what they need."""

    # "sink:NAME" (then "sink:NAME#2"...) -> the object ``SinkSpec.factory`` made.
    objects: Mapping[str, object]
    # Whether any of them needs every single event (``SinkSpec.streams``).
    streams: bool
    # The fields they read from events (``tracekit.Sink.fields_needed``).
    fields_needed: frozenset[str]


def build_sinks(bus: Bus, sink_args: tuple[str, ...], opts: SinkOptions, schema: Schema) -> Sinks:
    """Build one sink object per ``--sink``, validating names and arguments.

    Runs before a probe is compiled, so a typo costs nothing. Sinks may define
    ``configure(opts)`` and ``check_schema(schema)`` (``tracekit.Sink``) to refuse
    early; a misspelt one is refused rather than silently never called.
    """
    out: dict[str, object] = {}
    streams = False
    needed: set[str] = set()
    for text in sink_args:
        name, arg = parse_sink_arg(text)
        spec = bus.sinks.get(name)
        obj = spec.factory(arg)
        configure_sink(name, obj, opts, schema)
        streams = streams or spec.streams
        needed.update(sink_fields_needed(obj, schema))
        key = f"sink:{name}"
        n = 2
        while key in out:
            key = f"sink:{name}#{n}"
            n += 1
        out[key] = obj
    return Sinks(MappingProxyType(out), streams, frozenset(needed))


class Pipeline:
    """Registers a session's sinks on the bus and drives the session hooks.

    The pipeline owns the session's ``Summary`` (counting events and losses as they
    pass, finished by ``end``) and its sink failures: nothing else writes them.
    """

    def __init__(
        self,
        bus: Bus,
        session: Session,
        sinks: Mapping[str, object],
        findings: Callable[[Session], Findings] | bool | None = True,
    ) -> None:
        """``findings``: the probe's factory (``ProbeSpec.findings``); True (the
        default) takes the one of the bus's probe named by the session, if any."""
        self.bus = bus
        self.session = session
        self.sinks = sinks
        if findings is True:
            spec = bus.probes.items.get(session.probe)
            findings = spec[0].findings if spec is not None else None
        self._findings_factory = findings if callable(findings) else None
        self._findings: Findings | None = None
        # Failures are per session: a sink that failed in an earlier run of this
        # process (tests, labs running a probe twice) is a new object now.
        self.failures = SinkFailures()
        # What this pipeline counts; the Summary is built from it once, at the end.
        self._events = 0
        self._lost: dict[str, dict[int, int]] = {}
        self._ended: Summary | None = None
        self._started = 0.0
        self._ctx: Any = None

    def __enter__(self) -> Pipeline:
        self._ctx = self.bus.session_plugins(dict(self.sinks))
        self._ctx.__enter__()
        self._started = time.monotonic()
        if self._findings_factory is not None:
            self._findings = self._guard("start", self._findings_factory, self.session)
        self._call("tracekit_session_start", session=self.session)
        return self

    def _guard(self, step: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call the probe's findings; one that raises is reported once and stopped
        (the sinks and the run go on: findings explain, they never decide)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a findings bug must not end the run
            self.bus.warn(
                printable(
                    f"findings of {self.session.probe} failed in {step} and were stopped: "
                    f"{type(exc).__name__}: {exc}"
                )
            )
            self._findings = None
            return None

    def _call(self, hook: str, **kwargs: Any) -> None:
        self.bus.call(hook, self.failures, **kwargs)

    @property
    def events(self) -> int:
        """Events delivered so far."""
        return self._events

    def batch(self, rows: list[tuple[Any, ...]] | EventBatch) -> None:
        """Deliver one batch: rows from a loader, or an ``EventBatch`` (a replay's
        packed records, or a loader's raw buffer through ``EventBatch.from_records``)."""
        if not len(rows):
            return
        if isinstance(rows, EventBatch):
            batch = rows
        else:
            batch = EventBatch(self.session.probe, rows, schema=self.session.schema)
        self._events += len(batch)
        if self._findings is not None:
            self._guard("add", self._findings.add, batch)
        self._call("tracekit_events", session=self.session, batch=batch)

    def lost(self, report: LostReport) -> None:
        if report.total == 0:
            return
        per = self._lost.setdefault(report.source, {})
        for cpu, n in report.per_cpu.items():
            per[cpu] = per.get(cpu, 0) + n
        self._call("tracekit_lost_events", session=self.session, lost=report)

    def counters(self, counters: dict[str, dict[str, dict[int, int]]]) -> None:
        """The probe's in-kernel counters, read during a live run."""
        self._call("tracekit_counters", session=self.session, counters=counters)

    def end(
        self,
        summary: Summary | None = None,
        *,
        counters: dict[str, dict[str, dict[int, int]]] | None = None,
        kernel_agg: list[tuple[tuple[Any, ...], int]] | None = None,
        interrupted: bool = False,
        truncated: bool = False,
        report: Callable[[Summary], list[str]] | None = None,
    ) -> Summary:
        """End the session with the summary this pipeline counted, finished with the
        probe's final ``counters`` and ``kernel_agg`` and ``report``'s notes
        (``truncated``: a replayed trace that lost its footer); or with
        ``summary`` as given (a replay's footer says how the recorded run ended)."""
        if self._ended is not None:
            raise RuntimeError("a pipeline's session ends once")
        if summary is None:
            summary = Summary(
                events=self._events,
                lost=self._lost,
                duration=time.monotonic() - self._started,
                counters=counters or {},
                kernel_agg=tuple(kernel_agg or ()),
                interrupted=interrupted,
                truncated=truncated,
            )
            if report is not None:
                summary = dataclasses.replace(summary, notes=tuple(report(summary)))
        # Computed from this session's data, for a replay too (a footer's findings are
        # what the recording run computed: the same, from the same data).
        # A probe this machine does not have keeps what the recording computed.
        found: tuple[Finding, ...] = tuple(summary.findings) if not self._findings_factory else ()
        if self._findings is not None:
            got = self._guard("finish", self._findings.finish, summary)
            found = tuple(got or ())
        summary = dataclasses.replace(summary, findings=found)
        self._ended = summary
        self._call("tracekit_session_end", session=self.session, summary=summary)
        return summary

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

    def raise_if_sink_failed(self) -> None:
        """End the command with status 10 if a sink failed during the session."""
        failures = self.failures
        if not failures:
            return
        names = ", ".join(sorted(failures.errors))
        err = SinkFailedError(f"sink failed: {names}")
        if failures.explained.keys() == failures.errors.keys():
            # Each failure already said why in its own line (a full disk while
            # recording): the command ends with that error's status, no second line.
            err.exit_code = next(iter(failures.explained.values())).exit_code
            err.reported = True
        raise err
