"""What plugins register: probe and sink descriptions, and the registries holding them.

Plugins hand these to ``tracekit_register_probes`` / ``tracekit_register_sinks``. The
registries know which plugin is registering (the bus sets ``current_plugin`` before
each call) so a clash names both plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from typing import Any, Generic, TypeVar

from tracekit.errors import DuplicateError, UsageError
from tracekit.schema import HistSpec, Schema


@dataclass(frozen=True)
class AttachPoint:
    """One place a probe attaches.

    ``kind`` is ``tracepoint``, ``raw_tracepoint``, ``kprobe`` or ``kretprobe``.
    ``target`` is the kernel function (``netdev_pick_tx``) or the tracepoint
    (``net:net_dev_queue``, category included for raw tracepoints too). ``fn`` is
    the BPF function in the ``.bpf.c``. ``module`` names the kernel module that
    provides the function when it is not built in (``sch_fq``). A point in the same
    ``group`` as an earlier one is an alternative: the first one present is used, so
    a probe lists its tracepoint first and a kprobe fallback after it.
    """

    kind: str
    target: str
    fn: str
    module: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("tracepoint", "raw_tracepoint", "kprobe", "kretprobe"):
            raise ValueError(
                "attach kind must be tracepoint, raw_tracepoint, kprobe or kretprobe: "
                f"{self.kind!r}"
            )

    def describe(self) -> str:
        return f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class Param:
    """A declared probe parameter, passed to the C code as ``-D<define>=<value>``."""

    name: str
    default: int
    help: str = ""
    define: str = ""
    minimum: int | None = None
    maximum: int | None = None

    @property
    def macro(self) -> str:
        return self.define or "TK_PARAM_" + self.name.upper().replace("-", "_")

    def parse(self, text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise UsageError(f"parameter {self.name}: {text!r} is not an integer") from None
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"parameter {self.name}: {value} is below {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise UsageError(f"parameter {self.name}: {value} is above {self.maximum}")
        return value


@dataclass(frozen=True)
class CounterMap:
    """An in-kernel per-CPU counter array read when the run ends.

    ``map`` names a ``BPF_PERCPU_ARRAY`` in the probe; ``labels`` names its slots.
    """

    map: str
    labels: tuple[str, ...]
    doc: str = ""


@dataclass(frozen=True)
class ProbeSpec:
    """Everything tracekit needs to compile, attach and decode one probe."""

    name: str
    description: str
    source: Traversable
    schema: Schema
    attach: tuple[AttachPoint, ...]
    params: tuple[Param, ...] = ()
    counters: tuple[CounterMap, ...] = ()
    min_kernel: str = "5.8"
    event_struct: str = "tk_event"
    needs_btf: bool = False
    include_dirs: tuple[Traversable, ...] = ()
    # Called with the compiled bcc.BPF object and the parameters after attach, for
    # probes that need to fill maps (filters, BTF offsets) before events flow.
    setup: Callable[[Any, dict[str, int]], None] | None = None
    # Extra compiler flags computed on the running machine before compiling (for
    # example struct offsets read from the kernel's BTF); raises TracekitError when
    # the machine does not fit.
    prepare: Callable[[dict[str, int]], list[str]] | None = None
    # Fills user-space fields of decoded rows (for example a path name from a
    # stack id), given the bcc.BPF object and the session (for symbols, stacks).
    enrich: Callable[[Any, Any, list[tuple[Any, ...]]], list[tuple[Any, ...]]] | None = None
    # The fields ``enrich`` fills (available in in-kernel aggregates too).
    enriched_fields: tuple[str, ...] = ()
    # A BPF hash named ``tk_agg`` keyed by a struct whose members are schema fields,
    # valued by a u64 count: what the probe counts in the kernel when no sink needs
    # single events. These are its key fields.
    agg_fields: tuple[str, ...] = ()
    # Lines summarising a run from its summary (counters), printed with the results.
    report: Callable[[Any], list[str]] | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        valid = ", ".join(p.name for p in self.params) or "none"
        raise UsageError(f"probe {self.name} has no parameter {name!r}; valid: {valid}")

    def resolve_params(self, given: dict[str, str]) -> dict[str, int]:
        values = {p.name: p.default for p in self.params}
        for k, v in given.items():
            values[k] = self.param(k).parse(v)
        return values

    def default_histograms(self) -> tuple[HistSpec, ...]:
        return self.schema.histograms

    @property
    def kernel_aggregation(self) -> bool:
        return bool(self.agg_fields)


@dataclass(frozen=True)
class SinkSpec:
    """A sink: ``factory(arg)`` builds one sink object for one session.

    ``arg`` is what followed ``=`` in ``--sink NAME=ARG`` (``None`` when absent). The
    object it returns is registered on the bus for the session and receives the
    session hooks it implements with ``@tracekit.hookimpl``. ``streams`` is true for
    sinks that need every single event (console, msgpack); a session with only
    non-streaming sinks (hist) lets probes aggregate in the kernel.
    """

    name: str
    description: str
    factory: Callable[[str | None], object]
    streams: bool = True


T = TypeVar("T", ProbeSpec, SinkSpec)


@dataclass
class _Registry(Generic[T]):
    kind: str
    items: dict[str, tuple[T, str]] = field(default_factory=dict)
    current_plugin: str = "?"

    def add(self, spec: T) -> None:
        if spec.name in self.items:
            other = self.items[spec.name][1]
            raise DuplicateError(
                f"{self.kind} {spec.name!r} is registered by both {other} and {self.current_plugin}"
            )
        self.items[spec.name] = (spec, self.current_plugin)

    def get(self, name: str) -> T:
        try:
            return self.items[name][0]
        except KeyError:
            valid = ", ".join(sorted(self.items)) or "none"
            raise UsageError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def plugin_of(self, name: str) -> str:
        return self.items[name][1]

    def __iter__(self) -> Iterator[T]:
        return iter(spec for _, (spec, _) in sorted(self.items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def __len__(self) -> int:
        return len(self.items)


class ProbeRegistry(_Registry[ProbeSpec]):
    def __init__(self) -> None:
        super().__init__(kind="probe")


class SinkRegistry(_Registry[SinkSpec]):
    def __init__(self) -> None:
        super().__init__(kind="sink")
