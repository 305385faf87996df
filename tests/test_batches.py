"""EventBatch views (rows, packed records, columns) and hist counting a packed batch."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tracekit.base.hist import Histogram
from tracekit.base.schema import Field, HistSpec, Schema
from tracekit.base.session import EventBatch
from tracekit.probes.txq_flip import SCHEMA
from tracekit.testing import synthetic_rows

WIDE = Schema(
    fields=(
        Field("u", "u64"),
        Field("s", "s64"),
        Field("b", "u8", key=True),
        Field("name", "str4", key=True),
        Field("k", "s32", key=True),
    )
)
_EDGES = [0, 1, 2, 3, 255, 256, 2**31 - 1, 2**53 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]


def _rows(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    names = [b"", b"ab", b"a\0b", b"\xff\xfe", b"abcd"]
    return [
        (
            rng.choice(_EDGES),
            rng.choice([-(2**63), -1, 0, 1, 2**62, 2**63 - 1, rng.randrange(-100, 100)]),
            rng.randrange(256),
            rng.choice(names),
            rng.randrange(-3, 3),
        )
        for _ in range(n)
    ]


def _packed(rows: list[tuple[Any, ...]]) -> EventBatch:
    import struct

    st_ = struct.Struct("<" + WIDE.struct_format[1:])
    return EventBatch.from_records("t", WIDE, b"".join(st_.pack(*r) for r in rows))


def test_rows_of_packed_records_decode_strings_safely() -> None:
    b = _packed([(1, -1, 2, b"a\0b", 3), (2, 0, 0, b"\xff", 0)])
    assert b.rows == [(1, -1, 2, "a", 3), (2, 0, 0, "\ufffd", 0)]
    assert b.column("name") == ["a", "\ufffd"]
    assert b.column("s").tolist() == [-1, 0]
    assert list(b.columns) == ["u", "s", "b", "name", "k"]


def test_rows_and_records_round_trip() -> None:
    rows = synthetic_rows(SCHEMA, 300, seed=3)
    from_rows = EventBatch("t", rows, schema=SCHEMA)
    assert not from_rows.packed
    again = EventBatch.from_records("t", SCHEMA, from_rows.records())
    assert again.packed and from_rows.packed  # the array is kept once built
    assert again.rows == rows and len(again) == 300
    assert EventBatch.concat([again, from_rows]).rows == rows + rows


def test_concat_of_packed_batches_copies_only_when_asked() -> None:
    rows = synthetic_rows(SCHEMA, 300, seed=4)
    parts = [
        EventBatch.from_records("t", SCHEMA, EventBatch("t", r, schema=SCHEMA).records())
        for r in (rows[:100], rows[100:101], rows[101:])
    ]
    joined = EventBatch.concat(parts)
    assert joined.packed and len(joined) == 300
    # The parts themselves, in order, not a copy: what the trace writer writes.
    chunks = joined.chunks()
    assert [len(c) for c in chunks] == [100, 1, 199]
    assert all(c is p.array for c, p in zip(chunks, parts, strict=True))
    assert joined.rows == rows and joined.array.tobytes() == b"".join(p.records() for p in parts)
    assert joined.chunks()[0] is joined.array  # one array once it was asked for


def test_records_of_another_length_are_refused() -> None:
    assert SCHEMA.size == 80  # txq-flip's C struct: no padding, no holes
    with pytest.raises(ValueError, match="whole number of 80-byte records"):
        EventBatch.from_records("t", SCHEMA, b"\0" * 81)


SPECS = [
    HistSpec(value="u", by=("name",)),
    HistSpec(value="s", by=("b", "k")),
    HistSpec(value=None, by=("name", "k", "b"), kind="count"),
    HistSpec(value="b", by=("k",), kind="linear", lo=0, hi=256, step=7),
    HistSpec(value="s", kind="linear", lo=-(2**63), hi=2**63 - 1, step=2**60),
    HistSpec(value="u", kind="linear", lo=2**53, hi=2**64, step=2**52),
    HistSpec(value="k", by=("name",), kind="linear", lo=-2, hi=2, step=1),
    # Bounds beyond the field's type: the exact row path.
    HistSpec(value="b", kind="linear", lo=-10, hi=300, step=3),
]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 400))
def test_hist_counts_a_packed_batch_exactly_as_its_rows(seed: int, n: int) -> None:
    batch = _packed(_rows(random.Random(seed), n))
    for spec in SPECS:
        by_rows, by_numpy = Histogram(spec, WIDE), Histogram(spec, WIDE)
        by_rows.add_rows(batch.rows)
        by_numpy.add_batch(EventBatch.from_records("t", WIDE, batch.records()))
        assert by_numpy.data == by_rows.data, spec
        assert by_numpy.render() == by_rows.render()


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8"]),
    st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=300),
    st.integers(0, 2**64 - 1),
)
@example("u8", [0, 999], 2**63)  # values above 2**63: int(lo) fits no C long
@example("i1", [0, 255], 0)  # offsets past the type's signed maximum
def test_distinct_without_sorting_is_np_unique(dtype: str, raw: list[int], base: int) -> None:
    import numpy as np

    from tracekit.base.hist import _distinct

    info = np.iinfo(dtype)
    width = int(info.max) - int(info.min) + 1
    # Values near one base (small span: the table path) or anywhere (np.unique's).
    near = [int(info.min) + (base + v % 1000) % width for v in raw]
    anywhere = [int(info.min) + v % width for v in raw]
    for vals in (near, anywhere):
        col = np.array(vals, dtype=dtype)
        u, inv = _distinct(col)
        want_u, want_inv = np.unique(col, return_inverse=True)
        assert u.dtype == col.dtype and u.tolist() == want_u.tolist()
        assert inv.reshape(-1).tolist() == want_inv.reshape(-1).tolist()


def test_log2_buckets_are_bit_length_at_every_edge() -> None:
    import numpy as np

    h = Histogram(HistSpec(value="u", kind="log2"), WIDE)
    vals = sorted({e + d for e in _EDGES for d in (-1, 0, 1) if 0 <= e + d < 2**64})
    vals += [(1 << k) + d for k in range(1, 64) for d in (-1, 0, 1)]
    got = h._np_buckets(np.array(vals, dtype=np.uint64)).tolist()
    assert got == [v.bit_length() for v in vals]
    signed = [-(2**63), -1, 0, 1, 2**62, 2**63 - 1]
    got = h._np_buckets(np.array(signed, dtype=np.int64)).tolist()
    assert got == [max(v, 0).bit_length() for v in signed]


def test_a_field_of_a_joined_batch_without_joining_the_rest() -> None:
    rows = synthetic_rows(SCHEMA, 50, seed=5)
    parts = [
        EventBatch.from_records("t", SCHEMA, EventBatch("t", r, schema=SCHEMA).records())
        for r in (rows[:20], rows[20:])
    ]
    joined = EventBatch.concat(parts)
    assert joined.field_array(1).tolist() == [r[1] for r in rows]
    assert len(joined.chunks()) == 2  # still not joined


@pytest.mark.parametrize("probe", ["txq-flip", "ooo-okay", "rss-cpu", "fq-throttle"])
def test_rows_by_struct_are_the_rows_of_the_numpy_batch(probe: str) -> None:
    """Before numpy is imported the CO-RE loader decodes with struct; the rows must
    be those the numpy path gives, padding dropped and strings decoded alike."""
    from tracekit.bpf.records import record_decoder, rows_from_records
    from tracekit.plugin.bus import build_bus

    schema = build_bus(load_entry_points=False).probes.get(probe).schema
    rng = random.Random(probe)
    n, size = 300, schema.kernel_size
    data = bytearray(rng.getrandbits(8) for _ in range(n * size))
    names = [b"tk0\0\0", b"\xff\xfe bad utf-8", b"", b"x" * 16]
    for i, (f, off) in enumerate(zip(schema.fields, schema.kernel_offsets(), strict=True)):
        if f.is_str:  # NUL-cut names, invalid UTF-8, a full field without a NUL
            for r in range(n):
                data[r * size + off : r * size + off + f.size] = names[(r + i) % 4][: f.size].ljust(
                    f.size, b"\0"
                )
    want = record_decoder(probe, schema, header=0, stride=size)(memoryview(bytes(data)), n).rows
    assert rows_from_records(schema, bytes(data)) == want
    assert rows_from_records(schema, b"") == []


KEYED = Schema(
    fields=(
        Field("v", "u64"),
        Field("sk", "u64", key=True),
        Field("dev", "str16", key=True),
        Field("port", "u16", key=True),
        Field("odd", "str5", key=True),
    )
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 600),
    distinct=st.integers(1, 300),
)
def test_hist_counts_wide_keys_by_hashing_as_the_sorting_path(
    seed: int, n: int, distinct: int
) -> None:
    """hist groups wide keys (a u64 pointer, 16- and 5-byte strings) by hashing, not
    np.unique; the counts are those of the sorting path it replaced."""
    import struct

    rng = random.Random(seed)
    keys = [
        (
            rng.choice([rng.randrange(2**64), 0xFFFF8880_00000000 + rng.randrange(64) * 64]),
            rng.choice(
                [b"eth0", b"veth-a\0x", b"\xff" * 16, bytes(rng.randrange(256) for _ in range(16))]
            ),
            rng.randrange(2**16),
            rng.choice([b"", b"ab\0", b"\x01\x02\x03\x04\x05"]),
        )
        for _ in range(distinct)
    ]
    pack = struct.Struct("<" + KEYED.struct_format[1:])
    data = b"".join(pack.pack(rng.randrange(2**64), *rng.choice(keys)) for _ in range(n))
    for spec in (
        HistSpec(value="v", by=("sk", "dev", "port", "odd")),
        HistSpec(value="v", by=("dev",)),
    ):
        hashed, sorted_ = Histogram(spec, KEYED), Histogram(spec, KEYED)
        sorted_._sorting = True
        hashed.add_batch(EventBatch.from_records("t", KEYED, data))
        sorted_.add_batch(EventBatch.from_records("t", KEYED, data))
        assert hashed.data == sorted_.data
        assert hashed.render() == sorted_.render()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=9), min_size=1, max_size=200))
def test_hash_grouping_puts_equal_values_together_and_only_them(values: list[bytes]) -> None:
    import numpy as np

    from tracekit.base.hist import _groups

    col = np.array(values, dtype="S9")
    k, inv = _groups(col)
    pairs = set(zip(inv.tolist(), col.tolist(), strict=True))
    assert k == len(set(col.tolist())) == len(pairs) == len({i for i, _ in pairs})
