"""The ring buffer reader against a real kernel ring buffer, on the host.

An XDP program run with BPF_PROG_TEST_RUN (no attach, no traffic) writes one record
per repetition; the reader takes them from the buffer's mapped pages. Needs a
kernel with BPF and root; clang builds the program.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from ringfeed import REC, counts, load_feeder

from tracekit.base.errors import TracekitError
from tracekit.bpf.libbpf import BpfObject
from tracekit.bpf.ringbuf import HEADER, RingBuffer

SIZE = 4096 * 4  # small, so a few hundred records wrap around


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BpfObject]:
    if os.geteuid() != 0 or shutil.which("clang") is None:
        pytest.skip("needs root and clang")
    try:
        obj = load_feeder(tmp_path_factory.mktemp("bpf"), SIZE)
    except TracekitError as exc:
        pytest.skip(f"this kernel cannot load the feeder: {exc}")
    yield obj
    obj.close()


def drained(ring: RingBuffer) -> list[tuple[int, ...]]:
    records = ring.drain(REC.size)
    assert records.dtype == "uint8" and records.flags.c_contiguous
    return list(REC.iter_unpack(records))


@pytest.mark.parametrize("numpy", [True, False])
def test_records_in_order_across_wraparound_and_none_lost(feed: BpfObject, numpy: bool) -> None:
    ring = RingBuffer(feed.map_fd("feed"), SIZE)
    take = drained if numpy else (lambda r: list(REC.iter_unpack(r.drain_bytes(REC.size))))
    try:
        _, refused0 = counts(feed)  # the module's earlier tests may have overfilled it
        seen: list[int] = []
        stride = (HEADER + REC.size + 7) & ~7
        per_round = SIZE // stride // 2  # fits, and two rounds cross the end of the buffer
        for _ in range(7):
            feed.test_run("tk_feed", per_round)
            assert ring.pending() == per_round * stride
            rows = take(ring)
            assert all(r[2] == b"tracekit\0\0\0\0" for r in rows)
            seen += [r[0] for r in rows]
            assert ring.pending() == 0
        written, refused = counts(feed)
        assert refused == refused0
        assert seen == list(range(written - len(seen), written)) and len(seen) == 7 * per_round
        # Overfill: the kernel refuses what does not fit, and counts it; the reader
        # takes exactly what was accepted.
        base = written
        feed.test_run("tk_feed", SIZE // stride + 50)
        rows = take(ring)
        written, refused = counts(feed)
        refused -= refused0
        assert refused > 0 and len(rows) + refused == written - base
        assert [r[0] for r in rows] == list(range(base, base + len(rows)))
    finally:
        ring.close()


def test_size_must_be_a_power_of_two(feed: BpfObject) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RingBuffer(feed.map_fd("feed"), SIZE - 4096)


def test_a_drain_takes_at_most_its_limit_and_leaves_the_rest(feed: BpfObject) -> None:
    ring = RingBuffer(feed.map_fd("feed"), SIZE)
    try:
        ring.drain(REC.size)
        written0, _ = counts(feed)
        feed.test_run("tk_feed", 100)
        first = list(REC.iter_unpack(ring.drain(REC.size, limit=30)))
        rest = drained(ring)
        assert [r[0] for r in first + rest] == list(range(written0, written0 + 100))
        assert len(first) == 30 and ring.pending() == 0
    finally:
        ring.close()


@pytest.mark.parametrize("numpy", [True, False])
def test_records_of_another_size_are_stepped_over_and_none_of_ours_lost(
    feed: BpfObject, numpy: bool
) -> None:
    ring = RingBuffer(feed.map_fd("feed"), SIZE)
    # drain_bytes: the same records without numpy (a run's first events).
    drain = ring.drain if numpy else ring.drain_bytes
    try:
        ring.drain(REC.size)
        base, _ = counts(feed)
        for _ in range(3):
            feed.test_run("tk_feed", 7)
            feed.test_run("tk_feed_small", 1)  # 24 bytes where ours take 32
        got: list[tuple[int, ...]] = []
        while ring.pending():  # small limits: the cut falls behind the odd records
            got += REC.iter_unpack(drain(REC.size, limit=5))
        assert [r[0] for r in got] == list(range(base, base + 21))
    finally:
        ring.close()
