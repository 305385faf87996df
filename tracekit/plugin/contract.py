"""What a sink may implement besides its hooks, and the in-kernel aggregate's shape.

A sink object receives the session hooks it marks with ``@hookimpl``
(``tracekit/hookspecs.py``). Before any probe compiles, tracekit also calls three
plain methods when the sink has them; ``Sink`` declares them, typed and documented,
so a plugin author subclasses it (or matches it, it is a ``Protocol`` for mypy too)
rather than guessing names that tracekit would otherwise never call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tracekit.base.errors import PluginError
from tracekit.base.schema import Schema

# What Summary.kernel_agg holds and trace files store: one (row, count) pair per key
# the kernel counted. ``row`` is a full row in schema order; the fields the kernel did
# not aggregate on are 0 ("" for strings).
KernelAggRows = list[tuple[tuple[Any, ...], int]]


@dataclass(frozen=True)
class SinkOptions:
    """Options from the command line that every sink may honour."""

    # ``--force``: overwrite an existing output file.
    force: bool = False
    # ``--mode``: the permission bits of the files a sink creates (a trace, a CSV);
    # 0600 by default: recordings hold kernel addresses and host names.
    mode: int = 0o600
    # ``--time``: how sinks that print show event timestamps: ``rel`` (seconds since
    # the first event) or ``wall`` (wall-clock time, UTC).
    time: str = "rel"


class Sink:
    """Base class for sink objects (what ``SinkSpec.factory(arg)`` returns).

    Every method here is optional and has a do-nothing default; the hooks
    (``tracekit_session_start``, ``tracekit_events``, ...) are added with
    ``@hookimpl``. The three methods are called in this order, right after
    ``factory(arg)``, before any probe compiles, so a wrong argument costs nothing.
    """

    def configure(self, opts: SinkOptions) -> None:
        """Receive the command line's sink options (``opts.force``)."""

    def check_schema(self, schema: Schema) -> None:
        """Raise ``UsageError`` for a field of ``arg`` the probe's schema lacks."""

    def fields_needed(self, schema: Schema) -> frozenset[str]:
        """The fields this sink reads from events.

        When the probe's in-kernel aggregate does not carry all of them, the run
        streams single events instead of aggregating in the kernel.
        """
        return frozenset()


# The optional methods' names, to catch a near miss (``check_shema``) that tracekit
# would otherwise silently never call.
SINK_METHODS = ("configure", "check_schema", "fields_needed")


def check_sink_methods(name: str, obj: object) -> None:
    """Refuse a sink whose public method is a misspelling of an optional method."""
    for attr in dir(obj):
        if attr.startswith("_") or attr in SINK_METHODS or attr.startswith("tracekit_"):
            continue
        if not callable(getattr(obj, attr, None)):
            continue
        import difflib  # only for this hint: not on every run's start-up

        close = difflib.get_close_matches(attr, SINK_METHODS, n=1, cutoff=0.85)
        if close:
            raise PluginError(
                f"sink {name}: method {attr!r} is never called by tracekit; "
                f"did you mean {close[0]!r}? (see tracekit.Sink)"
            )


def configure_sink(name: str, obj: object, opts: SinkOptions, schema: Schema) -> None:
    """Call a new sink's ``configure`` and ``check_schema`` (whichever it has)."""
    check_sink_methods(name, obj)
    # Sinks written before ``Sink`` existed define the methods without subclassing it:
    # they are looked up by name, the same names ``Sink`` declares.
    configure = getattr(obj, "configure", None)
    if configure is not None:
        configure(opts)
    check = getattr(obj, "check_schema", None)
    if check is not None:
        check(schema)


def sink_fields_needed(obj: object, schema: Schema) -> frozenset[str]:
    need = getattr(obj, "fields_needed", None)
    return frozenset(need(schema)) if need is not None else frozenset()


@dataclass(frozen=True)
class KernelAggregate:
    """What a probe counted in the kernel instead of streaming events.

    ``fields`` are the fields it aggregated on (``ProbeSpec.agg_fields`` plus
    ``enriched_fields``); ``rows`` are ``(row, count)`` pairs, each ``row`` a full
    row in schema order with the other fields 0 (``""`` for strings), exactly what
    ``Summary.kernel_agg`` holds. Build one from keyed counts with ``from_counts``
    and pass it to ``tracekit.testing.feed(..., kernel_agg=...)``.
    """

    fields: tuple[str, ...]
    rows: KernelAggRows

    @classmethod
    def from_counts(
        cls,
        schema: Schema,
        fields: Sequence[str],
        counts: Mapping[tuple[Any, ...], int] | Iterable[tuple[tuple[Any, ...], int]],
    ) -> KernelAggregate:
        """``counts`` maps key tuples (values of ``fields``, in that order) to counts."""
        index = [schema.index(f) for f in fields]
        blank = tuple("" if f.is_str else 0 for f in schema.fields)
        items = counts.items() if isinstance(counts, Mapping) else counts
        rows: KernelAggRows = []
        for key, n in items:
            if len(key) != len(index):
                raise ValueError(f"key {key!r} has {len(key)} values for fields {list(fields)}")
            row = list(blank)
            for i, v in zip(index, key, strict=True):
                row[i] = v
            rows.append((tuple(row), int(n)))
        return cls(tuple(fields), rows)
