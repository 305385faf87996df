"""A structure-aware fuzzer for trace files: valid CRCs over hostile bodies.

Random bytes rarely get past a CRC, so this fuzzer builds trace files record by
record with correct framing, sequence numbers and CRCs (format 2, or format 1 for the
``v1`` classes), and puts the hostility where a checksum cannot see it: values of
the wrong type, non-finite or out of range, huge or deeply nested, records dropped,
repeated, reordered or relabelled, data after the footer, escape sequences in every
string. Each case runs ``tracekit info`` and ``tracekit replay`` with each built-in
sink, in this process, and the oracle is the project's promise:

* status 0, or status 2 with exactly one line ``tracekit: ...`` on stderr; never a
  traceback, never another status;
* structural corruption (the ``must_fail`` classes) is status 2, never accepted;
* nothing printed contains a control character other than newline (escape
  sequences are shown escaped);
* every case finishes within ``CASE_SECONDS``.

``tests/test_tracefuzz.py`` runs a few hundred cases in the host tests; for a long
run (figures in docs/reliability.md)::

    .venv/bin/python tests/tracefuzz.py --seconds 240 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import random
import re
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tracekit.base.schema import DISPLAYS, Field, HistSpec, Schema
from tracekit.base.session import Session
from tracekit.cli.main import main
from tracekit.traces.tracefile import BATCH, FOOTER, HEADER, LOST, MAGIC, SYMBOLS

CASE_SECONDS = 5.0
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("info",),
    ("replay", "--sink", "console"),
    ("replay", "--sink", "console=json"),
    ("replay", "--sink", "hist"),
    ("replay", "--sink", "hist=lat,by=comm;state,linear=0:8:1"),
    ("replay", "--sink", "msgpack=OUT", "--force"),
)
# Any C0 or C1 control character except newline, and DEL: what a terminal obeys.
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")

SCHEMA = Schema(
    fields=(
        Field("ts_ns", "u64", unit="ns", display="ts"),
        Field("cpu", "u32", key=True),
        Field("comm", "str16", key=True, display="str"),
        Field("fn", "u64", display="ksym", key=True),
        Field("state", "u8", display="enum", choices=("open", "closed")),
        Field("lat", "s64", unit="ns"),
        Field("ifname", "str16", key=True, display="str"),
    ),
    histograms=(
        HistSpec(value="lat", by=("comm",)),
        HistSpec(value="state", kind="linear", lo=0, hi=4, step=1),
        HistSpec(value=None, by=("ifname", "fn"), kind="count"),
    ),
)

ESCAPES = (
    "\x1b[2J",
    "\x1b]0;pwned\x07",
    "\x1b[31mred",
    "a\rb",
    "\x9b2J",
    "\u202eevil",
    "tab\there",
    "nul\x00",
    "\x7f",
    "back\\x1b",
)
BAD_VALUES: tuple[Any, ...] = (
    math.inf,
    -math.inf,
    math.nan,
    1e20,
    1e308,
    -1,
    2**64 - 1,  # msgpack holds nothing wider: larger ints cannot be in a file
    -(2**63),
    True,
    None,
    "",
    "x" * 5000,
    b"bytes",
    (),
    (1, 2, 3),
    {},
    {"a": 1},
    msgpack.ExtType(5, b"x"),
    0.5,
)


@dataclass
class Case:
    name: str
    data: bytes
    must_fail: bool = False
    notes: list[str] = field(default_factory=list)


# -- building files --------------------------------------------------------------------

_RAW = "\x00RAW\x00"


def pack(obj: Any, raw: bytes | None = None) -> bytes:
    """msgpack ``obj``; the string ``_RAW`` inside it is replaced by ``raw`` bytes.

    This is how the fuzzer writes what msgpack itself refuses to pack (nesting deeper
    than its recursion limit).
    """
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    if raw is not None:
        out = out.replace(msgpack.packb(_RAW), raw, 1)
    return out


def frame(kind: int, seq: int, body: bytes, fmt: int = 2) -> bytes:
    if fmt == 1:
        return pack([kind, zlib.crc32(body), body])
    crc = zlib.crc32(body, zlib.crc32(struct.pack("<BQ", kind, seq)))
    return pack([kind, seq, crc, body])


def base_records(rng: random.Random, strings: Callable[[], str] | None = None) -> list[list[Any]]:
    """[kind, payload] of a plausible recording; ``strings`` supplies comm/ifname."""
    names = strings or (lambda: rng.choice(["iperf3", "sshd", "", "kworker/0:1"]))
    session = Session(
        probe="fuzz",
        schema=SCHEMA,
        params={"ifindex": 2},
        kernel="6.1.0-fuzz",
        ncpus=2,
        hostname="fuzzhost",
        start_time=1_700_000_000.0,
    )
    header = {"format": 2, **session.header()}
    recs: list[list[Any]] = [[HEADER, header]]
    recs.append(
        [
            SYMBOLS,
            {
                "symbols": {0xFFFF0001: "tcp_sendmsg", 0xFFFF0002: "ip_output"},
                "stacks": {1: [0xFFFF0001, 0xFFFF0002]},
            },
        ]
    )
    total = 0
    for _ in range(3):
        rows = [
            (
                rng.randrange(10**12),
                rng.randrange(2),
                names()[:16],
                rng.choice([0xFFFF0001, 0xFFFF0002, 0x1234]),
                rng.randrange(3),
                rng.randrange(-5, 10**6),
                names()[:16],
            )
            for _ in range(rng.randrange(1, 20))
        ]
        total += len(rows)
        recs.append([BATCH, rows])
    recs.append([LOST, {"source": "perf", "per_cpu": {0: 3, 1: 0}}])
    recs.append(
        [
            FOOTER,
            {
                "events": total,
                "lost": {"perf": {0: 3}},
                "duration": 1.5,
                "counters": {"calls": {"all": {0: 10, 1: 5}}},
                "interrupted": False,
                "kernel_agg": [],
                "notes": ["a note"],
            },
        ]
    )
    return recs


def written_of(recs: list[list[Any]]) -> dict[str, int]:
    """The counts the writer puts in the footer of ``recs`` (before any damage)."""
    batches = [r[1] for r in recs if r[0] == BATCH and isinstance(r[1], list | bytes)]
    footer_at = next((i for i, r in enumerate(recs) if r[0] == FOOTER), len(recs))
    rows = sum(len(b) // SCHEMA.size if isinstance(b, bytes) else len(b) for b in batches)
    return {"records": footer_at, "batches": len(batches), "rows": rows}


def packed(schema: Schema, rows: list[Any]) -> bytes:
    """A format-2 batch body: ``rows`` as packed records of ``schema``'s layout.

    Built with ``struct``, not with tracekit's own code, so a layout mistake in
    tracekit shows up here. Strings are UTF-8, cut to the field's bytes.
    """
    st = struct.Struct("<" + schema.struct_format[1:])
    strs = [i for i, f in enumerate(schema.fields) if f.is_str]
    out = []
    for r in rows:
        vals = list(r)
        for i in strs:
            if isinstance(vals[i], str):
                vals[i] = vals[i].encode()[: schema.fields[i].size]
        out.append(st.pack(*vals))
    return b"".join(out)


def _batch_body(header: Any, rows: list[Any]) -> bytes:
    # The header's schema when it is one (c_display changes field types); the
    # fuzzer's own when the case broke it (the file is refused before any batch).
    try:
        if len(header["schema"]["fields"]) > 256:  # refused by the reader: don't build it
            raise ValueError
        schema = Schema.from_dict(header["schema"])
        if schema.size > 1 << 20:  # str100000000: refused too; packing it took seconds
            raise ValueError
        return packed(schema, rows)
    except Exception:  # noqa: BLE001 - any broken schema or value: the base layout
        try:
            return packed(SCHEMA, rows)
        except Exception:  # noqa: BLE001 - values that no layout holds: wrong size
            return b"\x01" * (SCHEMA.size + 1)


def serialize(
    recs: list[list[Any]],
    fmt: int = 2,
    raw: bytes | None = None,
    written: Any = None,
    count: bool = True,
) -> bytes:
    """The file for ``recs`` ([kind, payload] or [kind, payload, seq]).

    Records are numbered in order unless they carry their own number; a format-2
    footer gets ``written`` (by default, the counts of ``recs`` as given) unless its
    payload already has them.
    """
    counts = written_of(recs) if written is None else written
    out = [MAGIC]
    for seq, rec in enumerate(recs):
        kind, payload = rec[0], rec[1]
        if kind == FOOTER and isinstance(payload, dict) and fmt == 2 and count:
            payload = {"written": counts, **payload}
        if kind == HEADER and isinstance(payload, dict) and fmt == 1 and payload.get("format") == 2:
            payload = {**payload, "format": 1}
        number = rec[2] if len(rec) > 2 else seq
        if kind == BATCH and fmt == 2 and isinstance(payload, list):
            body = _batch_body(recs[0][1], payload)
        elif kind == BATCH and isinstance(payload, bytes):
            body = payload  # a raw body, as a case built it
        else:
            body = pack(payload, raw)
        out.append(frame(kind, number, body, fmt))
    return b"".join(out)


def wide_file(
    rng: random.Random,
    batches: int,
    ftype: str = "str2",
    fields: int = 256,
    rows: int = 8192,
    hists: int = 0,
) -> bytes:
    """A format-2 file of ``batches`` full batches of random packed records, each row
    ``fields`` fields of ``ftype`` (all keys): what replay joins into the largest
    batches a sink gets. ``hists`` histograms count events keyed by every field."""
    recs = base_records(rng)
    display = "str" if ftype.startswith("str") else "int"
    schema = {
        "fields": [
            {"name": f"f{i}", "type": ftype, "display": display, "key": True} for i in range(fields)
        ],
        "histograms": [
            {"value": None, "by": [f"f{i}" for i in range(fields)], "kind": "count"}
            for _ in range(hists)
        ],
    }
    recs[0][1]["schema"] = schema
    size = Schema.from_dict(schema).size
    body = [[BATCH, rng.randbytes(size * rows)] for _ in range(batches)]
    foot = {**recs[-1][1], "events": batches * rows, "kernel_agg": []}
    written = {"records": batches + 1, "batches": batches, "rows": batches * rows}
    return serialize([recs[0], *body, [FOOTER, foot]], written=written)


def nested(depth: int) -> bytes:
    return b"\x91" * depth + msgpack.packb("x")


# -- case classes ----------------------------------------------------------------------


def c_valid(rng: random.Random) -> Case:
    return Case("valid", serialize(base_records(rng)))


def c_valid_v1(rng: random.Random) -> Case:
    return Case("valid-v1", serialize(base_records(rng), fmt=1))


def c_escapes(rng: random.Random) -> Case:
    """Escape sequences in every string a trace carries; must replay, escaped."""
    esc = lambda: rng.choice(ESCAPES)  # noqa: E731
    recs = base_records(rng, strings=lambda: esc()[:16])
    h = recs[0][1]
    h["probe"] = esc()
    h["hostname"] = esc()
    h["kernel"] = esc()
    h["tracekit_version"] = esc()
    h["params"] = {esc(): 1}
    fields = h["schema"]["fields"]
    slot = rng.choice(["name", "unit", "choices"])
    for f in fields:
        if slot == "unit":
            f["unit"] = esc()
        elif slot == "choices" and f["display"] == "enum":
            f["choices"] = [esc(), esc()]
    if slot == "name":
        old = fields[2]["name"]
        fields[2]["name"] = esc()
        for hs in h["schema"]["histograms"]:
            hs["by"] = [fields[2]["name"] if b == old else b for b in hs["by"]]
    h["schema"]["histograms"][0]["title"] = esc()
    recs[1][1]["symbols"] = {0xFFFF0001: esc(), 0xFFFF0002: esc()}
    recs[-2][1]["source"] = esc()
    foot = recs[-1][1]
    foot["lost"] = {esc(): {0: 3}}
    foot["counters"] = {esc(): {esc(): {0: 1}}}
    foot["notes"] = [esc()]
    # Valid when names stay unique; a duplicate name makes it a (clean) refusal.
    return Case("escapes", serialize(recs))


def c_header_value(rng: random.Random) -> Case:
    recs = base_records(rng)
    key = rng.choice(
        [
            "format",
            "probe",
            "params",
            "schema",
            "kernel",
            "ncpus",
            "hostname",
            "start_time",
            "sample_every",
            "aggregated",
            "tracekit_version",
            "params.value",
        ]
    )
    value = rng.choice(BAD_VALUES)
    raw = None
    if rng.random() < 0.15:
        value, raw = _RAW, nested(rng.choice([100, 1000, 1020, 2000]))
    if key == "params.value":
        recs[0][1]["params"] = {"ifindex": value}
    else:
        recs[0][1][key] = value
    return Case(f"header:{key}", serialize(recs, raw=raw))


def c_header_extreme(rng: random.Random) -> Case:
    """Values of the right type at the edges: inf, 1e20, nan start times, huge counts."""
    recs = base_records(rng)
    key, value = rng.choice(
        [
            ("start_time", 1e20),
            ("start_time", math.nan),
            ("start_time", -1.0),
            ("start_time", 2**64 - 1),
            ("ncpus", math.inf),
            ("ncpus", 10**9),
            ("sample_every", math.inf),
            ("sample_every", 0),
            ("format", 2**64 - 1),
        ]
    )
    recs[0][1][key] = value
    return Case(f"header-extreme:{key}", serialize(recs))


def c_schema(rng: random.Random) -> Case:
    recs = base_records(rng)
    schema = recs[0][1]["schema"]
    what = rng.choice(
        [
            "many-fields",
            "wide-str",
            "bad-type",
            "dup-names",
            "field-value",
            "hist-huge",
            "hist-inf",
            "hist-value",
            "no-fields",
            "hist-unknown-field",
        ]
    )
    must_fail = True
    if what == "many-fields":
        n = rng.choice([300, 5000, 100_000])
        schema["fields"] = [{"name": f"f{i}", "type": "u8"} for i in range(n)]
    elif what == "wide-str":
        schema["fields"][2]["type"] = rng.choice(
            ["str100000000", "str4097", "str0", "str-1", "str\u0661\u0662"]
        )
    elif what == "bad-type":
        schema["fields"][1]["type"] = rng.choice((*BAD_VALUES, "u128", "float"))
    elif what == "dup-names":
        schema["fields"][1]["name"] = schema["fields"][0]["name"]
    elif what == "field-value":
        k = rng.choice(["name", "unit", "key", "display", "doc", "choices"])
        v = rng.choice(BAD_VALUES)
        schema["fields"][rng.randrange(len(schema["fields"]))][k] = v
        must_fail = False  # some values are valid for some keys ("" as a unit)
    elif what == "hist-huge":
        schema["histograms"][1].update(lo=0, hi=2**63, step=1)
    elif what == "hist-inf":
        schema["histograms"][1][rng.choice(["lo", "hi", "step"])] = rng.choice(
            [math.inf, math.nan, -math.inf, 1e300]
        )
    elif what == "hist-value":
        schema["histograms"][rng.randrange(3)][rng.choice(["value", "by", "kind", "title"])] = (
            rng.choice(BAD_VALUES)
        )
        must_fail = False
    elif what == "no-fields":
        schema["fields"] = []
    else:
        schema["histograms"][0]["by"] = ["nope"]
    return Case(f"schema:{what}", serialize(recs), must_fail=must_fail)


def c_display(rng: random.Random) -> Case:
    """Any display on any type (ipv4 on an s64, ts on a string), at the type's limits."""
    recs = base_records(rng)
    fields = recs[0][1]["schema"]["fields"]
    for f in fields:
        f["display"] = rng.choice(DISPLAYS)
    ranges = {
        "u64": (0, 2**64 - 1),
        "u32": (0, 2**32 - 1),
        "u8": (0, 255),
        "s64": (-(2**63), 2**63 - 1),
    }
    for i in (0, 1, 3, 4, 5):
        t = rng.choice(sorted(ranges))
        fields[i]["type"] = t
        for b in (2, 3, 4):
            recs[b][1] = [(*r[:i], rng.choice(ranges[t]), *r[i + 1 :]) for r in recs[b][1]]
    return Case("display", serialize(recs))


def c_rows(rng: random.Random) -> Case:
    """Rows of the schema's width with a value of the wrong type or out of range."""
    recs = base_records(rng)
    batch = recs[rng.choice([2, 3, 4])][1]
    at = rng.randrange(len(batch))
    row = list(batch[at])
    col = rng.randrange(len(row))
    bad_by_col: dict[int, list[Any]] = {
        0: [-1, 1.0, "x", None, True],
        1: [2**32, -1, math.inf, "0"],
        2: ["x" * 17, 5, None, b"eth0", ("a",)],
        3: [-1, math.nan, 1e19],
        4: [256, 3.0, -1, False],
        5: [2**63, 2**64 - 1, math.nan, "1"],
        6: ["y" * 40, 1, {}],
    }
    row[col] = rng.choice(bad_by_col[col])
    batch[at] = tuple(row)
    # Rows of values are format 1's batch body (format 2 packs records: c_packed).
    return Case(f"rows:{SCHEMA.fields[col].name}", serialize(recs, fmt=1), must_fail=True)


def c_rows_shape(rng: random.Random) -> Case:
    recs = base_records(rng)
    what = rng.choice(["short-row", "long-row", "row-not-array", "batch-not-array", "too-many"])
    b = recs[2][1]
    if what == "short-row":
        b[0] = b[0][:-1]
    elif what == "long-row":
        b[0] = (*b[0], 1)
    elif what == "row-not-array":
        b[0] = {"a": 1}
    elif what == "batch-not-array":
        recs[2][1] = {"rows": b}
    else:
        recs[2][1] = [b[0]] * 8193
    return Case(f"rows-shape:{what}", serialize(recs, fmt=1), must_fail=True)


def c_packed(rng: random.Random) -> Case:
    """Format 2 batch bodies: any bytes of whole records replay; others are refused."""
    recs = base_records(rng)
    at = rng.choice([2, 3, 4])
    size = SCHEMA.size
    what = rng.choice(
        ["random-records", "escapes", "short", "long", "empty", "too-many", "not-bin"]
    )
    must_fail = True
    if what == "random-records":
        # Any bytes at all: every integer is in its type's range, every string is
        # bytes to decode safely (invalid UTF-8, NULs, 0xff...). Must replay.
        n = rng.randrange(1, 50)
        recs[at][1] = bytes(rng.randrange(256) for _ in range(n * size))
        must_fail = False
    elif what == "escapes":
        raw = [e.encode("utf-8", "surrogatepass")[:16] for e in ESCAPES] + [
            b"\xff\xfe\xc3",
            b"a\0b",
        ]
        rows = [(*r[:2], rng.choice(raw), *r[3:6], rng.choice(raw)) for r in recs[at][1]]
        recs[at][1] = packed(SCHEMA, rows)
        must_fail = False
    elif what == "short":
        recs[at][1] = packed(SCHEMA, recs[at][1])[: -rng.randrange(1, size)]
    elif what == "long":
        recs[at][1] = packed(SCHEMA, recs[at][1]) + b"\0" * rng.randrange(1, size)
    elif what == "empty":
        recs[at][1] = b""
        must_fail = False  # a batch of no events: counted as such in the footer
    elif what == "too-many":
        recs[at][1] = b"\0" * (size * 8193)
    else:
        # The body must be bin; a msgpack string or array of rows is "not a record".
        recs[at][1] = rng.choice(["text", (1, 2), 7])
    if what == "not-bin":
        # serialize would pack the value into a bin body: frame it by hand.
        data = serialize(recs[:at])
        kind, seq = BATCH, at
        crc = zlib.crc32(b"x", zlib.crc32(struct.pack("<BQ", kind, seq)))
        data += pack([kind, seq, crc, recs[at][1]])
        return Case("packed:not-bin", data, must_fail=True)
    return Case(f"packed:{what}", serialize(recs), must_fail=must_fail)


def _ok_int(v: Any, hi: int) -> bool:
    return type(v) is int and 0 <= v <= hi


def _key(v: Any) -> Any:
    return 1.5 if isinstance(v, dict | tuple) else v  # unhashable values as keys


def c_symbols_lost(rng: random.Random) -> Case:
    recs = base_records(rng)
    v = rng.choice(BAD_VALUES)
    what = rng.choice(
        [
            "sym-key",
            "sym-value",
            "stack-key",
            "stack-addr",
            "lost-cpu",
            "lost-count",
            "lost-source",
            "sym-record",
            "lost-record",
        ]
    )
    sym, lost = recs[1][1], recs[-2][1]
    valid = False
    if what == "sym-key":
        sym["symbols"] = {_key(v): "x"}
        valid = _ok_int(v, 2**64 - 1)
    elif what == "sym-value":
        sym["symbols"] = {1: v}
        valid = type(v) is str and len(v) <= 4096
    elif what == "stack-key":
        sym["stacks"] = {_key(v): [1]}
        valid = _ok_int(v, 2**64 - 1)
    elif what == "stack-addr":
        sym["stacks"] = {1: [v]}
        valid = _ok_int(v, 2**64 - 1)
    elif what == "lost-cpu":
        lost["per_cpu"] = {_key(v): 1}
        valid = _ok_int(v, 65535)
    elif what == "lost-count":
        lost["per_cpu"] = {0: v}
        valid = _ok_int(v, 2**63 - 1)
    elif what == "lost-source":
        lost["source"] = v
        valid = type(v) is str and len(v) <= 256
    elif what == "sym-record":
        recs[1][1] = v
        valid = type(v) is dict  # unknown keys are ignored (later versions may add some)
    else:
        recs[-2][1] = v
        valid = type(v) is dict
    return Case(f"symbols-lost:{what}", serialize(recs), must_fail=not valid)


def c_footer(rng: random.Random) -> Case:
    recs = base_records(rng)
    foot = recs[-1][1]
    key = rng.choice(
        ["events", "lost", "duration", "counters", "interrupted", "kernel_agg", "notes", "written"]
    )
    v = rng.choice(BAD_VALUES)
    if key == "written":
        # nil stands for a footer without the counts.
        return Case(
            "footer:written", serialize(recs, written=v, count=v is not None), must_fail=True
        )
    foot[key] = v
    return Case(f"footer:{key}", serialize(recs))


def c_structure(rng: random.Random) -> Case:
    """Whole records dropped, repeated, moved or relabelled, each with a valid CRC.

    Records keep the numbers the writer gave them (a forger who renumbers must also
    fix the footer's counts, which the ``footer-count`` case covers).
    """
    recs = base_records(rng)
    written = written_of(recs)
    numbered = [[k, p, i] for i, (k, p) in enumerate(recs)]
    what = rng.choice(
        [
            "drop-batch",
            "dup-batch",
            "swap-batches",
            "dup-footer",
            "footer-first",
            "trailing-bytes",
            "second-trace",
            "lost-as-footer",
            "batch-as-lost",
            "footer-count",
            "drop-symbols",
            "second-header",
            "drop-last-batch",
        ]
    )
    i = rng.choice([2, 3, 4])
    if what == "drop-batch":
        del numbered[i]
    elif what == "drop-last-batch":
        # Numbers stay consecutive: only the footer's counts can tell.
        del numbered[5]
        numbered[5][2] = 5
    elif what == "dup-batch":
        numbered.insert(i, list(numbered[i]))
    elif what == "swap-batches":
        numbered[2], numbered[3] = numbered[3], numbered[2]
    elif what == "dup-footer":
        numbered.append(list(numbered[-1]))
    elif what == "footer-first":
        numbered.insert(1, numbered.pop())
    elif what == "drop-symbols":
        del numbered[1]
    elif what == "trailing-bytes":
        extra = os.urandom(rng.randrange(1, 64))
        return Case(f"structure:{what}", serialize(recs) + extra, must_fail=True)
    elif what == "second-trace":
        one = serialize(recs)
        return Case(f"structure:{what}", one + one, must_fail=True)
    elif what == "lost-as-footer":
        numbered[5][0] = FOOTER
    elif what == "batch-as-lost":
        numbered[i][0] = LOST
    elif what == "footer-count":
        written = {**written, rng.choice(["records", "batches", "rows"]): 1}
    else:  # second-header, renumbered as a forger would
        recs.insert(2, list(recs[0]))
        return Case(f"structure:{what}", serialize(recs), must_fail=True)
    return Case(f"structure:{what}", serialize(numbered, written=written), must_fail=True)


def c_v1_structure(rng: random.Random) -> Case:
    """Format 1 cannot see everything, but a dropped or repeated batch changes the count."""
    recs = base_records(rng)
    if rng.random() < 0.5:
        del recs[3]
        name = "drop-batch"
    else:
        recs.insert(3, list(recs[3]))
        name = "dup-batch"
    return Case(f"v1-structure:{name}", serialize(recs, fmt=1), must_fail=True)


# Values that are whole msgpack objects but not records: a nil was once read as the
# end of the file (the records after it dropped, the file "cut short").
NOT_RECORDS = (b"\xc0", b"\x00", b"\x7f", b"\xff", b"\xc2", b"\xc3", b"\xcb" + bytes(8), b"\x80")


def c_not_record(rng: random.Random) -> Case:
    """A value that is not an array where a record should start, formats 1 and 2."""
    fmt = rng.choice([1, 2])
    recs = base_records(rng)
    # After the header, up to after the footer (format 2 refuses anything there;
    # format 1 ignores what follows its footer, so only before it).
    at = rng.randrange(1, len(recs) + (fmt == 2))
    head = serialize(recs[:at], fmt=fmt)
    value = rng.choice(NOT_RECORDS) * rng.choice([1, 1, 2, 50])
    rest = serialize(recs, fmt=fmt)[len(head) :]
    return Case(f"not-record:v{fmt}", head + value + rest, must_fail=True)


def c_v1_batch_body(rng: random.Random) -> Case:
    """A format-1 batch body that is not an array of rows (an integer, nil, a map...),
    which ``info`` once took for a row count."""
    recs = base_records(rng)
    recs[rng.choice([2, 3, 4])][1] = rng.choice(
        [v for v in BAD_VALUES if not isinstance(v, tuple)] + [7, 0, 8192, 8193]
    )
    return Case("v1-batch-body", serialize(recs, fmt=1), must_fail=True)


def c_merged(rng: random.Random) -> Case:
    """The largest batches replay hands a sink: consecutive full records joined, of
    many narrow rows or of rows of many fields. Must replay, within the memory bound
    (``MEMORY_CLASSES``)."""
    if rng.random() < 0.5:
        # 8 full records: one batch of COALESCE_ROWS events; histograms keyed by all.
        ftype = rng.choice(["u8", "u64", "str4"])
        fields, hists = rng.choice([1, 3]), rng.choice([0, 2])
        return Case("merged:narrow", wide_file(rng, 8, ftype=ftype, fields=fields, hists=hists))
    ftype = rng.choice(["str2", "u8", "str16"])
    fields = 256 if ftype != "str16" else 64
    return Case("merged:wide", wide_file(rng, 2, ftype=ftype, fields=fields, rows=256))


def c_flip(rng: random.Random) -> Case:
    data = bytearray(serialize(base_records(rng)))
    for _ in range(rng.randrange(1, 8)):
        i = rng.randrange(len(MAGIC), len(data))
        data[i] ^= 1 << rng.randrange(8)
    return Case("flip", bytes(data))


def c_cut(rng: random.Random) -> Case:
    data = serialize(base_records(rng))
    return Case("cut", data[: rng.randrange(len(data))])


CLASSES: dict[str, Callable[[random.Random], Case]] = {
    "valid": c_valid,
    "valid-v1": c_valid_v1,
    "escapes": c_escapes,
    "header": c_header_value,
    "header-extreme": c_header_extreme,
    "schema": c_schema,
    "display": c_display,
    "rows": c_rows,
    "rows-shape": c_rows_shape,
    "packed": c_packed,
    "symbols-lost": c_symbols_lost,
    "footer": c_footer,
    "structure": c_structure,
    "v1-structure": c_v1_structure,
    "flip": c_flip,
    "cut": c_cut,
    "not-record": c_not_record,
    "v1-batch-body": c_v1_batch_body,
    "merged": c_merged,
}
# Classes whose runs are held to docs/trace-format.md's memory bound: 32 x the file's
# size + 100 MiB, of which Python and tracekit take about 20 MiB before reading (here
# measured as the growth of this process's peak RSS during the run).
MEMORY_CLASSES = {"merged"}


# -- running and judging ---------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    seconds: float
    grew: int | None = None  # growth of peak RSS in bytes (None: not measured)


def _rss(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith(key))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def run_cli(argv: list[str], measure: bool = False) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    before = _rss("VmRSS:") if measure and _reset_peak() else None
    t0 = time.monotonic()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - a traceback is what we look for
            import traceback

            traceback.print_exc(file=err)
            status = -1
            _ = exc
    took = time.monotonic() - t0
    peak = _rss("VmHWM:") if before is not None else None
    grew = peak - before if peak is not None and before is not None else None
    return Outcome(status, out.getvalue(), err.getvalue(), took, grew)


def judge(case: Case, argv: list[str], o: Outcome) -> str | None:
    """What is wrong with this outcome, or None."""
    if o.grew is not None and o.grew > 32 * len(case.data) + 80 * 2**20:
        return f"peak RSS grew {o.grew / 2**20:.0f} MiB on a {len(case.data) / 2**20:.1f} MiB file"
    if o.status not in (0, 2):
        return f"status {o.status}: {o.stderr[-300:]!r}"
    if "Traceback" in o.stderr:
        return "traceback"
    if o.status == 2 and (not o.stderr.startswith("tracekit: ") or o.stderr.count("\n") != 1):
        return f"status 2 without exactly one line: {o.stderr[:300]!r}"
    if o.status == 0 and case.must_fail:
        return "corruption accepted (status 0)"
    if o.status == 0 and any(
        not ln.startswith(("tracekit: warning: ", "tracekit: lost "))
        for ln in o.stderr.splitlines()
    ):
        return f"unexpected stderr: {o.stderr[:300]!r}"
    bad = CONTROL.search(o.stdout) or CONTROL.search(o.stderr)
    if bad:
        return f"control character {bad.group()!r} printed"
    if o.seconds > CASE_SECONDS:
        return f"took {o.seconds:.1f}s"
    return None


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)
    runs: Counter[str] = field(default_factory=Counter)
    status: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0


def run_case(case: Case, workdir: str, tally: Tally) -> None:
    path = os.path.join(workdir, "case.tkt")
    out = os.path.join(workdir, "out.tkt")
    with open(path, "wb") as f:
        f.write(case.data)
    tally.cases[case.name.split(":")[0]] += 1
    for cmd in COMMANDS:
        argv = [cmd[0], path, *(a.replace("OUT", out) for a in cmd[1:])]
        o = run_cli(argv, measure=case.name.split(":")[0] in MEMORY_CLASSES)
        tally.runs[case.name.split(":")[0]] += 1
        tally.status[(case.name.split(":")[0], o.status)] += 1
        tally.slowest = max(tally.slowest, o.seconds)
        why = judge(case, argv, o)
        if why:
            tally.failures.append(f"{case.name} {' '.join(argv[:1] + argv[2:])}: {why}")


def fuzz(seed: int, *, cases: int | None = None, seconds: float | None = None) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    names = sorted(CLASSES)
    deadline = time.monotonic() + seconds if seconds is not None else math.inf
    n = 0
    with tempfile.TemporaryDirectory() as workdir:
        while (cases is None or n < cases) and time.monotonic() < deadline:
            # Every class in turn, so a short run still covers them all.
            name = names[n % len(names)]
            run_case(CLASSES[name](random.Random(rng.getrandbits(64))), workdir, tally)
            n += 1
    return tally


def _main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    t0 = time.monotonic()
    tally = fuzz(a.seed, seconds=a.seconds)
    took = time.monotonic() - t0
    total = sum(tally.cases.values())
    print(
        f"seed {a.seed}: {total} cases, {sum(tally.runs.values())} runs in {took:.0f}s, "
        f"slowest run {tally.slowest:.2f}s, {len(tally.failures)} failures"
    )
    print(f"{'class':<16}{'cases':>7}{'runs':>7}{'status 0':>10}{'status 2':>10}")
    for name in sorted(tally.cases):
        print(
            f"{name:<16}{tally.cases[name]:>7}{tally.runs[name]:>7}"
            f"{tally.status[(name, 0)]:>10}{tally.status[(name, 2)]:>10}"
        )
    for f in tally.failures[:50]:
        print("FAIL", f)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(_main())
