"""The perf buffer reader against real kernel perf rings, on the host.

As tests/test_ringbuf.py: an XDP program run with BPF_PROG_TEST_RUN writes one
record per repetition, here with bpf_perf_event_output into the ring of the CPU
the test runs on (pinned). The kernel's own counts are the oracle: records the
program wrote, outputs it was refused (the buffer full), and the PERF_RECORD_LOST
records the kernel writes into the ring for them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from ringfeed import REC, counts, load_feeder, on_cpu

from tracekit.base.errors import TracekitError
from tracekit.bpf.libbpf import BpfObject
from tracekit.bpf.perfbuf import PerfBuffer, sample_stride

PAGES = 4  # 16 KiB per CPU: 40-byte samples straddle its end as they go round


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BpfObject]:
    if os.geteuid() != 0 or shutil.which("clang") is None:
        pytest.skip("needs root and clang")
    try:
        obj = load_feeder(tmp_path_factory.mktemp("bpf"), 4096)
    except TracekitError as exc:
        pytest.skip(f"this kernel cannot load the feeder: {exc}")
    yield obj
    obj.close()


@pytest.fixture
def on_cpu0() -> Iterator[int]:
    """Run the test on CPU 0: the program writes into the ring of the CPU it runs on."""
    with on_cpu(0) as cpu:
        yield cpu


def drained(buf: PerfBuffer) -> list[tuple[int, ...]]:
    records = buf.drain(REC.size)
    assert records.dtype == "uint8" and records.flags.c_contiguous
    return list(REC.iter_unpack(records))


def test_stride_is_the_kernels_padding() -> None:
    # header (8) + u32 size + data, padded to 8 (perf_prepare_sample).
    assert sample_stride(24) == 40 and sample_stride(28) == 40 and sample_stride(29) == 48


def test_samples_in_order_across_wraparound_losses_counted(feed: BpfObject, on_cpu0: int) -> None:
    buf = PerfBuffer.for_map(feed.lib, feed.map_fd("feed_perf"), [on_cpu0], PAGES, wakeup_events=1)
    try:
        stride = sample_stride(REC.size)
        per_round = PAGES * 4096 // stride // 2
        base, _ = counts(feed)
        seen: list[int] = []
        for _ in range(7):  # 7 half-rings: crosses the end of the ring three times
            feed.test_run("tk_feed_perf", per_round)
            assert buf.pending() == per_round * stride
            rows = drained(buf)
            assert all(r[1] == on_cpu0 and r[2] == b"tracekit\0\0\0\0" for r in rows)
            seen += [r[0] for r in rows]
            assert buf.pending() == 0
        written, refused = counts(feed)
        assert refused == 0 and buf.lost() == {on_cpu0: 0}
        assert seen == list(range(base, written)) and len(seen) == 7 * per_round
        # Overfill: the kernel refuses what does not fit (counted by the program)
        # and says so with a PERF_RECORD_LOST before the next sample that fits.
        base = written
        feed.test_run("tk_feed_perf", PAGES * 4096 // stride + 50)
        rows = drained(buf)
        written, refused = counts(feed)
        assert refused > 0 and len(rows) + refused == written - base
        assert [r[0] for r in rows] == list(range(base, base + len(rows)))
        feed.test_run("tk_feed_perf", 1)
        after = drained(buf)
        assert [r[0] for r in after] == [written]
        assert buf.lost() == {on_cpu0: refused}
    finally:
        buf.close()


def test_pages_must_be_a_power_of_two(feed: BpfObject) -> None:
    with pytest.raises(ValueError, match="power of two"):
        PerfBuffer.for_map(feed.lib, feed.map_fd("feed_perf"), [0], 3)


def test_a_drain_takes_at_most_its_limit_and_leaves_the_rest(feed: BpfObject, on_cpu0: int) -> None:
    buf = PerfBuffer.for_map(feed.lib, feed.map_fd("feed_perf"), [on_cpu0], PAGES)
    try:
        base, _ = counts(feed)
        feed.test_run("tk_feed_perf", 100)
        first = list(REC.iter_unpack(buf.drain(REC.size, limit=30)))
        rest = drained(buf)
        assert [r[0] for r in first + rest] == list(range(base, base + 100))
        assert len(first) == 30 and buf.pending() == 0
    finally:
        buf.close()
