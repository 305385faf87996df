"""The seam between a run and a loaded probe, and what both loaders share.

A run hands a probe to ``tracekit.bpf.load.load(spec, params, opts)``, which picks
the BCC loader (``tracekit.bpf.bcc.BccProbe``, compiled per run) or the CO-RE one
(``tracekit.bpf.core.CoreProbe``, an object loaded by libbpf), and gets back a
``LoadedProbe``: the Protocol below, all the run ever calls. What both report from
their maps (counters, losses, aggregate rows) is written once here
(``KernelProbe``). A probe's ``enrich`` gets a ``ProbeContext`` built on two
primitives every loaded probe provides, ``map_lookup`` and ``kernel_symbol``, so it
reads stacks and names addresses the same way under either loader (and under
``tracekit.testing.StandInProbe``, without a kernel).
"""

from __future__ import annotations

import abc
import importlib
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tracekit.base.session import EventBatch, KernelNames, LostReport, Session
from tracekit.plugin.registry import AttachPoint, ProbeSpec

# BPF stack maps hold up to PERF_MAX_STACK_DEPTH (127) addresses per stack.
MAX_STACK_DEPTH = 127
_STACK_KEY = struct.Struct("=I")


def import_in_background(module: str) -> threading.Event:
    """Import ``module`` on a thread; the event is set once it is done (or failed:
    the next plain import raises the error where it is needed).

    The loaders start numpy this way just before their long C step (libbpf's load,
    BCC's compile), which releases the GIL: numpy takes seconds to import under
    emulation, and the first events need not wait for it (tracekit.bpf.core).
    """
    done = threading.Event()

    def run() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - raised again by the import that needs it
            pass
        finally:
            done.set()

    threading.Thread(target=run, name=f"import-{module}", daemon=True).start()
    return done


@dataclass(frozen=True)
class LoadOptions:
    """How a probe is loaded: what ``load`` needs besides the spec and parameters.

    ``loader`` is ``auto`` (the CO-RE object where it can serve, else BCC), ``bcc``
    or ``core``; ``output`` is ``auto``, ``ringbuf`` or ``perf``. ``stream`` sends
    single events to user space, ``aggregate`` counts in the kernel (both may be
    on); ``sample`` streams 1 in N events; ``max_events_per_sec`` (0: no limit)
    caps the stream; ``page_cnt`` sizes the buffers (pages per CPU).
    """

    loader: str = "auto"
    output: str = "auto"
    stream: bool = True
    aggregate: bool = False
    sample: int = 1
    max_events_per_sec: int = 0
    page_cnt: int = 64
    quiet: bool = True

    def __post_init__(self) -> None:
        if self.loader not in ("auto", "bcc", "core"):
            raise ValueError(f"loader must be auto, bcc or core, not {self.loader!r}")
        if self.output not in ("auto", "ringbuf", "perf"):
            raise ValueError(f"output must be auto, ringbuf or perf, not {self.output!r}")


@runtime_checkable
class LoadedProbe(Protocol):
    """A probe in the kernel (or a stand-in for one): everything a run calls.

    ``loader`` says which path loaded it (``bcc``, ``core``; ``stand-in`` in tests).
    The two primitives ``map_lookup`` and ``kernel_symbol`` are what a
    ``ProbeContext`` is built on.
    """

    @property
    def spec(self) -> ProbeSpec: ...
    @property
    def params(self) -> Mapping[str, int]: ...
    @property
    def loader(self) -> str: ...
    @property
    def output(self) -> str: ...
    @property
    def stream(self) -> bool: ...
    @property
    def aggregate(self) -> bool: ...
    @property
    def sample(self) -> int: ...
    @property
    def attached(self) -> list[AttachPoint]: ...

    def open_output(self) -> None: ...
    def close_output(self) -> None: ...
    def attach(self, points: list[AttachPoint] | None = None) -> None: ...
    def detach(self) -> None: ...
    def close(self) -> None: ...
    def reset(self) -> None: ...
    def poll(self, timeout_ms: int = 100) -> list[tuple[Any, ...]] | EventBatch: ...
    def read_agg(self) -> list[tuple[tuple[Any, ...], int]]: ...
    def read_counters(self) -> dict[str, dict[str, dict[int, int]]]: ...
    def new_losses(self) -> list[LostReport]: ...

    def map_lookup(self, name: str, key: bytes) -> bytes | None:
        """The value of ``key`` (packed as the map's key type) in the probe's map
        ``name``, as raw bytes; None when the key is not there. For hash, array and
        stack maps (not per-CPU maps: read those with counters)."""
        ...

    def kernel_symbol(self, addr: int) -> str:
        """The name of the kernel function containing ``addr`` (``[unknown]``)."""
        ...

    def legacy_bpf(self) -> Any:
        """What a 0.1.0 ``enrich(bpf, session, rows)`` is given: BCC's object under
        BCC, else an object answering ``bpf[b"table"].walk(id)`` and ``bpf.ksym(a)``.
        Deprecated with that form of ``enrich``; goes in 0.3.0."""
        ...


class ProbeContext:
    """What a probe's ``enrich(ctx, rows)`` reads, the same under every loader.

    ``session`` is the run's (or replay's) session, ``params`` the probe's
    parameters, ``names`` the kernel names the session learnt (``KernelNames``).
    ``stack(id)`` and ``stack_names(id)`` read a stack map (``tk_stacks`` unless
    ``table`` says otherwise) and ``symbol(addr)`` names an address; each records
    what it learns in ``session.names`` (once per stack and address), so the trace
    file carries the names and a replay needs no kallsyms. ``lookup(map, key)`` reads
    any other map of the probe. ``labels(kind)`` is a per-session memo keyed by
    stack id (a path classified once per stack, not once per event).
    """

    def __init__(
        self,
        session: Session,
        lookup: Callable[[str, bytes], bytes | None],
        symbol: Callable[[int], str],
        params: Mapping[str, int] | None = None,
    ) -> None:
        self.session = session
        self.params: Mapping[str, int] = session.params if params is None else params
        self._lookup = lookup
        self._symbol = symbol

    @classmethod
    def of(cls, probe: LoadedProbe, session: Session) -> ProbeContext:
        """The context of a loaded probe (or stand-in) in ``session``."""
        return cls(session, probe.map_lookup, probe.kernel_symbol, probe.params)

    @property
    def names(self) -> KernelNames:
        return self.session.names

    def labels(self, kind: str) -> dict[int, Any]:
        return self.session.names.labels(kind)

    def lookup(self, map_name: str, key: bytes) -> bytes | None:
        """Raw value of ``key`` in the probe's map ``map_name`` (None: not there)."""
        return self._lookup(map_name, key)

    def stack(self, stack_id: int, table: str = "tk_stacks") -> list[int]:
        """A stack's kernel addresses, innermost first ([] for a failed stack id)."""
        if stack_id < 0:
            return []
        known = self.session.names.stacks.get(stack_id)
        if known is not None:
            return list(known)
        raw = self._lookup(table, _STACK_KEY.pack(stack_id))
        if raw is None:
            return []
        addrs = []
        for (a,) in struct.iter_unpack("=Q", raw[: len(raw) - len(raw) % 8]):
            if not a:
                break
            addrs.append(int(a))
        self.session.names.add_stacks({stack_id: addrs})
        return addrs

    def symbol(self, addr: int) -> str:
        """The kernel function containing ``addr``, recorded in the session."""
        name = self.session.names.symbols.get(addr)
        if name is None:
            name = self._symbol(addr)
            self.session.names.add_symbols({addr: name})
        return name

    def stack_names(self, stack_id: int, table: str = "tk_stacks") -> list[str]:
        """Symbol names of a stack, innermost first, recorded in the session."""
        return [self.symbol(a) for a in self.stack(stack_id, table)]


class _LegacyStackTable:
    def __init__(self, lookup: Callable[[str, bytes], bytes | None], name: str) -> None:
        self._lookup, self._name = lookup, name

    def walk(self, stack_id: int) -> Iterator[int]:
        raw = self._lookup(self._name, _STACK_KEY.pack(stack_id))
        if raw is None:
            raise KeyError(stack_id)
        for (a,) in struct.iter_unpack("=Q", raw[: len(raw) - len(raw) % 8]):
            if not a:
                return
            yield int(a)


class LegacyTables:
    """For a 0.1.0 ``enrich(bpf, session, rows)`` on a loader without BCC's object:
    ``bpf[b"tk_stacks"].walk(id)`` and ``bpf.ksym(addr)``, built on the two
    primitives. Deprecated with that form of ``enrich``; goes in 0.3.0."""

    def __init__(self, probe: LoadedProbe) -> None:
        self._probe = probe

    def __getitem__(self, name: bytes | str) -> _LegacyStackTable:
        table = name.decode() if isinstance(name, bytes) else name
        return _LegacyStackTable(self._probe.map_lookup, table)

    def ksym(self, addr: int) -> bytes:
        return self._probe.kernel_symbol(addr).encode("utf-8", "replace")


def run_enrich(
    probe: LoadedProbe, session: Session, rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """The probe spec's ``enrich`` on ``rows``, in whichever form it was written."""
    enrich = probe.spec.enrich
    if enrich is None or not rows:
        return rows
    if probe.spec.enrich_is_legacy:
        return enrich(probe.legacy_bpf(), session, rows)
    return enrich(ProbeContext.of(probe, session), rows)


class KernelProbe(abc.ABC):
    """The reporting half of a loaded probe, shared by both loaders; each loader
    implements the abstract methods (attaching, buffers, maps)."""

    spec: ProbeSpec
    params: dict[str, int]
    loader: str
    output: str
    stream: bool
    aggregate: bool
    sample: int
    page_cnt: int
    attached: list[AttachPoint]
    _reported: dict[str, dict[int, int]]

    # -- what each loader implements --------------------------------------------------

    @abc.abstractmethod
    def open_output(self) -> None: ...

    @abc.abstractmethod
    def close_output(self) -> None: ...

    @abc.abstractmethod
    def attach(self, points: list[AttachPoint] | None = None) -> None: ...

    @abc.abstractmethod
    def detach(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def poll(self, timeout_ms: int = 100) -> list[tuple[Any, ...]] | EventBatch: ...

    @abc.abstractmethod
    def read_agg(self) -> list[tuple[tuple[Any, ...], int]]: ...

    @abc.abstractmethod
    def read_percpu(self, name: str, slots: int) -> list[dict[int, int]]: ...

    @abc.abstractmethod
    def map_lookup(self, name: str, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def kernel_symbol(self, addr: int) -> str: ...

    # -- shared ---------------------------------------------------------------------

    def legacy_bpf(self) -> Any:
        return LegacyTables(self)

    def kretprobe_misses(self) -> int:
        return 0

    def read_counters(self) -> dict[str, dict[str, dict[int, int]]]:
        out: dict[str, dict[str, dict[int, int]]] = {}
        for cm in self.spec.counters:
            slots = self.read_percpu(cm.map, len(cm.labels))
            out[cm.map] = dict(zip(cm.labels, slots, strict=True))
        return out

    def new_losses(self) -> list[LostReport]:
        """Losses since the last call, one report per mechanism."""
        # Slot 0: outputs that failed (buffer full), counted in the kernel at the
        # failing call, for the perf buffer as for the ring buffer.
        buffer, rl = self.read_percpu("tk_lost", 2)
        current: dict[str, dict[int, int]] = {self.output: buffer, "ratelimit": rl}
        if any(a.kind == "kretprobe" for a in self.attached):
            current["kretprobe"] = {-1: self.kretprobe_misses()}
        reports = []
        for source, per in current.items():
            seen = self._reported.setdefault(source, {})
            delta = {c: n - seen.get(c, 0) for c, n in per.items() if n - seen.get(c, 0) > 0}
            if delta:
                reports.append(LostReport(source, delta))
                seen.update(per)
        return reports

    def agg_rows(
        self, pairs: Iterable[tuple[Iterable[Any], int]]
    ) -> list[tuple[tuple[Any, ...], int]]:
        """(key values in ``agg_fields`` order, count) -> (full row in schema order,
        zero-filled, count): the documented shape of an in-kernel aggregate."""
        return agg_rows(self.spec, pairs)


def agg_rows(
    spec: ProbeSpec, pairs: Iterable[tuple[Iterable[Any], int]]
) -> list[tuple[tuple[Any, ...], int]]:
    """(key values in ``agg_fields`` order, count) -> (full row in schema order,
    zero-filled, count). A ``char name[N]`` key member comes from the kernel as its
    N bytes: it becomes the text a streamed event's field is (cut at the first NUL,
    UTF-8 with replacement)."""
    schema = spec.schema
    blank = [("" if f.is_str else 0) for f in schema.fields]
    idx = [schema.index(n) for n in spec.agg_fields]
    text = {i for i in idx if schema.fields[i].is_str}
    out = []
    for values, n in pairs:
        row = list(blank)
        for i, v in zip(idx, values, strict=True):
            if i in text and isinstance(v, bytes | bytearray):
                v = bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace")
            row[i] = v
        out.append((tuple(row), n))
    return out


def agg_key_struct(
    spec: ProbeSpec, members: Iterable[tuple[str, int]], size: int
) -> tuple[struct.Struct, list[str]]:
    """A struct reading ``struct tk_agg_key`` as laid out (``members``: name and
    offset of each, ``size``: the struct's), and the schema fields its members are,
    in member order. Widths and signedness come from the schema; members that are
    not schema fields (padding) are skipped. Raises ValueError when the members are
    not the probe's ``agg_fields``."""
    fmt, names, pos = "=", [], 0
    for name, offset in sorted(members, key=lambda m: int(m[1])):
        if name not in spec.agg_fields:
            continue
        f = spec.schema.field(name)
        fmt += "x" * (int(offset) - pos) + f.struct_code
        pos = int(offset) + f.size
        names.append(name)
    fmt += "x" * (int(size) - pos)
    if sorted(names) != sorted(spec.agg_fields):
        raise ValueError(
            f"probe {spec.name}: struct tk_agg_key has {names}, agg_fields {list(spec.agg_fields)}"
        )
    return struct.Struct(fmt), names
