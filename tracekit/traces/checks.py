"""Checks on everything a trace file claims, before any of it is used.

A trace file is untrusted input: it may come from another machine, another version,
a disk that flipped bits, or someone who forged valid CRCs over a hostile body. The
reader decodes each record with msgpack and hands the payload to one of these
checks, which accept exactly the shapes the writer produces: the right types (an
``int`` is an ``int``, not a ``bool``, a float or a nested list), finite numbers,
values in range, strings and collections no longer than the limits below. Anything
else raises ``Invalid`` naming the record and the field, which the reader turns into
one line and status 2.

The limits bound what a small file can make tracekit allocate or compute (see
docs/trace-format.md). They are far above what any probe declares: the widest
schema shipped has 17 fields and the longest string field is 16 bytes (a ``comm``).

Rows are checked a batch at a time, column by column, with ``map``/``min``/``max``
over the columns (C loops, not a Python call per event), so the check stays cheap on
the replay hot path.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tracekit.base.findings import (
    MAX_DATA_DEPTH,
    MAX_DATA_ITEMS,
    MAX_FINDINGS,
    MAX_LINE,
    MAX_LINES,
    Finding,
)
from tracekit.base.hist import check_hist_limits
from tracekit.base.schema import DISPLAYS, HistSpec, Schema
from tracekit.base.session import Summary

# -- limits (documented in docs/trace-format.md) --------------------------------------
MAX_FIELDS = 256
MAX_STR_WIDTH = 4096
MAX_NAME = 256  # field, parameter, probe, counter, host names and other labels
MAX_TEXT = 4096  # docs, notes, symbol names
MAX_CHOICES = 1024
MAX_HISTOGRAMS = 8  # each may keep up to hist.MAX_HIST_CELLS counters
MAX_PARAMS = 256
MAX_CPUS = 65536
MAX_MAP_ITEMS = 65536  # entries in one map of a header, footer or lost record
MAX_NOTES = 1024
MAX_STACK_DEPTH = 1024
MAX_SYMBOLS_PER_RECORD = 1 << 20
# 31 Dec 9999: what datetime can show; a start time beyond is not a real recording.
MAX_START_TIME = 253402300799.0
MAX_DURATION = 1e10  # seconds (over 300 years)
MAX_SAMPLE_EVERY = 1 << 32

S64_MIN, U64_MAX = -(1 << 63), (1 << 64) - 1
COUNT_MAX = (1 << 63) - 1

_INT_RANGES: dict[str, tuple[int, int]] = {
    "u8": (0, (1 << 8) - 1),
    "u16": (0, (1 << 16) - 1),
    "u32": (0, (1 << 32) - 1),
    "u64": (0, U64_MAX),
    "s8": (-(1 << 7), (1 << 7) - 1),
    "s16": (-(1 << 15), (1 << 15) - 1),
    "s32": (-(1 << 31), (1 << 31) - 1),
    "s64": (S64_MIN, (1 << 63) - 1),
}


class Invalid(ValueError):
    """A value in a trace that the writer would never have produced."""


# -- primitives ------------------------------------------------------------------------


def _int(v: Any, where: str, lo: int = S64_MIN, hi: int = U64_MAX) -> int:
    # type() is not isinstance(): True is an int to Python but never one to the writer.
    if type(v) is not int:
        raise Invalid(f"{where}: expected an integer, got {_kind(v)}")
    if not lo <= v <= hi:
        raise Invalid(f"{where}: {v} is out of range [{lo}, {hi}]")
    return v


def _num(v: Any, where: str, lo: float, hi: float) -> float:
    if type(v) not in (int, float):
        raise Invalid(f"{where}: expected a number, got {_kind(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise Invalid(f"{where}: {v} is not a finite number")
    if not lo <= v <= hi:
        raise Invalid(f"{where}: {v} is out of range [{lo:g}, {hi:g}]")
    return float(v)


def _str(v: Any, where: str, limit: int = MAX_NAME) -> str:
    if type(v) is not str:
        raise Invalid(f"{where}: expected a string, got {_kind(v)}")
    if len(v) > limit:
        raise Invalid(f"{where}: string of {len(v)} characters (limit {limit})")
    return v


def _bool(v: Any, where: str) -> bool:
    if type(v) is not bool:
        raise Invalid(f"{where}: expected true or false, got {_kind(v)}")
    return v


def _map(v: Any, where: str, limit: int = MAX_MAP_ITEMS) -> dict[Any, Any]:
    if type(v) is not dict:
        raise Invalid(f"{where}: expected a map, got {_kind(v)}")
    if len(v) > limit:
        raise Invalid(f"{where}: {len(v)} entries (limit {limit})")
    return v


def _seq(v: Any, where: str, limit: int) -> tuple[Any, ...]:
    # The reader decodes arrays as tuples (use_list=False).
    if type(v) is not tuple:
        raise Invalid(f"{where}: expected an array, got {_kind(v)}")
    if len(v) > limit:
        raise Invalid(f"{where}: {len(v)} entries (limit {limit})")
    return v


def _kind(v: Any) -> str:
    """The type of a bad value in words; never its repr (it may be huge or nested)."""
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        bytes: "bytes",
        tuple: "an array",
        dict: "a map",
        type(None): "nil",
    }
    return names.get(type(v), "an extension type")


def _str_map(
    v: Any, where: str, value: Callable[[Any, str], Any], limit: int = MAX_MAP_ITEMS
) -> dict[str, Any]:
    return {
        _str(k, f"{where} key"): value(x, f"{where}[{k}]") for k, x in _map(v, where, limit).items()
    }


def _per_cpu(v: Any, where: str) -> dict[int, int]:
    return {
        _int(c, f"{where} CPU", 0, MAX_CPUS - 1): _int(n, f"{where}[{c}]", 0, COUNT_MAX)
        for c, n in _map(v, where, MAX_CPUS).items()
    }


# -- header ----------------------------------------------------------------------------


def check_field(d: Any, where: str) -> dict[str, Any]:
    d = _map(d, where, 32)
    name = _str(d.get("name", None), f"{where}.name")
    where = f"{where} ({name!r})" if name.isprintable() else where
    ftype = _str(d.get("type", None), f"{where}.type", 16)
    if ftype.startswith("str"):
        digits = ftype[3:]
        if not (digits.isascii() and digits.isdigit()) or not 0 < int(digits) <= MAX_STR_WIDTH:
            raise Invalid(f"{where}.type: {ftype!r}: string widths are str1..str{MAX_STR_WIDTH}")
    elif ftype not in _INT_RANGES:
        raise Invalid(f"{where}.type: unknown type")
    display = _str(d.get("display", "int"), f"{where}.display", 16)
    if display not in DISPLAYS:
        raise Invalid(f"{where}.display: unknown display")
    choices = _seq(d.get("choices", ()), f"{where}.choices", MAX_CHOICES)
    return {
        "name": name,
        "type": ftype,
        "unit": _str(d.get("unit", ""), f"{where}.unit"),
        "key": _bool(d.get("key", False), f"{where}.key"),
        "display": display,
        "doc": _str(d.get("doc", ""), f"{where}.doc", MAX_TEXT),
        "choices": [_str(c, f"{where}.choices") for c in choices],
    }


def check_histspec(d: Any, where: str) -> HistSpec:
    d = _map(d, where, 32)
    value = d.get("value", None)
    kind = _str(d.get("kind", "log2"), f"{where}.kind", 16)
    try:
        spec = HistSpec(
            value=None if value is None else _str(value, f"{where}.value"),
            by=tuple(
                _str(b, f"{where}.by") for b in _seq(d.get("by", ()), f"{where}.by", MAX_FIELDS)
            ),
            kind=kind,
            lo=_int(d.get("lo", 0), f"{where}.lo"),
            hi=_int(d.get("hi", 0), f"{where}.hi"),
            step=_int(d.get("step", 1), f"{where}.step"),
            title=_str(d.get("title", ""), f"{where}.title"),
        )
        check_hist_limits(spec)
    except ValueError as exc:
        raise Invalid(f"{where}: {exc}") from None
    return spec


def check_schema(d: Any, where: str = "header.schema") -> Schema:
    d = _map(d, where, 32)
    fields = _seq(d.get("fields", None), f"{where}.fields", MAX_FIELDS)
    if not fields:
        raise Invalid(f"{where}.fields: no fields")
    checked = [check_field(f, f"{where}.fields[{i}]") for i, f in enumerate(fields)]
    counts = Counter(f["name"] for f in checked)
    dupes = [n for n, c in counts.items() if c > 1]
    if dupes:
        raise Invalid(f"{where}.fields: {len(dupes)} duplicate field names")
    hists = [
        check_histspec(h, f"{where}.histograms[{i}]")
        for i, h in enumerate(_seq(d.get("histograms", ()), f"{where}.histograms", MAX_HISTOGRAMS))
    ]
    try:
        return Schema.from_dict({"fields": checked, "histograms": [h.to_dict() for h in hists]})
    except (KeyError, ValueError) as exc:
        raise Invalid(f"{where}: {str(exc).strip(chr(34) + chr(39))}") from None


def check_header(h: Any, newest: int) -> dict[str, Any]:
    """The header as the writer wrote it, every value checked; raises ``Invalid``."""
    h = _map(h, "header", 64)
    fmt = _int(h.get("format", None), "header.format", 1, COUNT_MAX)
    if fmt > newest:
        # Checked first: a newer file is not corrupt, and saying so helps more.
        return {"format": fmt}
    schema = check_schema(h.get("schema", None))
    aggregated = [
        _str(a, "header.aggregated")
        for a in _seq(h.get("aggregated", ()), "header.aggregated", MAX_FIELDS)
    ]
    for a in aggregated:
        if a not in schema.names:
            raise Invalid("header.aggregated: names a field the schema does not have")
    return {
        "format": fmt,
        "tracekit_version": _str(h.get("tracekit_version", "?"), "header.tracekit_version"),
        "probe": _str(h.get("probe", None), "header.probe"),
        "params": _str_map(
            h.get("params", {}), "header.params", lambda v, w: _int(v, w), MAX_PARAMS
        ),
        "schema": schema,
        "kernel": _str(h.get("kernel", "?"), "header.kernel"),
        "ncpus": _int(h.get("ncpus", 0), "header.ncpus", 0, MAX_CPUS),
        "hostname": _str(h.get("hostname", "?"), "header.hostname"),
        "start_time": _num(h.get("start_time", 0.0), "header.start_time", 0.0, MAX_START_TIME),
        "sample_every": _int(h.get("sample_every", 1), "header.sample_every", 1, MAX_SAMPLE_EVERY),
        "monotonic_ns": _int(h.get("monotonic_ns", 0), "header.monotonic_ns", 0, (1 << 63) - 1),
        "aggregated": aggregated,
        "metadata": check_plain(h.get("metadata", {}), "header.metadata", want_map=True),
        # None: a trace written before the header said (see TraceReader.streamed).
        "streamed": None if h.get("streamed") is None else _bool(h["streamed"], "header.streamed"),
    }


# -- plain data: a header's metadata, a footer's findings ------------------------------


def check_plain(v: Any, where: str, depth: int = 0, want_map: bool = False) -> Any:
    """JSON-like data (str keys; str, int, float, bool, nil, arrays, maps) within
    ``tracekit.base.findings``' bounds, as dicts and lists; raises ``Invalid``."""
    if want_map and type(v) is not dict:
        raise Invalid(f"{where}: expected a map, got {_kind(v)}")
    if depth > MAX_DATA_DEPTH:
        raise Invalid(f"{where}: nested deeper than {MAX_DATA_DEPTH}")
    if v is None or type(v) in (bool, int):
        if type(v) is int:
            _int(v, where)
        return v
    if type(v) is float:
        return _num(v, where, -math.inf, math.inf)
    if type(v) is str:
        return _str(v, where, MAX_TEXT)
    if type(v) is dict:
        _map(v, where, MAX_DATA_ITEMS)
        return {
            _str(k, f"{where} key"): check_plain(x, f"{where}.{k}", depth + 1) for k, x in v.items()
        }
    if type(v) is tuple:
        return [check_plain(x, f"{where}[]", depth + 1) for x in _seq(v, where, MAX_DATA_ITEMS)]
    raise Invalid(f"{where}: expected plain data, got {_kind(v)}")


def check_finding(v: Any, where: str) -> Finding:
    d = _map(v, where, 16)

    def lines(key: str) -> tuple[str, ...]:
        return tuple(
            _str(x, f"{where}.{key}", MAX_LINE)
            for x in _seq(d.get(key, ()), f"{where}.{key}", MAX_LINES)
        )

    return Finding(
        probe=_str(d.get("probe", None), f"{where}.probe"),
        what=_str(d.get("what", None), f"{where}.what"),
        text=_str(d.get("text", None), f"{where}.text", MAX_LINE),
        details=lines("details"),
        hints=lines("hints"),
        data=check_plain(d.get("data", {}), f"{where}.data", want_map=True),
    )


# -- rows ------------------------------------------------------------------------------


class RowCheck:
    """Checks whole batches of rows against one schema: width, type and range."""

    def __init__(self, schema: Schema) -> None:
        self.width = len(schema.fields)
        # Per column: (name, type the values must have, lo, hi); for strings hi is
        # the width in bytes, which bounds the decoded length in characters too.
        self.columns: list[tuple[str, type, int, int]] = []
        for f in schema.fields:
            if f.is_str:
                self.columns.append((f.name, str, 0, f.size))
            else:
                lo, hi = _INT_RANGES[f.type]
                self.columns.append((f.name, int, lo, hi))

    def check(self, rows: Any, where: str, limit: int) -> None:
        """Raise ``Invalid`` unless ``rows`` is a tuple of at most ``limit`` valid rows."""
        if type(rows) is not tuple:
            raise Invalid(f"{where}: expected an array of rows, got {_kind(rows)}")
        if len(rows) > limit:
            raise Invalid(f"{where}: {len(rows)} rows (limit {limit})")
        if not rows:
            return
        if set(map(type, rows)) != {tuple}:
            raise Invalid(f"{where}: a row is not an array")
        if set(map(len, rows)) != {self.width}:
            raise Invalid(f"{where}: a row does not have the schema's {self.width} fields")
        cols = zip(self.columns, zip(*rows, strict=True), strict=True)
        for i, ((name, typ, lo, hi), col) in enumerate(cols):
            # Names come from the file too: quoted only when safe to print.
            shown = repr(name) if name.isprintable() else f"#{i}"
            if set(map(type, col)) != {typ}:
                what = "an integer" if typ is int else "a string"
                raise Invalid(f"{where}: field {shown} is not {what} in every row")
            if typ is int:
                low, high = min(col), max(col)
                if low < lo or high > hi:
                    bad = low if low < lo else high
                    raise Invalid(f"{where}: field {shown}: {bad} is out of range [{lo}, {hi}]")
            elif max(map(len, col)) > hi:
                raise Invalid(f"{where}: field {shown}: a string is longer than its {hi} bytes")


# -- other records ---------------------------------------------------------------------


def check_symbols(
    p: Any, where: str = "symbols record"
) -> tuple[dict[int, str], dict[int, list[int]]]:
    p = _map(p, where, 8)
    syms = {
        _int(a, f"{where}: address", 0, U64_MAX): _str(n, f"{where}: symbol name", MAX_TEXT)
        for a, n in _map(p.get("symbols", {}), f"{where}.symbols", MAX_SYMBOLS_PER_RECORD).items()
    }
    stacks = {
        _int(s, f"{where}: stack id", 0, U64_MAX): [
            _int(a, f"{where}: stack address", 0, U64_MAX)
            for a in _seq(addrs, f"{where}: stack", MAX_STACK_DEPTH)
        ]
        for s, addrs in _map(p.get("stacks", {}), f"{where}.stacks", MAX_SYMBOLS_PER_RECORD).items()
    }
    return syms, stacks


def check_lost(p: Any, where: str = "lost-events record") -> tuple[str, dict[int, int]]:
    p = _map(p, where, 8)
    return (
        _str(p.get("source", "?"), f"{where}.source"),
        _per_cpu(p.get("per_cpu", {}), f"{where}.per_cpu"),
    )


def check_footer(p: Any, rows: RowCheck, where: str = "footer") -> tuple[Summary, dict[str, int]]:
    """The footer's summary and (format 2) the writer's own counts of what it wrote."""
    p = _map(p, where, 32)
    agg = _seq(p.get("kernel_agg", ()), f"{where}.kernel_agg", 1 << 20)
    for i, pair in enumerate(agg):
        if type(pair) is not tuple or len(pair) != 2:
            raise Invalid(f"{where}.kernel_agg[{i}]: expected [row, count]")
    if agg:
        rows.check(tuple(r for r, _ in agg), f"{where}.kernel_agg", 1 << 20)
    summary = Summary(
        events=_int(p.get("events", 0), f"{where}.events", 0, COUNT_MAX),
        lost=_str_map(p.get("lost", {}), f"{where}.lost", _per_cpu, 64),
        duration=_num(p.get("duration", 0.0), f"{where}.duration", 0.0, MAX_DURATION),
        counters=_str_map(
            p.get("counters", {}),
            f"{where}.counters",
            lambda labels, w: _str_map(labels, w, _per_cpu, 1024),
            1024,
        ),
        interrupted=_bool(p.get("interrupted", False), f"{where}.interrupted"),
        kernel_agg=[(r, _int(n, f"{where}.kernel_agg count", 0, COUNT_MAX)) for r, n in agg],
        notes=[
            _str(n, f"{where}.notes", MAX_TEXT)
            for n in _seq(p.get("notes", ()), f"{where}.notes", MAX_NOTES)
        ],
    )
    findings = [
        check_finding(f, f"{where}.findings[{i}]")
        for i, f in enumerate(_seq(p.get("findings", ()), f"{where}.findings", MAX_FINDINGS))
    ]
    if findings:
        summary = replace(summary, findings=findings)
    written = _str_map(
        p.get("written", {}), f"{where}.written", lambda v, w: _int(v, w, 0, COUNT_MAX), 8
    )
    return summary, written
