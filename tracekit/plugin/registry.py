"""What plugins register: probe and sink descriptions, and the registries holding them.

Plugins hand these to ``tracekit_register_probes`` / ``tracekit_register_sinks``. The
registries know which plugin is registering (the bus sets ``current_plugin`` before
each call) so a clash names both plugins.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tracekit._compat import warn_deprecated
from tracekit.base import kernel
from tracekit.base.cdecl import CDeclError, CSource
from tracekit.base.errors import DuplicateError, UsageError
from tracekit.base.schema import Field, HistSpec, Schema

if TYPE_CHECKING:
    from tracekit.base.findings import Findings
    from tracekit.base.session import Session


@dataclass(frozen=True)
class AttachPoint:
    """One place a probe attaches.

    ``kind`` is ``tracepoint``, ``raw_tracepoint``, ``kprobe`` or ``kretprobe``.
    ``target`` is the kernel function (``netdev_pick_tx``) or the tracepoint
    (``net:net_dev_queue``, category included for raw tracepoints too). ``fn`` is
    the BPF function in the ``.bpf.c``. ``module`` names the kernel module that
    provides the function when it is not built in (``sch_fq``). A point in the same
    ``group`` as an earlier one is an alternative: the first one present is used, so
    a probe lists its tracepoint first and a kprobe fallback after it. ``since``
    (``"6.19"``) attaches the point only on kernels at least that version: for a
    function every kernel has whose meaning for the probe starts with a release
    (ooo-okay's ``skb_set_owner_w``, which sets ``ooo_okay`` from 6.19).

    ``ret_fn`` makes a kprobe a pair with the kretprobe of the same function
    (``AttachPoint.pair(target, entry_fn, ret_fn)``): both attach, or neither, and
    a ``group`` chooses between whole pairs, so alternatives for a renamed function
    cannot attach an entry without its return.
    """

    kind: str
    target: str
    fn: str
    module: str | None = None
    group: str | None = None
    since: str | None = None
    ret_fn: str | None = None

    @classmethod
    def pair(
        cls,
        target: str,
        fn: str,
        ret_fn: str,
        *,
        module: str | None = None,
        group: str | None = None,
        since: str | None = None,
    ) -> AttachPoint:
        """A kprobe on ``target`` (program ``fn``) and its kretprobe (``ret_fn``),
        attached together or not at all."""
        return cls("kprobe", target, fn, module=module, group=group, since=since, ret_fn=ret_fn)

    def expanded(self) -> tuple[AttachPoint, ...]:
        """The single attachments this point makes: itself, or a pair's kprobe and
        kretprobe (what the loaders attach and list in ``attached``)."""
        if self.ret_fn is None:
            return (self,)
        entry = replace(self, ret_fn=None)
        return (entry, replace(entry, kind="kretprobe", fn=self.ret_fn))

    def __post_init__(self) -> None:
        if self.kind not in ("tracepoint", "raw_tracepoint", "kprobe", "kretprobe"):
            raise ValueError(
                "attach kind must be tracepoint, raw_tracepoint, kprobe or kretprobe: "
                f"{self.kind!r}"
            )
        if self.since is not None and kernel.kernel_version(self.since) is None:
            # A typo fails at registration.
            raise ValueError(
                f"attach point {self.describe()}: since must be MAJOR.MINOR[.PATCH]: {self.since!r}"
            )
        if self.ret_fn is not None and self.kind != "kprobe":
            raise ValueError(f"attach point {self.describe()}: only a kprobe pairs with a ret_fn")

    def describe(self) -> str:
        if self.ret_fn is not None:
            return f"kprobe+kretprobe:{self.target}"
        return f"{self.kind}:{self.target}"


# The largest interface index: net_device.ifindex is an int.
IFINDEX_MAX = (1 << 31) - 1


def expand_points(points: Sequence[AttachPoint]) -> list[AttachPoint]:
    """Each point's single attachments, pairs split into kprobe and kretprobe."""
    return [one for ap in points for one in ap.expanded()]


def _check_groups(name: str, points: Sequence[AttachPoint]) -> None:
    """Refuse a group whose alternatives would split an entry from its return: the
    first present alternative is the only one attached, so a kprobe and the
    kretprobe of the same function in one group never both attach."""
    by_group: dict[str, list[AttachPoint]] = {}
    for ap in points:
        if ap.group is not None:
            by_group.setdefault(ap.group, []).append(ap)
    for group, alts in by_group.items():
        entries = {ap.target for ap in alts if ap.kind == "kprobe" and ap.ret_fn is None}
        for ap in alts:
            if ap.kind == "kretprobe" and ap.target in entries:
                raise ValueError(
                    f"probe {name}: group {group!r} has a kprobe and a kretprobe of "
                    f"{ap.target}, which alternatives would split (only one of a group "
                    f"attaches): declare them as one AttachPoint.pair({ap.target!r}, "
                    "ENTRY_FN, RETURN_FN, group=...)"
                )


@dataclass(frozen=True)
class Param:
    """A declared probe parameter: an integer, given as ``--param name=VALUE``.

    ``Param(name, default, help="", define="", minimum=None, maximum=None)``. The
    value reaches BCC's C as ``-D<define>=<value>`` (``define`` defaults to
    ``TK_PARAM_<NAME>``) and ``-DTK_PARAM_<name>``, and a CO-RE object as the
    read-only variable ``tk_param_<name>`` (``TK_PARAM(name)``). ``minimum`` and
    ``maximum`` bound it (a value outside is a usage error, status 2).
    """

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
        # Passed to C as -D<macro>=<value>: beyond 64 bits the compiler truncates it
        # (or refuses it after a slow start), so a parameter of 10**22 stops here.
        if not -(1 << 63) <= value < (1 << 64):
            raise UsageError(f"parameter {self.name}: {value} does not fit in 64 bits")
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"parameter {self.name}: {value} is below {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise UsageError(f"parameter {self.name}: {value} is above {self.maximum}")
        return value


@dataclass(frozen=True)
class CounterMap:
    """An in-kernel per-CPU counter array read when the run ends.

    ``map`` names a ``BPF_PERCPU_ARRAY`` in the probe. Its slots are named once, in
    the C, by ``enum <map>`` (tracekit/base/cdecl.py: ``RSS_COUNTS_PACKETS`` is slot
    ``packets``); the ProbeSpec reads them when it is made. ``labels`` names them
    by hand instead (a probe without such an enum). When the names depend on the
    running kernel (drop reasons, whose numbers differ between releases), give
    ``labels_from``: a function returning the names, called once when the probe
    loads, on the machine that runs it. A trace stores the names it used, so a
    replay needs none of these.
    """

    map: str
    labels: tuple[str, ...] = ()
    doc: str = ""
    labels_from: Callable[[], Sequence[str]] | None = None

    def __post_init__(self) -> None:
        if self.labels and self.labels_from is not None:
            raise ValueError(f"counter map {self.map}: give labels or labels_from, not both")

    def resolved(self) -> CounterMap:
        """This map with ``labels`` computed by ``labels_from`` (itself without one)."""
        if self.labels_from is None:
            if not self.labels:
                raise UsageError(f"counter map {self.map}: no labels")
            return self
        labels = tuple(str(n) for n in self.labels_from())
        if not labels:
            raise UsageError(f"counter map {self.map}: labels_from returned no labels")
        if len(set(labels)) != len(labels):
            raise UsageError(f"counter map {self.map}: labels_from returned duplicate labels")
        return replace(self, labels=labels, labels_from=None)


def _positional_count(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` takes (a bound method's self not counted)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(sig.parameters.values())
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in kinds)


def _user_stacklevel() -> int:
    """``stacklevel`` naming the code that made the ProbeSpec (past this module and
    the dataclass's generated ``__init__``), counted from warn_deprecated's call."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and (
        frame.f_code.co_filename in (__file__, "<string>")
        or frame.f_code.co_filename.endswith("dataclasses.py")
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level + 1


def min_kernel_version(text: str) -> tuple[int, ...]:
    """A ``ProbeSpec.min_kernel`` as a tuple; ValueError for a malformed one."""
    v = kernel.kernel_version(text)
    if v is None:
        raise ValueError(f"min_kernel must be MAJOR.MINOR[.PATCH]: {text!r}")
    return v


# ProbeSpec.schema's default: read struct tk_event from the source.
_FROM_C = Schema(fields=())


@dataclass(frozen=True)
class ProbeSpec:
    """Everything tracekit needs to compile, attach and decode one probe.

    The C source is the one declaration of the probe's layouts: ``struct tk_event``
    gives the schema (``fields`` and ``histograms`` add how fields are shown, see
    ``Schema.from_c``), ``struct tk_agg_key`` the ``agg_fields``, ``enum <map>`` the
    labels of each ``CounterMap``. They are read when the spec is made, without a
    compiler; anything the C declares outside tracekit/base/cdecl.py's subset is refused
    then, naming file and line. ``schema=`` takes a hand-made Schema instead (tests).

    ``min_kernel`` (``"5.8"``) is checked before compiling: an older running kernel
    is one ``tracekit:`` line naming both versions (status 15).
    """

    name: str
    description: str
    source: Traversable
    schema: Schema = _FROM_C
    attach: tuple[AttachPoint, ...] = ()
    # How the struct's fields are shown, by name (Field without a type), and the
    # default histograms: see Schema.from_c.
    fields: tuple[Field, ...] = ()
    histograms: tuple[HistSpec, ...] = ()
    params: tuple[Param, ...] = ()
    counters: tuple[CounterMap, ...] = ()
    min_kernel: str = "5.8"
    event_struct: str = "tk_event"
    needs_btf: bool = False
    # The source also compiles with -DTK_CORE (probes/tk_compat.h): `tracekit build`
    # makes a CO-RE object of it, which runs without headers and without BCC.
    core: bool = False
    include_dirs: tuple[Traversable, ...] = ()
    # Deprecated (goes in 0.3.0; use prepare): called by the BCC loader only, with
    # the bcc.BPF object and the parameters after attach.
    setup: Callable[[Any, dict[str, int]], None] | None = None
    # Values computed on the running machine before loading (for example struct
    # offsets or enum values read from the kernel's BTF), by C macro name, given the
    # parameters; raises TracekitError when the machine does not fit. A macro that a
    # TK_SETTING(type, name, MACRO, default) of the source declares reaches both
    # loaders (BCC: -DMACRO=value; CO-RE: the read-only variable `name`, written
    # before load); any other macro is a -D for the BCC build only (what CO-RE
    # relocates instead).
    prepare: Callable[[dict[str, int]], dict[str, int]] | None = None
    # Fills user-space fields of decoded rows (for example a path name from a
    # stack id): enrich(ctx, rows) -> rows, ``ctx`` a tracekit.ProbeContext (stacks,
    # symbols, params, map lookups; the same under both loaders). The 0.1.0 form
    # enrich(bpf, session, rows) still works, deprecated (goes in 0.3.0).
    enrich: Callable[..., list[tuple[Any, ...]]] | None = None
    # The fields ``enrich`` fills (available in in-kernel aggregates too).
    enriched_fields: tuple[str, ...] = ()
    # A BPF hash named ``tk_agg`` keyed by ``struct tk_agg_key``, whose members are
    # event fields, valued by a u64 count: what the probe counts in the kernel when
    # no sink needs single events. Its key fields, read from the C (given by hand
    # only with a hand-made schema).
    agg_fields: tuple[str, ...] = ()
    # Lines summarising a run from its summary (counters), printed with the results.
    report: Callable[[Any], list[str]] | None = None
    # The probe's picture for ``tracekit plot``: draw(trace) -> matplotlib Figure, given
    # a tracekit.fleet.plot.Trace (see tracekit/fleet/plot.py). Other plugins add more plots with
    # the tracekit_register_plots hook.
    plot: Callable[[Any], Any] | None = None
    # What the numbers mean: ``findings(session)`` returns a ``tracekit.Findings``
    # that the pipeline feeds every batch and, at the end, the summary; its findings
    # are printed after the summary (``--findings``), stored in the trace footer, and
    # recomputed on replay from the same data (tracekit/base/findings.py).
    findings: Callable[[Session], Findings] | None = None
    # Facts read from the machine when a live run starts, ``metadata(params)`` ->
    # plain values (str keys), which the session and the trace header keep
    # (``Session.metadata``) for the findings of a run and of its replay.
    metadata: Callable[[Mapping[str, int]], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        min_kernel_version(self.min_kernel)  # a typo fails at registration
        # Both loaders find the event layout by the name tk_event (tracekit.h's
        # tk_event_layout map): another name would be ignored, so it is refused.
        if self.event_struct != "tk_event":
            raise ValueError(
                f"probe {self.name}: event_struct must be 'tk_event' (the loaders read "
                f"only struct tk_event), not {self.event_struct!r}"
            )
        _check_groups(self.name, self.attach)
        if self.setup is not None:
            warn_deprecated(
                f"ProbeSpec.setup (probe {self.name})",
                "prepare= (values computed before load, for both loaders)",
                stacklevel=_user_stacklevel(),
            )
        if self.enrich is not None and self.enrich_is_legacy:
            warn_deprecated(
                f"enrich(bpf, session, rows) (probe {self.name})",
                "enrich(ctx: tracekit.ProbeContext, rows)",
                stacklevel=_user_stacklevel(),
            )
        self._read_c()

    @property
    def enrich_is_legacy(self) -> bool:
        """Whether ``enrich`` takes 0.1.0's (bpf, session, rows), not (ctx, rows)."""
        return self.enrich is not None and _positional_count(self.enrich) >= 3

    def default_histograms(self) -> tuple[HistSpec, ...]:
        """Deprecated (goes in 0.3.0): ``spec.schema.histograms``."""
        warn_deprecated("ProbeSpec.default_histograms()", "ProbeSpec.schema.histograms")
        return self.schema.histograms

    def setting_variables(self) -> dict[str, str]:
        """{MACRO: variable} of the source's TK_SETTING declarations (cdecl)."""
        return CSource.parse(self.source.read_text(), self.source.name).settings()

    def _read_c(self) -> None:
        """Fill the schema, agg_fields and counter labels from the C declarations."""
        src: CSource | None = None

        def source() -> CSource:
            nonlocal src
            if src is None:
                src = CSource.parse(self.source.read_text(), self.source.name)
            return src

        schema = self.schema
        if schema is _FROM_C:
            schema = Schema.from_struct(
                source().struct(self.event_struct), self.fields, self.histograms
            )
            object.__setattr__(self, "schema", schema)
        elif (self.fields or self.histograms) and schema.layout is None:
            # (A spec copied by dataclasses.replace passes both, the schema from C.)
            raise ValueError(
                f"probe {self.name}: give fields and histograms (the C has the struct) "
                "or a hand-made schema, not both"
            )
        if schema.layout is not None:
            self._read_agg_key(source())
        counters = []
        for cm in self.counters:
            # A hand-made schema with hand-given labels reads nothing from the C.
            if cm.labels_from is None and (not cm.labels or schema.layout is not None):
                labels = source().counter_labels(cm.map)
                if labels is None and not cm.labels:
                    raise CDeclError(
                        f"{self.source.name}: counter map {cm.map} has no labels: declare "
                        f"'enum {cm.map} {{ {cm.map.upper()}_<LABEL>, ... }};' in the C"
                    )
                if labels is not None and cm.labels and cm.labels != labels:
                    raise CDeclError(
                        f"{self.source.name}: counter map {cm.map}: labels {list(cm.labels)} "
                        f"differ from enum {cm.map}'s {list(labels)}; leave them to the C"
                    )
                if labels is not None:
                    cm = replace(cm, labels=labels)
            counters.append(cm)
        object.__setattr__(self, "counters", tuple(counters))

    def _read_agg_key(self, src: CSource) -> None:
        if not src.has_struct("tk_agg_key"):
            if self.agg_fields:
                raise CDeclError(
                    f"{self.source.name}: agg_fields given but no struct tk_agg_key declared"
                )
            return
        key = src.struct("tk_agg_key")
        names = []
        members = [(e, m.line) for m in key.members if not m.padding for e in m.elements()]
        for (name, ctype, _), line in members:
            where = f"{key.path}:{line}: struct tk_agg_key member {name}"
            if name not in self.schema.names:
                raise CDeclError(f"{where} is not a field of struct {self.event_struct}")
            if self.schema.field(name).type != ctype:
                raise CDeclError(
                    f"{where} is {ctype}, the event's is {self.schema.field(name).type}"
                )
            names.append(name)
        if self.agg_fields and tuple(self.agg_fields) != tuple(names):
            raise CDeclError(
                f"{key.path}:{key.line}: agg_fields {list(self.agg_fields)} differ from "
                f"struct tk_agg_key's {names}; leave agg_fields to the C"
            )
        object.__setattr__(self, "agg_fields", tuple(names))

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

    def resolved(self) -> ProbeSpec:
        """The spec as the running machine loads it: counter labels computed."""
        if all(c.labels_from is None for c in self.counters):
            return self
        return replace(self, counters=tuple(c.resolved() for c in self.counters))

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


@dataclass(frozen=True)
class PlotSpec:
    """A plot of one probe's traces, added with ``tracekit_register_plots``.

    ``draw(trace)`` gets a ``tracekit.fleet.plot.Trace`` and returns a matplotlib ``Figure``;
    ``tracekit plot FILE --plot NAME`` draws it for traces of ``probe``.
    """

    name: str
    probe: str
    description: str
    draw: Callable[[Any], Any]


T = TypeVar("T", ProbeSpec, SinkSpec, PlotSpec)


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


class PlotRegistry(_Registry[PlotSpec]):
    def __init__(self) -> None:
        super().__init__(kind="plot")
