from __future__ import annotations

import os
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.base.errors import TraceFileError, UsageError
from tracekit.base.schema import Field
from tracekit.base.session import LostReport, Session, Summary
from tracekit.probes.txq_flip import SCHEMA
from tracekit.traces.tracefile import (
    BATCH,
    MAGIC,
    MAX_BATCH,
    TraceReader,
    TraceWriter,
    _batch_head,
    _crc,
)


def write(
    path: Path, session: Session, batches: list[list[tuple[object, ...]]], footer: bool = True
) -> None:
    w = TraceWriter(str(path), session)
    for b in batches:
        w.write_batch(b)
    w.write_lost(LostReport("perf", {0: 3, 1: 4}))
    w.close(
        Summary(events=sum(map(len, batches)), lost={"perf": {0: 3, 1: 4}}, duration=1.5)
        if footer
        else None
    )


def read_rows(path: Path) -> tuple[TraceReader, list[tuple[object, ...]]]:
    r = TraceReader(str(path))
    rows: list[tuple[object, ...]] = []
    for rec in r.records():
        if rec.kind == BATCH:
            rows.extend(rec.payload)
    return r, rows


def test_round_trip_with_header_and_footer(tmp_path: Path, session: Session, rows: list) -> None:
    p = tmp_path / "t.tkt"
    write(p, session, [rows[:100], rows[100:]])
    r, got = read_rows(p)
    assert got == rows
    assert r.session.probe == "txq-flip" and r.session.schema == SCHEMA
    assert r.session.kernel == "6.1.0-test" and r.session.ncpus == 2
    assert (
        r.footer is not None and r.footer.events == 500 and r.footer.lost == {"perf": {0: 3, 1: 4}}
    )
    assert not r.truncated


def _value(f: Field) -> st.SearchStrategy[object]:
    # Any value the field's type can hold. A strN field holds N bytes cut at the first
    # NUL: any text whose UTF-8 fits (tests/test_batches.py covers raw kernel bytes).
    if f.is_str:
        return st.text(max_size=f.size).filter(
            lambda s: "\0" not in s and len(s.encode()) <= f.size
        )
    bits = f.size * 8
    if f.type.startswith("s"):
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return st.integers(0, (1 << bits) - 1)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.lists(st.tuples(*(_value(f) for f in SCHEMA.fields)), max_size=30),
        max_size=8,
    )
)
def test_any_sequence_of_batches_round_trips(
    tmp_path: Path, session: Session, batches: list
) -> None:
    p = tmp_path / "h.tkt"
    if p.exists():
        p.unlink()
    write(p, session, batches)
    _, got = read_rows(p)
    assert got == [r for b in batches for r in b]


def test_large_batches_are_split(tmp_path: Path, session: Session) -> None:
    from tracekit.testing import synthetic_rows

    many = synthetic_rows(SCHEMA, MAX_BATCH * 2 + 5)
    p = tmp_path / "big.tkt"
    write(p, session, [many])
    with open(p, "rb") as f:
        f.read(len(MAGIC))
        sizes = [len(b) // SCHEMA.size for k, _, _, b in msgpack.Unpacker(f) if k == BATCH]
    assert sizes == [MAX_BATCH, MAX_BATCH, 5]
    r = TraceReader(str(p))  # joined again on reading, each record counted
    got = [len(rec.payload) for rec in r.records() if rec.kind == BATCH]
    assert sum(got) == r.rows == len(many) and r.batches == 3


def test_every_truncation_replays_up_to_last_complete_batch(
    tmp_path: Path, session: Session, rows: list
) -> None:
    p = tmp_path / "t.tkt"
    write(p, session, [rows[:10], rows[10:20], rows[20:30]])
    data = p.read_bytes()
    header_end = None
    for cut in range(len(MAGIC), len(data)):
        q = tmp_path / "cut.tkt"
        q.write_bytes(data[:cut])
        try:
            r, got = read_rows(q)
        except TraceFileError as exc:
            # Only a cut inside the header may refuse the file.
            assert header_end is None, f"cut at {cut}: {exc}"
            continue
        header_end = header_end or cut
        assert r.truncated
        assert got == rows[: len(got)] and len(got) % 10 == 0


def test_not_a_trace(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"hello world, this is not a trace")
    with pytest.raises(TraceFileError, match="not a tracekit trace"):
        TraceReader(str(p))
    p.write_bytes(msgpack.packb({"format": 1}))
    with pytest.raises(TraceFileError, match="not a tracekit trace"):
        TraceReader(str(p))
    with pytest.raises(TraceFileError, match="cannot read"):
        TraceReader(str(tmp_path / "missing"))


def test_newer_format_is_refused(tmp_path: Path, session: Session) -> None:
    body = msgpack.packb({"format": 99, **session.header()}, use_bin_type=True)
    p = tmp_path / "new.tkt"
    p.write_bytes(MAGIC + msgpack.packb([0, zlib.crc32(body), body], use_bin_type=True))
    with pytest.raises(TraceFileError, match="format version 99 is newer"):
        TraceReader(str(p))


def test_bit_flip_in_a_batch_is_corruption(tmp_path: Path, session: Session, rows: list) -> None:
    p = tmp_path / "t.tkt"
    write(p, session, [rows])
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(TraceFileError, match="corrupt"):
        read_rows(p)


def test_huge_declared_length_does_not_allocate(tmp_path: Path, session: Session) -> None:
    p = tmp_path / "t.tkt"
    write(p, session, [], footer=False)
    good = p.read_bytes()
    # A frame claiming a 4 GiB bin body.
    evil = good + b"\x93\x01\x00\xc6\xff\xff\xff\xff" + b"x" * 100
    p.write_bytes(evil)
    import tracemalloc

    tracemalloc.start()
    r, rows = read_rows(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # The reader cannot tell a cut from a lie about the length: either way it stops
    # there, reports a cut file, and never allocates what the length claims.
    assert r.truncated and rows == []
    assert peak < 8 * 1024 * 1024


def test_writer_refuses_to_overwrite_and_honours_umask(tmp_path: Path, session: Session) -> None:
    p = tmp_path / "t.tkt"
    old = os.umask(0o077)
    try:
        TraceWriter(str(p), session).close(Summary())
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o600
    with pytest.raises(UsageError, match="--force"):
        TraceWriter(str(p), session)
    TraceWriter(str(p), session, force=True).close(Summary())


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, 200_000])
@pytest.mark.parametrize("seq", [1, 127, 128, 70_000, 1 << 33])
def test_batch_framing_written_by_hand_is_msgpacks(n: int, seq: int) -> None:
    # The writer frames BATCH records by hand to write bodies from where they are;
    # the bytes must be exactly what msgpack writes for [kind, seq, crc, body].
    body = bytes(range(256)) * (n // 256) + bytes(n % 256)
    crc = _crc(BATCH, seq, body)
    assert _batch_head(seq, crc, n) + body == msgpack.packb([BATCH, seq, crc, body])
