"""The objects the bus passes to sinks: session metadata, event batches, loss, summary."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tracekit import __version__
from tracekit.base import kernel as kernel_facts
from tracekit.base.findings import Finding, plain
from tracekit.base.schema import Schema


class KernelNames:
    """Kernel symbols and stacks a session has learnt, append-only.

    A probe's ``enrich`` adds them (through ``tracekit.resolve_stack``) and a replay
    adds those its trace stores; sinks read them (``Session.symbols``,
    ``Session.stacks``), and a trace writer asks what is new since it last wrote
    (``added_since``) instead of comparing sizes. ``labels`` memoises what a probe
    derives from a stack id (a path classified once per stack, not once per event).
    """

    def __init__(self) -> None:
        self._symbols: dict[int, str] = {}
        self._stacks: dict[int, list[int]] = {}
        self._sym_order: list[int] = []
        self._stack_order: list[int] = []
        self._labels: dict[str, dict[int, Any]] = {}
        self.symbols: Mapping[int, str] = MappingProxyType(self._symbols)
        self.stacks: Mapping[int, list[int]] = MappingProxyType(self._stacks)

    def add_symbols(self, symbols: Mapping[int, str]) -> None:
        for addr, name in symbols.items():
            if addr not in self._symbols:
                self._sym_order.append(addr)
            self._symbols[addr] = name

    def add_stacks(self, stacks: Mapping[int, list[int]]) -> None:
        for sid, addrs in stacks.items():
            if sid not in self._stacks:
                self._stack_order.append(sid)
            self._stacks[sid] = list(addrs)

    def mark(self) -> tuple[int, int]:
        """Where ``added_since`` starts next time: after everything known now."""
        return len(self._sym_order), len(self._stack_order)

    def added_since(
        self, mark: tuple[int, int]
    ) -> tuple[list[tuple[int, str]], list[tuple[int, list[int]]]]:
        """Symbols and stacks added after ``mark`` (from ``mark()``), in order."""
        syms = [(a, self._symbols[a]) for a in self._sym_order[mark[0] :]]
        stacks = [(s, self._stacks[s]) for s in self._stack_order[mark[1] :]]
        return syms, stacks

    def labels(self, kind: str) -> dict[int, Any]:
        """The probe's memo of ``kind`` per stack id, for this session's stacks."""
        return self._labels.setdefault(kind, {})


@dataclass(frozen=True)
class Session:
    """One tracing run or one replay, read-only to the plugins it is handed to.

    Live runs fill the machine fields from the running kernel; replays take them from
    the trace header, so a sink cannot tell (and need not care) where events come from,
    except through ``mode``. The run plan (``tracekit.RunPlan``) decides every field
    before the session starts; only ``names`` grows while it runs.
    """

    probe: str
    schema: Schema
    params: Mapping[str, int] = field(default_factory=dict)
    mode: str = "live"  # "live" or "replay"
    kernel: str = field(default_factory=kernel_facts.release)
    ncpus: int = field(default_factory=kernel_facts.ncpus)
    hostname: str = field(default_factory=socket.gethostname)
    start_time: float = field(default_factory=time.time)
    # CLOCK_MONOTONIC (the clock of the kernel's event timestamps, bpf_ktime_get_ns)
    # in ns when the session started, read next to ``start_time``: an event's wall-clock
    # time is start_time + (ts - monotonic_ns) / 1e9. 0: not known (older traces).
    monotonic_ns: int = field(default_factory=time.monotonic_ns)
    tracekit_version: str = __version__
    # Sampling the probe applied to streamed events (1 = every event), stated by
    # sinks that print. In-kernel counters and aggregates are never sampled.
    sample_every: int = 1
    # Fields the kernel aggregated on, when the probe counted in the kernel instead
    # of streaming single events (empty when streaming).
    aggregated: tuple[str, ...] = ()
    # Whether single events were streamed to user space (a run may stream and count
    # in the kernel both). A replay tells from the trace: its header says, or (traces
    # written before 0.2) its batches do.
    streamed: bool = True
    # Kernel addresses to names (fields shown as ``ksym``) and stacks, stored in the
    # trace so replay shows names on a machine with other symbols.
    names: KernelNames = field(default_factory=KernelNames, compare=False, repr=False)
    # Facts about the machine read when the run started, as plain values (str keys):
    # what a probe's findings need beside its events (``ProbeSpec.metadata``: the
    # XPS and RPS maps of /sys/class/net), stored in the header so a replay has them.
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A copy, read-only: the caller's dict can change neither the session nor the
        # header it writes.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "metadata", _frozen(plain(dict(self.metadata), "metadata")))

    @property
    def symbols(self) -> Mapping[int, str]:
        """Kernel address -> symbol name. Read it; record names with
        ``session.names.add_symbols`` (assigning here, as 0.1.0 did, still works,
        deprecated until 0.3.0)."""
        return _NamesView(self.names.symbols, self.names.add_symbols, "symbols")

    @property
    def stacks(self) -> Mapping[int, list[int]]:
        """Stack id -> kernel addresses, innermost first (as ``symbols``)."""
        return _NamesView(self.names.stacks, self.names.add_stacks, "stacks")

    def wall_time(self, ts_ns: int) -> float | None:
        """Seconds since 1970 of an event's kernel timestamp, None if not known."""
        if not self.monotonic_ns:
            return None
        return self.start_time + (int(ts_ns) - self.monotonic_ns) / 1e9

    def holds(self) -> str:
        """What the session's events are, in words: streamed, counted in the kernel, or both."""
        by = ", ".join(self.aggregated)
        if self.aggregated and self.streamed:
            return f"streamed events, and counts the kernel kept by {by}"
        if self.aggregated:
            return f"counts the kernel kept by {by} (no single events)"
        return "streamed events"

    def header(self) -> dict[str, Any]:
        """The trace file header fields that describe this session."""
        return {
            "tracekit_version": self.tracekit_version,
            "probe": self.probe,
            "params": dict(self.params),
            "schema": self.schema.to_dict(),
            "kernel": self.kernel,
            "ncpus": self.ncpus,
            "hostname": self.hostname,
            "start_time": self.start_time,
            "monotonic_ns": self.monotonic_ns,
            "sample_every": self.sample_every,
            "aggregated": list(self.aggregated),
            "metadata": _thawed(self.metadata),
            "streamed": self.streamed,
        }

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Session:
        return cls(
            probe=str(h["probe"]),
            schema=Schema.from_dict(h["schema"]),
            params={str(k): int(v) for k, v in dict(h.get("params", {})).items()},
            mode="replay",
            kernel=str(h.get("kernel", "?")),
            ncpus=int(h.get("ncpus", 0)),
            hostname=str(h.get("hostname", "?")),
            start_time=float(h.get("start_time", 0.0)),
            monotonic_ns=int(h.get("monotonic_ns", 0)),
            tracekit_version=str(h.get("tracekit_version", "?")),
            sample_every=int(h.get("sample_every", 1)),
            aggregated=tuple(str(a) for a in h.get("aggregated", ())),
            metadata=dict(h.get("metadata", {})),
            streamed=bool(h.get("streamed", not h.get("aggregated"))),
        )


# What a sink decodes at a time (``EventBatch.slices``): about this many Python values
# (a 2-character string is a 50-byte object), and this many bytes of packed records,
# whatever the batch holds. Replay joins up to 65,536 events into one batch; decoded
# whole, a batch of 256 two-character strings a row took 30 times the file's bytes.
SLICE_VALUES = 1 << 16
SLICE_BYTES = 1 << 20


def slice_rows(schema: Schema | None, width: int = 1) -> int:
    """Events per slice for ``schema`` (or rows of ``width`` values): at least 1."""
    if schema is not None:
        width = len(schema.fields)
        by_bytes = SLICE_BYTES // max(1, schema.size)
    else:
        by_bytes = SLICE_VALUES
    return max(1, min(SLICE_VALUES // max(1, width), by_bytes))


_dataclass_init = Session.__init__


def _session_init(
    self: Session,
    *args: Any,
    symbols: Mapping[int, str] | None = None,
    stacks: Mapping[int, list[int]] | None = None,
    **kwargs: Any,
) -> None:
    """``Session(..., symbols=..., stacks=...)``, 0.1.0's fields: deprecated."""
    _dataclass_init(self, *args, **kwargs)
    from tracekit._compat import warn_deprecated

    if symbols is not None:
        warn_deprecated("Session(symbols=...)", "session.names.add_symbols(...)", stacklevel=3)
        self.names.add_symbols(symbols)
    if stacks is not None:
        warn_deprecated("Session(stacks=...)", "session.names.add_stacks(...)", stacklevel=3)
        self.names.add_stacks(stacks)


Session.__init__ = _session_init  # type: ignore[method-assign]


class _NamesView(Mapping[Any, Any]):
    """``session.symbols`` / ``session.stacks``: a view of the session's names that
    still takes 0.1.0's ``session.symbols[addr] = name`` (recorded through
    ``KernelNames``, with a DeprecationWarning)."""

    __slots__ = ("_add", "_data", "_what", "get")

    def __init__(self, data: Mapping[Any, Any], add: Any, what: str) -> None:
        self._data, self._add, self._what = data, add, what
        self.get = data.get  # type: ignore[method-assign]

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        return repr(dict(self._data))

    def __setitem__(self, key: Any, value: Any) -> None:
        from tracekit._compat import warn_deprecated

        add = "add_symbols({addr: name})" if self._what == "symbols" else "add_stacks({id: addrs})"
        warn_deprecated(f"session.{self._what}[...] = ...", f"session.names.{add}", stacklevel=3)
        self._add({key: value})


class EventBatch:
    """Events from one probe, as rows (tuples in schema order) and as columns.

    A batch is built from rows (``EventBatch(probe, rows)``: what the loaders deliver
    today) or from packed records in the schema's struct layout
    (``EventBatch.from_records``: a format-2 trace batch, or a kernel buffer). Either
    way it offers both views, each built on first use and kept:

    * ``rows``: a list of tuples, strings decoded (cut at the first NUL, UTF-8 with
      replacement), as sinks that work event by event want them;
    * ``array``: a numpy structured array (fields ``f0``, ``f1``... in schema order,
      strings as raw ``S<N>`` bytes), and ``column(name)``: one field as a numpy
      array (integers) or a list of decoded strings, for sinks that count a whole
      batch at once.

    Rows built from records and records built from rows cost one pass over the
    batch; a sink that uses the view the batch was built with pays nothing.
    """

    __slots__ = ("_array", "_n", "_parts", "_rows", "_strings", "probe", "schema")

    def __init__(
        self,
        probe: str,
        rows: list[tuple[Any, ...]] | None = None,
        *,
        schema: Schema | None = None,
        array: Any = None,
    ) -> None:
        if (rows is None) == (array is None):
            raise ValueError("an EventBatch is built from rows or from an array, not both")
        if array is not None and schema is None:
            raise ValueError("an EventBatch built from an array needs its schema")
        self.probe = probe
        self.schema = schema
        self._rows = rows
        self._array = array
        self._strings: dict[int, list[str]] = {}
        # Packed batches joined by ``concat`` and not yet copied into one array:
        # the copy is made when a sink asks for ``array`` (or rows), not before.
        self._parts: list[Any] | None = None
        self._n = len(rows) if rows is not None else len(array)

    @classmethod
    def from_records(
        cls, probe: str, schema: Schema, data: bytes | bytearray | memoryview
    ) -> EventBatch:
        """A batch over ``data``: whole records packed as ``schema.struct_format``.

        No copy is made: the batch reads ``data``, which must not change while the
        batch is in use. Raises ``ValueError`` unless ``data`` is a whole number of
        records. Every value packed this way is valid for its field by construction
        (an ``u8`` holds 0..255, a ``str16`` 16 bytes), so nothing else is checked.
        """
        import numpy as np

        dtype = schema.dtype
        if len(data) % dtype.itemsize:
            raise ValueError(
                f"{len(data)} bytes are not a whole number of {dtype.itemsize}-byte records"
            )
        return cls(probe, schema=schema, array=np.frombuffer(data, dtype=dtype))

    @classmethod
    def concat(cls, batches: list[EventBatch]) -> EventBatch:
        """One batch holding ``batches`` in order (packed if they all are).

        Packed batches are not copied here: the joined batch keeps them as parts
        (``chunks``) and makes one array only when ``array``, a column or the rows
        are asked for. A sink that writes or counts parts never pays the copy.
        """
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        if all(b.packed for b in batches):
            parts = [c for b in batches for c in b.chunks()]
            joined = cls(first.probe, schema=first.schema, array=parts[0])
            joined._array, joined._parts = None, parts
            joined._n = sum(len(p) for p in parts)
            return joined
        rows = [r for b in batches for r in b.rows]
        return cls(first.probe, rows, schema=first.schema)

    def chunks(self) -> list[Any]:
        """The packed records as a list of contiguous structured arrays, in order,
        without joining them (one array for a batch that is not a ``concat``)."""
        if self._parts is not None:
            return list(self._parts)
        import numpy as np

        return [np.ascontiguousarray(self.array)]

    def __len__(self) -> int:
        return self._n

    def slices(self, rows: int | None = None) -> Iterator[EventBatch]:
        """The batch as consecutive batches of at most ``rows`` events (default:
        ``slice_rows``), for a sink that decodes events: one slice's rows are built,
        used and dropped before the next, so its memory is bounded whatever the batch
        holds. Packed slices are views of the records (no copy); rows already
        decoded are sliced, not decoded again."""
        if rows is None:
            width = len(self._rows[0]) if self.schema is None and self._rows else 1
            rows = slice_rows(self.schema, width)
        if self._n <= rows:
            yield self
            return
        if self._rows is not None:
            for i in range(0, self._n, rows):
                yield EventBatch(self.probe, self._rows[i : i + rows], schema=self.schema)
            return
        for part in self._parts if self._parts is not None else [self._array]:
            for i in range(0, len(part), rows):
                yield EventBatch(self.probe, schema=self.schema, array=part[i : i + rows])

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)

    @property
    def packed(self) -> bool:
        """Whether the batch holds records (``array`` costs at most one copy)."""
        return self._array is not None or self._parts is not None

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        if self._rows is None:
            assert self.schema is not None
            n = len(self.schema.fields)
            # Column by column, then zip: each column converts in one C call
            # (ndarray.tolist), and zip builds the tuples; no Python step per event.
            cols = [self.column_values(i) for i in range(n)]
            self._rows = list(zip(*cols, strict=True)) if self._n else []
        return self._rows

    @property
    def array(self) -> Any:
        """The batch as a numpy structured array of ``schema.dtype``."""
        if self._array is None and self._parts is not None:
            import numpy as np

            # As bytes: numpy copies a structured dtype field by field (6x slower).
            raw = np.concatenate([p.view(np.uint8) for p in self._parts])
            self._array = raw.view(self._parts[0].dtype)
            self._parts = None
        if self._array is None:
            if self.schema is None:
                raise ValueError("an EventBatch built from rows without a schema has no array")
            self._array = rows_to_array(self.schema, self._rows or [])
        return self._array

    def field_array(self, i: int) -> Any:
        """Field ``i`` as a numpy array (strings as raw ``S<N>`` bytes). A batch
        joined by ``concat`` copies only this field out of its parts."""
        if self._array is None and self._parts is not None:
            import numpy as np

            return np.concatenate([p[f"f{i}"] for p in self._parts])
        return self.array[f"f{i}"]

    def column(self, name: str) -> Any:
        """One field: a numpy array of integers, or a list of decoded strings."""
        if self.schema is None:
            raise ValueError("an EventBatch built from rows without a schema has no columns")
        i = self.schema.index(name)
        if self.schema.fields[i].is_str:
            return self.column_values(i)
        return self.array[f"f{i}"]

    @property
    def columns(self) -> dict[str, Any]:
        """Every field by name, as ``column`` gives it."""
        assert self.schema is not None
        return {f.name: self.column(f.name) for f in self.schema.fields}

    def column_values(self, i: int) -> list[Any]:
        """Field ``i`` as a list of Python values (decoded strings, ints)."""
        if self._rows is not None and self._array is None:
            return [r[i] for r in self._rows]
        assert self.schema is not None
        col = self.array[f"f{i}"]
        if not self.schema.fields[i].is_str:
            return col.tolist()  # type: ignore[no-any-return]
        got = self._strings.get(i)
        if got is None:
            got = self._strings[i] = decode_strings(col.tolist())
        return got

    def records(self) -> bytes:
        """The batch as packed records (what a trace file stores)."""
        return bytes(self.array.tobytes())


def decode_strings(raw: list[bytes]) -> list[str]:
    """Kernel char arrays as text: cut at the first NUL, UTF-8 with replacement.

    Each distinct value is decoded once (a ``comm`` or interface name repeats across
    a batch) and the list is mapped through a dict in C.
    """
    memo = {b: b.split(b"\0", 1)[0].decode("utf-8", "replace") for b in set(raw)}
    return list(map(memo.__getitem__, raw))


def rows_to_array(schema: Schema, rows: list[tuple[Any, ...]]) -> Any:
    """Rows as a structured array of ``schema.dtype`` (for rows from the loaders).

    Integers convert a column at a time; strings are UTF-8 encoded and cut to the
    field's bytes (a row decoded with replacement characters may lose its tail, as
    the kernel's own bytes would have been kept by a packed batch).
    """
    import numpy as np

    out = np.zeros(len(rows), dtype=schema.dtype)
    if not rows:
        return out
    for i, (f, col) in enumerate(zip(schema.fields, zip(*rows, strict=True), strict=True)):
        if f.is_str:
            out[f"f{i}"] = [s.encode("utf-8")[: f.size] for s in col]
        else:
            out[f"f{i}"] = np.array(col, dtype=out.dtype[i])
    return out


@dataclass
class LostReport:
    """Events the kernel could not deliver, per CPU, since the previous report.

    ``source`` says which mechanism lost them: ``perf`` (perf buffer overrun),
    ``ringbuf`` (failed reserve, counted in the kernel), ``kretprobe`` (nmissed:
    the kretprobe had no free instance), ``ratelimit`` (dropped on purpose).
    """

    source: str
    per_cpu: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.per_cpu.values())


def _frozen(m: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """A read-only copy of nested mappings (lists in them become tuples)."""

    def one(v: Any) -> Any:
        if isinstance(v, Mapping):
            return _frozen(v)
        if isinstance(v, list):
            return tuple(one(x) for x in v)
        return v

    return MappingProxyType({k: one(v) for k, v in m.items()})


def _thawed(v: Any) -> Any:
    """``_frozen``'s data as plain dicts and lists again (for a header or JSON)."""
    if isinstance(v, Mapping):
        return {k: _thawed(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_thawed(x) for x in v]
    return v


@dataclass(frozen=True)
class Summary:
    """How a session ended: totals, losses, duration and in-kernel counters.

    Read-only, like the session: the pipeline counts and builds it once, at the end,
    and every sink's ``tracekit_session_end`` gets the same object (mappings are
    read-only views, sequences tuples), so no sink can change what the next sees."""

    events: int = 0
    # Source ("perf", "ringbuf", "rate limit", ...) -> CPU -> events lost.
    lost: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    duration: float = 0.0
    # Counter map name -> label -> per-CPU values, read from the kernel at the end.
    counters: Mapping[str, Mapping[str, Mapping[int, int]]] = field(default_factory=dict)
    interrupted: bool = False
    truncated: bool = False
    # Events counted in the kernel instead of streamed: (row, count) pairs whose
    # rows carry the aggregated fields (others are zero), for histogram sinks.
    kernel_agg: Sequence[tuple[tuple[Any, ...], int]] = ()
    # Lines the probe adds to the results (for example rss-cpu's imbalance).
    notes: Sequence[str] = ()
    # What the numbers mean (``ProbeSpec.findings``), computed from the session's
    # data when it ends: the same for a live run and for a replay of its recording.
    findings: Sequence[Finding] = ()

    def __post_init__(self) -> None:
        # Callers may pass dicts and lists; what the object holds cannot be changed.
        set_ = object.__setattr__
        set_(self, "lost", _frozen(self.lost))
        set_(self, "counters", _frozen(self.counters))
        set_(self, "kernel_agg", tuple((tuple(r), int(n)) for r, n in self.kernel_agg))
        set_(self, "notes", tuple(self.notes))
        set_(self, "findings", tuple(self.findings))

    @property
    def lost_total(self) -> int:
        return sum(sum(v.values()) for v in self.lost.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "lost": {k: {int(c): n for c, n in v.items()} for k, v in self.lost.items()},
            "duration": self.duration,
            "counters": {
                m: {lbl: dict(per) for lbl, per in labels.items()}
                for m, labels in self.counters.items()
            },
            "interrupted": self.interrupted,
            "kernel_agg": [[list(r), n] for r, n in self.kernel_agg],
            "notes": list(self.notes),
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        return cls(
            events=int(d.get("events", 0)),
            lost={
                str(k): {int(c): int(n) for c, n in dict(v).items()}
                for k, v in dict(d.get("lost", {})).items()
            },
            duration=float(d.get("duration", 0.0)),
            counters={
                str(m): {
                    str(lbl): {int(c): int(n) for c, n in dict(per).items()}
                    for lbl, per in dict(labels).items()
                }
                for m, labels in dict(d.get("counters", {})).items()
            },
            interrupted=bool(d.get("interrupted", False)),
            kernel_agg=[(tuple(r), int(n)) for r, n in d.get("kernel_agg", ())],
            notes=[str(n) for n in d.get("notes", ())],
            findings=[Finding.from_dict(f) for f in d.get("findings", ())],
        )
