"""The trace framer's hand-parsed path against msgpack.Unpacker on the same bytes."""

from __future__ import annotations

import io
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.traces.framing import Framer, NotARecord, RecordTooLong

LIMITS = {
    "max_bin_len": 1000,
    "max_array_len": 4,
    "max_map_len": 0,
    "max_str_len": 0,
    "max_ext_len": 0,
}
UINTS = st.one_of(
    st.integers(0, 127),
    st.integers(128, 255),
    st.integers(256, 65535),
    st.integers(65536, 2**32 - 1),
    st.integers(2**32, 2**64 - 1),
)
RECORD = st.one_of(
    st.sampled_from([None, 7, -1, True, 1.5, {}]),  # a value where a record should start
    st.tuples(st.integers(0, 127), UINTS, UINTS, st.binary(max_size=600)),  # format 2
    st.tuples(st.integers(0, 127), UINTS, st.binary(max_size=300)),  # format 1
    st.tuples(st.integers(-5, 300), st.text(max_size=3)),  # anything else
)


def framed(data: bytes) -> list[Any]:
    f = io.BytesIO(data)
    framer = Framer(f.readinto, len(data), 1000, LIMITS)
    out: list[Any] = []
    try:
        while (rec := framer.next()) is not None:
            if isinstance(rec, list):
                rec = [bytes(x) if isinstance(x, memoryview) else x for x in rec]
            out.append(rec)
    except (ValueError, msgpack.FormatError, msgpack.StackError, RecordTooLong, NotARecord) as exc:
        out.append(type(exc).__name__)
    return out


def unpacked(data: bytes) -> list[Any]:
    up = msgpack.Unpacker(max_buffer_size=1 << 20, **LIMITS)
    up.feed(data)
    out: list[Any] = []
    try:
        for rec in up:
            if type(rec) is not list:  # a nil or any other value: never the end
                out.append("NotARecord")
                break
            out.append(rec)
    except (ValueError, msgpack.FormatError, msgpack.StackError) as exc:
        out.append(type(exc).__name__)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORD, max_size=6), st.integers(0, 40), st.binary(max_size=8))
def test_framer_reads_what_msgpack_reads(recs: list[Any], cut: int, tail: bytes) -> None:
    data = b"".join(
        msgpack.packb(list(r) if isinstance(r, tuple) else r, use_bin_type=True) for r in recs
    )
    data += tail
    data = data[: max(0, len(data) - cut)]
    got, want = framed(data), unpacked(data)
    # A bin too long for the limit: the framer says so from its header, msgpack with
    # a ValueError; the records before it are the same.
    if got and got[-1] == "RecordTooLong":
        assert want[-1] == "ValueError" and got[:-1] == want[:-1]
    else:
        assert got == want


def test_bodies_are_views_of_the_read_chunk_not_copies() -> None:
    data = msgpack.packb([1, 5, 7, b"x" * 500]) * 3
    framer = Framer(io.BytesIO(data).readinto, len(data), 1000, LIMITS)
    bodies = [framer.next()[3] for _ in range(3)]
    assert all(type(b) is memoryview and bytes(b) == b"x" * 500 for b in bodies)
    assert framer.next() is None and framer.consumed == len(data)
