"""Event schemas: the one description of a probe's events.

A probe declares its schema once. The same object drives decoding raw records from
the kernel, the console's columns, the histograms and the trace file header, so a
field cannot mean one thing to the decoder and another to a sink.

The C struct in the probe's ``.bpf.c`` is the single declaration of the *layout*:
``Schema.from_c`` reads it (tracekit/base/cdecl.py, no compiler needed) and adds only how
each field is shown. Padding members and holes stay in the kernel's record
(``kernel_dtype``) and never become fields: rows, traces and sinks see the fields
alone, packed (``dtype``). The loaders check the C layout against what the compiler
produced, and refuse to run when they drift apart.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib.resources.abc import Traversable
from typing import Any

from tracekit.base.cdecl import CSource, CStruct
from tracekit.base.text import printable

# Field types and their struct codes (little endian, x86_64 BPF).
_STRUCT_CODES: dict[str, str] = {
    "u8": "B",
    "u16": "H",
    "u32": "I",
    "u64": "Q",
    "s8": "b",
    "s16": "h",
    "s32": "i",
    "s64": "q",
}
_NUMPY_CODES: dict[str, str] = {
    "u8": "u1",
    "u16": "<u2",
    "u32": "<u4",
    "u64": "<u8",
    "s8": "i1",
    "s16": "<i2",
    "s32": "<i4",
    "s64": "<i8",
}
_SIZES: dict[str, int] = {k: struct.calcsize("<" + v) for k, v in _STRUCT_CODES.items()}

# How a value is shown; the stored value is always the raw integer or string.
DISPLAYS = ("int", "hex", "ipv4", "ip", "str", "queue", "bool", "ksym", "port", "ts", "enum")


@dataclass(frozen=True)
class Field:
    """One field of an event.

    ``type`` is ``u8``..``u64``, ``s8``..``s64`` or ``str<N>`` (a NUL padded char array).
    ``key`` marks fields that make sense as histogram keys (CPU, queue, interface).
    ``display`` says how sinks render the raw value.

    Given to ``Schema.from_c`` (or ``ProbeSpec(fields=...)``), a field names a member
    of the C struct and says only how it is shown: leave ``type`` out, the C has it.
    """

    name: str
    type: str = ""
    unit: str = ""
    key: bool = False
    display: str = "int"
    doc: str = ""
    # Names for the values of an ``enum`` field: value i shows as choices[i].
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # "": a presentation of a C member, typed by Schema.from_c.
        if self.type and self.type not in _STRUCT_CODES and not _is_str_type(self.type):
            raise ValueError(f"field {self.name!r}: unknown type {self.type!r}")
        if self.display not in DISPLAYS:
            raise ValueError(f"field {self.name!r}: unknown display {self.display!r}")

    @property
    def size(self) -> int:
        if _is_str_type(self.type):
            return int(self.type[3:])
        return _SIZES[self.type]

    @property
    def is_str(self) -> bool:
        return _is_str_type(self.type)

    @property
    def struct_code(self) -> str:
        return f"{self.size}s" if self.is_str else _STRUCT_CODES[self.type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "unit": self.unit,
            "key": self.key,
            "display": self.display,
            "doc": self.doc,
            "choices": list(self.choices),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Field:
        return cls(
            name=str(d["name"]),
            type=str(d["type"]),
            unit=str(d.get("unit", "")),
            key=bool(d.get("key", False)),
            display=str(d.get("display", "int")),
            doc=str(d.get("doc", "")),
            choices=tuple(str(c) for c in d.get("choices", ())),
        )


def _is_str_type(t: str) -> bool:
    return t.startswith("str") and t[3:].isdigit() and int(t[3:]) > 0


@dataclass(frozen=True)
class HistSpec:
    """A histogram over one field, optionally keyed by other fields.

    ``kind`` is ``log2`` (power-of-two buckets, like bpftrace's ``hist``) or ``linear``
    (``lo``..``hi`` in steps of ``step``, like bpftrace's ``lhist``). ``value`` may be
    ``None`` for a plain count per key.
    """

    value: str | None
    by: tuple[str, ...] = ()
    kind: str = "log2"
    lo: int = 0
    hi: int = 0
    step: int = 1
    title: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("log2", "linear", "count"):
            raise ValueError(f"histogram kind must be log2, linear or count, not {self.kind!r}")
        if self.kind == "linear" and (self.step <= 0 or self.hi <= self.lo):
            raise ValueError("a linear histogram needs lo < hi and step > 0")

    @property
    def name(self) -> str:
        if self.title:
            return self.title
        base = self.value or "count"
        return f"{base}[{', '.join(self.by)}]" if self.by else base

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "by": list(self.by),
            "kind": self.kind,
            "lo": self.lo,
            "hi": self.hi,
            "step": self.step,
            "title": self.title,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistSpec:
        value = d.get("value")
        return cls(
            value=None if value is None else str(value),
            by=tuple(str(b) for b in d.get("by", ())),
            kind=str(d.get("kind", "log2")),
            lo=int(d.get("lo", 0)),
            hi=int(d.get("hi", 0)),
            step=int(d.get("step", 1)),
            title=str(d.get("title", "")),
        )


@dataclass(frozen=True)
class Schema:
    """The ordered fields of one probe's events, plus its default histograms.

    ``layout`` is the C struct the fields were read from (``from_c``): where each
    field sits in the kernel's record and how long that record is, padding included.
    A schema without one (from a trace file, or built by hand) has packed records.
    """

    fields: tuple[Field, ...]
    histograms: tuple[HistSpec, ...] = ()
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    layout: CStruct | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        untyped = [f.name for f in self.fields if not f.type]
        if untyped:
            raise ValueError(
                f"field {untyped[0]!r} has no type: give one, or read the struct with "
                "Schema.from_c (ProbeSpec(fields=...))"
            )
        names = [f.name for f in self.fields]
        # Counted once, not names.count() per name: a schema read from a trace may be
        # long, and a quadratic check is a way to make a small file take minutes.
        dupes = {n for n, c in Counter(names).items() if c > 1}
        if dupes:
            raise ValueError(f"duplicate field names: {sorted(dupes)}")
        self._index.update({n: i for i, n in enumerate(names)})
        for h in self.histograms:
            self.check_hist(h)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields are: {', '.join(self.names)}") from None

    def field(self, name: str) -> Field:
        return self.fields[self.index(name)]

    def check_hist(self, h: HistSpec) -> None:
        for n in ((h.value,) if h.value else ()) + h.by:
            self.index(n)
            if self.field(n).is_str and n == h.value:
                raise ValueError(f"histogram value {n!r} is a string field")

    @classmethod
    def from_c(
        cls,
        source: Traversable | str,
        fields: Sequence[Field] = (),
        histograms: Sequence[HistSpec] = (),
        struct: str = "tk_event",
    ) -> Schema:
        """The schema of ``struct`` as the C source declares it, shown as ``fields`` say.

        ``source`` is the ``.bpf.c`` (or its text). Every member that is not padding
        (``pad``, ``pad2``, ``_x``: tracekit/base/cdecl.py) becomes a field, in declaration
        order, typed from the C; ``fields`` add unit, display, doc, key and choices by
        name (an array member's presentation applies to each of its elements). A name
        in ``fields`` that the struct does not have is refused, as is a C construct
        outside the supported subset (CDeclError, naming file and line).
        """
        src = _c_source(source)
        st = src.struct(struct)
        return cls.from_struct(st, fields, histograms)

    @classmethod
    def from_struct(
        cls, st: CStruct, fields: Sequence[Field] = (), histograms: Sequence[HistSpec] = ()
    ) -> Schema:
        """``from_c`` for a struct already read."""
        members = st.fields()
        shown = {f.name: f for f in fields}
        # An element x_0 of an array member x is shown as "x_0" says, else as "x" says.
        base = {name: m.name for m in st.members for name, _, _ in m.elements()}
        pads = {m.name for m in st.members if m.padding}
        for n in shown:
            if n in pads:
                raise ValueError(f"{st.path}: struct {st.name}: {n!r} is padding, not a field")
            if n not in base and n not in base.values():
                raise ValueError(
                    f"{st.path}: struct {st.name} has no member {n!r}; its fields are "
                    + ", ".join(name for name, _, _ in members)
                )
        out = []
        for name, ctype, _ in members:
            p = shown.get(name) or shown.get(base[name])
            if p is not None and p.type and p.type != ctype:
                raise ValueError(
                    f"{st.path}: struct {st.name}: {name} is {ctype} in the C, not {p.type}"
                )
            if p is None:
                out.append(Field(name, ctype))
            else:
                out.append(Field(name, ctype, p.unit, p.key, p.display, p.doc, p.choices))
        return cls(tuple(out), tuple(histograms), layout=st)

    @property
    def struct_format(self) -> str:
        """The packed record (as traces store it): fields back to back."""
        return "=" + "".join(f.struct_code for f in self.fields)

    def kernel_offsets(self) -> list[int]:
        """Each field's offset in the kernel's record (the C struct's layout)."""
        if self.layout is None:
            return list(self.offsets().values())
        at = {name: off for name, _, off in self.layout.fields()}
        return [at[f.name] for f in self.fields]

    @property
    def kernel_size(self) -> int:
        """The size of one record as the kernel writes it (``sizeof(struct tk_event)``)."""
        return self.size if self.layout is None else self.layout.size

    @property
    def kernel_packed(self) -> bool:
        """True when the kernel's record is the packed one: no padding to drop."""
        return self.kernel_size == self.size and self.kernel_offsets() == list(
            self.offsets().values()
        )

    @property
    def kernel_struct_format(self) -> str:
        """A struct format reading the kernel's record: padding and holes skipped."""
        out, pos = "=", 0
        for f, off in zip(self.fields, self.kernel_offsets(), strict=True):
            out += "x" * (off - pos) + f.struct_code
            pos = off + f.size
        return out + "x" * (self.kernel_size - pos)

    @cached_property
    def kernel_dtype(self) -> Any:
        """The kernel's record as a numpy dtype: fields ``f0``... at their C offsets."""
        import numpy as np

        return np.dtype(
            {
                "names": [f"f{i}" for i in range(len(self.fields))],
                "formats": [self.dtype[i] for i in range(len(self.fields))],
                "offsets": self.kernel_offsets(),
                "itemsize": self.kernel_size,
            }
        )

    @property
    def size(self) -> int:
        return struct.calcsize(self.struct_format)

    @cached_property
    def dtype(self) -> Any:
        """The record layout as a numpy structured dtype (a trace batch, a kernel buffer).

        Fields are named ``f0``, ``f1``... in schema order, not by their names: names
        read from a trace may be anything (empty, or clashing with numpy's own
        ``f0`` defaults), positions cannot. Integers are little endian, as the BPF
        target and the trace file are; strings are ``S<N>`` raw bytes.
        """
        import numpy as np

        return np.dtype(
            {
                "names": [f"f{i}" for i in range(len(self.fields))],
                "formats": [
                    f"S{f.size}" if f.is_str else _NUMPY_CODES[f.type] for f in self.fields
                ],
                "offsets": list(self.offsets().values()),
                "itemsize": self.size,
            }
        )

    def offsets(self) -> dict[str, int]:
        off, out = 0, {}
        for f in self.fields:
            out[f.name] = off
            off += f.size
        return out

    def make_decoder(self) -> Decoder:
        return Decoder(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": [f.to_dict() for f in self.fields],
            "histograms": [h.to_dict() for h in self.histograms],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        return cls(
            fields=tuple(Field.from_dict(f) for f in d["fields"]),
            histograms=tuple(HistSpec.from_dict(h) for h in d.get("histograms", ())),
        )


def _c_source(source: Traversable | str) -> CSource:
    if isinstance(source, str):
        return CSource.parse(source)
    return CSource.parse(source.read_text(), source.name)


class Decoder:
    """Turns raw records from the kernel into tuples in schema order.

    Records are read in the kernel's layout (padding skipped). Strings are cut at
    their first NUL and decoded; integers pass through untouched.
    """

    def __init__(self, schema: Schema) -> None:
        self._struct = struct.Struct(schema.kernel_struct_format)
        self.size = self._struct.size
        self._str_idx = tuple(i for i, f in enumerate(schema.fields) if f.is_str)

    def decode(self, raw: bytes) -> tuple[Any, ...]:
        row = self._struct.unpack_from(raw)
        if not self._str_idx:
            return row
        out = list(row)
        for i in self._str_idx:
            out[i] = out[i].split(b"\0", 1)[0].decode("utf-8", "replace")
        return tuple(out)


def format_value(
    f: Field, value: Any, symbols: Mapping[int, str] | None = None, terminal: bool = True
) -> str:
    """Render one raw value the way a person reads it.

    Strings (``comm``, interface names, symbol and enum names) come from the kernel
    or a trace file: with ``terminal`` they are escaped for printing; JSON output
    passes ``terminal=False`` and escapes by its own rules.
    """
    if isinstance(value, str):
        return printable(value) if terminal else value
    if value is None:
        return "-"
    d = f.display
    # A replayed schema may pair any display with any type (ipv4 on an s64): a value
    # that is no address is shown as a number rather than failing the sink.
    if d == "ipv4":
        v = int(value)
        return str(ipaddress.IPv4Address(v.to_bytes(4, "little"))) if 0 <= v < 1 << 32 else str(v)
    if d == "ip":
        if isinstance(value, bytes):
            return str(ipaddress.ip_address(value)) if len(value) in (4, 16) else value.hex()
        v = int(value)
        return str(ipaddress.ip_address(v.to_bytes(16, "little"))) if 0 <= v < 1 << 128 else str(v)
    if d == "hex":
        return hex(int(value))
    if d == "queue":
        # NO_QUEUE_MAPPING in include/net/sock.h: the socket has no queue yet.
        return "none" if int(value) in (0xFFFF, -1) else str(value)
    if d == "enum":
        i = int(value)
        if 0 <= i < len(f.choices):
            return printable(f.choices[i]) if terminal else f.choices[i]
        return str(i)
    if d == "ts":
        return f"{int(value) / 1e9:.6f}"
    if d == "port":
        return str(int(value))
    if d == "bool":
        return "1" if value else "0"
    if d == "ksym":
        if symbols and int(value) in symbols:
            name = symbols[int(value)]
            return printable(name) if terminal else name
        return hex(int(value))
    return str(value)


def format_row(
    schema: Schema,
    row: Sequence[Any],
    symbols: Mapping[int, str] | None = None,
    terminal: bool = True,
) -> list[str]:
    return [format_value(f, v, symbols, terminal) for f, v in zip(schema.fields, row, strict=False)]
