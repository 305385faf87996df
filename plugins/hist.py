"""The ``hist`` sink: histograms printed when the session ends (and on Ctrl-C).

``--sink hist`` prints the probe's default histograms; ``--sink
hist=FIELD[,by=KEY...][,linear=LO:HI:STEP]`` prints that one instead (``;`` separates
several). Counters the probe keeps in the kernel are printed after the histograms,
those at zero only as their number.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from tracekit import hookimpl
from tracekit.base.errors import UsageError
from tracekit.base.schema import HistSpec, Schema
from tracekit.base.session import EventBatch, Session, Summary
from tracekit.base.text import printable
from tracekit.plugin.registry import SinkRegistry, SinkSpec

if TYPE_CHECKING:
    # Imported where a hist sink is made: runs without one never load it.
    from tracekit.base.hist import Histogram


class HistSink:
    def __init__(self, arg: str | None, out: TextIO | None = None) -> None:
        self.arg = arg
        self.out = out
        self.hists: list[Histogram] = []
        # The histograms the kernel's aggregate fills (it carries all their fields);
        # the others are filled from streamed events.
        self.from_kernel: list[bool] = []
        self.streamed = 0

    def specs(self, schema: Schema) -> tuple[HistSpec, ...]:
        from tracekit.base.hist import parse_hist_arg

        if not self.arg:
            return schema.histograms or (HistSpec(value=None, kind="count"),)
        try:
            return tuple(parse_hist_arg(a, schema) for a in self.arg.split(";") if a.strip())
        except (KeyError, ValueError) as exc:
            raise UsageError(
                f"--sink hist={self.arg}: {str(exc).strip(chr(34) + chr(39))}"
            ) from None

    def check_schema(self, schema: Schema) -> None:
        self.specs(schema)

    def fields_needed(self, schema: Schema) -> frozenset[str]:
        """Every field the histograms read: the run streams events if the kernel's
        aggregate does not carry them all."""
        out: set[str] = set()
        for s in self.specs(schema):
            out.update(s.by)
            if s.value:
                out.add(s.value)
        return frozenset(out)

    @hookimpl
    def tracekit_session_start(self, session: Session) -> None:
        from tracekit.base.hist import Histogram, KeyCache

        # One cache for all: a key several histograms count is kept and formatted once.
        keys = KeyCache()
        self.hists = [Histogram(s, session.schema, keys) for s in self.specs(session.schema)]
        agg = set(session.aggregated)
        self.from_kernel = [bool(agg) and h.fields() <= agg for h in self.hists]

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        self.streamed += len(batch)
        for h, kernel in zip(self.hists, self.from_kernel, strict=True):
            # A histogram the kernel counted gets its aggregate with the summary.
            if not kernel:
                h.add_batch(batch)  # numpy over a packed batch: no Python step per event

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: Summary) -> None:
        out = self.out or sys.stdout
        if not session.streamed:
            for h, kernel in zip(self.hists, self.from_kernel, strict=True):
                if not kernel:
                    raise UsageError(self._not_aggregated(session, h))
        if any(self.from_kernel):
            by = printable(", ".join(session.aggregated))
            also = f" (the {self.streamed} streamed events are not counted twice)"
            out.write(f"# counted in the kernel by {by}{also if session.streamed else ''}\n")
            for h, kernel in zip(self.hists, self.from_kernel, strict=True):
                if kernel:
                    h.add_weighted(summary.kernel_agg)
        if not all(self.from_kernel) and session.sample_every > 1:
            out.write(f"# sampled: 1 in {session.sample_every} events\n")
        if self.hists:
            self.hists[0].keys.clear_text()  # symbols learnt since an earlier print
        for h in self.hists:
            out.write("\n" + h.render(session.symbols))
        for mapname, labels in sorted(summary.counters.items()):
            out.write("\n")
            # Counters with a slot per kernel enum value (drop reasons: ~70) are zero
            # for most labels: print the ones that counted and say how many did not.
            zero = 0
            for label, per_cpu in labels.items():
                total = sum(per_cpu.values())
                if total == 0:
                    zero += 1
                    continue
                cells = "  ".join(f"cpu{c}={n}" for c, n in sorted(per_cpu.items()))
                name = printable(f"{mapname}.{label}")
                out.write(f"@{name}: total={total}  {cells}\n")
            if zero:
                what = "counter" if zero == 1 else "counters"
                out.write(f"# {printable(mapname)}: {zero} {what} at zero not shown\n")
        if summary.notes:
            out.write("\n" + "\n".join(map(printable, summary.notes)) + "\n")
        out.flush()

    @staticmethod
    def _not_aggregated(session: Session, h: Histogram) -> str:
        missing = printable(", ".join(sorted(h.fields() - set(session.aggregated))))
        by = printable(", ".join(session.aggregated))
        name = printable(h.spec.name)
        if session.mode == "replay":
            # Nothing to add to a recording: say what it holds and what would do.
            return (
                f"histogram {name} needs {missing}: this trace holds only the counts the "
                f"kernel kept by {by}, no single events; histogram those fields, or record "
                "again with a streaming sink (--sink msgpack=PATH streams)"
            )
        return (
            f"histogram {name} needs {missing}, which the kernel did not aggregate "
            f"(it counts by {by}); add a streaming sink (console, msgpack)"
        )


@hookimpl
def tracekit_register_sinks(registry: SinkRegistry) -> None:
    registry.add(
        SinkSpec(
            name="hist",
            description="histograms (log2/linear, keyed by fields) printed when the run ends",
            factory=HistSink,
            streams=False,
        )
    )
