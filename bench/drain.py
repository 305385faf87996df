"""Live drain rate: tracekit's buffer readers beside per-event callbacks and C.

    python bench/drain.py [--events 2000000] [--rounds 3] [--only NAME]

Runs on this machine's own kernel (root, BPF, no attach needed): an XDP program
(tests/bpf/ringfeed.bpf.c) run with BPF_PROG_TEST_RUN on one pinned CPU writes the
same backlog of 24-byte records into a BPF ring buffer or that CPU's perf buffer,
then one consumer drains it, timed. Every consumer gets the same records (the flood
is the backlog: a producer running beside the consumer caps every consumer at the
producer's rate, about 1 M events/s here, which measures the producer), and each
must deliver every one of them (checked, with the kernel's count of refused
outputs at zero):

- tracekit ring buffer / perf buffer -> trace: ``RingBuffer.drain`` / ``PerfBuffer.drain``
  (mapped pages, a whole run checked and copied with numpy) into a packed
  ``EventBatch``, as ``CoreProbe.poll`` makes it, written by the msgpack sink's
  ``TraceWriter`` to a file on tmpfs (framing, CRC);
- tracekit ring buffer, no sink: the same batches, handed to nothing (the reader's
  own rate: the counterpart of the C consumer with an empty callback);
- libbpf + Python callback: libbpf's ``ring_buffer__consume`` / ``perf_buffer__consume``
  calling a ctypes callback per event that does nothing: bare BCC's loops;
- C, empty callback: libbpf's ``ring_buffer__consume`` with a callback that only
  counts (the issue's reference), built here with gcc -O2;
- C, copy + write: the same loop whose callback copies each record into a buffer
  written to a tmpfs file every 8,192 records: the work tracekit's path does, less
  the trace framing and CRC;
- file write only: no ring at all, the backlog's bytes (24 per event) written from
  one buffer in 2 MiB pieces to a fresh tmpfs file: the ceiling of any consumer
  that delivers the events into a file on this machine (the kernel allocates and
  fills the file's pages), whatever reads the ring.

Events per second are compared side by side, rounds interleaved.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ringfeed import fill, load_feeder  # the XDP feeder the buffer tests use

from tracekit.base.schema import Field, Schema
from tracekit.base.session import EventBatch, Session
from tracekit.bpf.libbpf import BpfObject
from tracekit.bpf.perfbuf import PerfBuffer, sample_stride
from tracekit.bpf.ringbuf import RingBuffer
from tracekit.traces.tracefile import TraceWriter

RING = 1 << 27  # 128 MiB: room for the whole backlog (32-byte slots)
SCHEMA = Schema((Field("seq", "u64"), Field("cpu", "u32"), Field("tag", "str12")))
CPU = 1  # the producer's CPU (its perf ring is the one filled)

C_CONSUMER = r"""
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static long n;
static char buf[8192 * 24];
static size_t used;
static int out = -1;
static int empty(void *ctx, void *data, size_t size) { n++; return 0; }
static int copy(void *ctx, void *data, size_t size) {
    memcpy(buf + used, data, size);
    used += size;
    n++;
    if (used + size > sizeof buf) { if (write(out, buf, used) < 0) return -1; used = 0; }
    return 0;
}
int main(int argc, char **argv) {
    int fd = atoi(argv[1]);
    if (argc > 2) out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    struct ring_buffer *rb = ring_buffer__new(fd, argc > 2 ? copy : empty, NULL, NULL);
    if (!rb) return 1;
    struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
    ring_buffer__consume(rb);
    if (out >= 0 && used && write(out, buf, used) < 0) return 1;
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld %.9f\n", n, (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    if (out >= 0) { close(out); unlink(argv[2]); }
    return 0;
}
"""

Case = Callable[[], tuple[int, float]]


def build_consumer(tmp: Path) -> Path:
    src = tmp / "consume.c"
    src.write_text(C_CONSUMER)
    exe = tmp / "consume"
    subprocess.run(["gcc", "-O2", str(src), "-o", str(exe), "-lbpf"], check=True)
    return exe


def perf_pages(events: int) -> int:
    need = events * sample_stride(SCHEMA.size) // 4096 + 1
    return 1 << (need - 1).bit_length()


def to_trace(next_batch: Callable[[], EventBatch | None]) -> tuple[int, float]:
    """Batches from ``next_batch`` written by the msgpack sink's writer (tmpfs)."""
    session = Session(probe="bench", schema=SCHEMA, params={})
    fd, path = tempfile.mkstemp(suffix=".tkt", dir="/dev/shm")
    os.close(fd)
    w = TraceWriter(path, session, force=True)
    n = 0
    t = time.perf_counter()
    while (b := next_batch()) is not None:
        w.write_batch(b)
        n += len(b)
    took = time.perf_counter() - t
    w.close(None)
    os.unlink(path)
    return n, took


def tracekit_ring(feed: BpfObject, events: int, sink: bool = True) -> Case:
    ring = RingBuffer(feed.map_fd("feed"), RING)  # mapped before, as a live run's is
    fill(feed, "tk_feed", events, CPU)

    def batch() -> EventBatch | None:
        if not ring.pending():
            return None
        return EventBatch.from_records("bench", SCHEMA, ring.drain(SCHEMA.size))

    def go() -> tuple[int, float]:
        try:
            if sink:
                return to_trace(batch)
            n = 0
            t = time.perf_counter()
            while (b := batch()) is not None:
                n += len(b)
            return n, time.perf_counter() - t
        finally:
            ring.close()

    return go


def tracekit_perf(feed: BpfObject, events: int) -> Case:
    buf = PerfBuffer.for_map(feed.lib, feed.map_fd("feed_perf"), [CPU], perf_pages(events))
    fill(feed, "tk_feed_perf", events, CPU)

    def go() -> tuple[int, float]:
        def batch() -> EventBatch | None:
            if not buf.pending():
                return None
            return EventBatch.from_records("bench", SCHEMA, buf.drain(SCHEMA.size))

        try:
            return to_trace(batch)
        finally:
            assert buf.lost() == {CPU: 0}
            buf.close()

    return go


_CB = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)
_PERF_CB = ct.CFUNCTYPE(None, ct.c_void_p, ct.c_int, ct.c_void_p, ct.c_uint32)


def callback_ring(feed: BpfObject, events: int) -> Case:
    """libbpf's ring_buffer__consume calling a Python (ctypes) callback per event."""
    fill(feed, "tk_feed", events, CPU)
    lib = feed.lib.lib
    got = [0]

    def cb(_ctx: int, _data: int, _size: int) -> int:
        got[0] += 1
        return 0

    def go() -> tuple[int, float]:
        fn = _CB(cb)
        lib.ring_buffer__new.restype = ct.c_void_p
        lib.ring_buffer__new.argtypes = [ct.c_int, _CB, ct.c_void_p, ct.c_void_p]
        lib.ring_buffer__consume.argtypes = [ct.c_void_p]
        lib.ring_buffer__free.argtypes = [ct.c_void_p]
        rb = lib.ring_buffer__new(feed.map_fd("feed"), fn, None, None)
        t = time.perf_counter()
        lib.ring_buffer__consume(rb)
        took = time.perf_counter() - t
        lib.ring_buffer__free(rb)
        return got[0], took

    return go


def callback_perf(feed: BpfObject, events: int) -> Case:
    """libbpf's perf_buffer__consume calling a Python (ctypes) callback per event."""
    lib = feed.lib.lib
    got = [0]

    def cb(_ctx: int, _cpu: int, _data: int, _size: int) -> None:
        got[0] += 1

    fn = _PERF_CB(cb)
    lib.perf_buffer__new.restype = ct.c_void_p
    lib.perf_buffer__new.argtypes = [
        ct.c_int,
        ct.c_size_t,
        _PERF_CB,
        ct.c_void_p,
        ct.c_void_p,
        ct.c_void_p,
    ]
    lib.perf_buffer__consume.argtypes = [ct.c_void_p]
    lib.perf_buffer__free.argtypes = [ct.c_void_p]
    pb = lib.perf_buffer__new(feed.map_fd("feed_perf"), perf_pages(events), fn, None, None, None)
    assert pb, "perf_buffer__new failed"
    fill(feed, "tk_feed_perf", events, CPU)

    def go() -> tuple[int, float]:
        t = time.perf_counter()
        lib.perf_buffer__consume(pb)
        took = time.perf_counter() - t
        lib.perf_buffer__free(pb)
        _ = fn  # alive until freed
        return got[0], took

    return go


def c_ring(feed: BpfObject, events: int, exe: Path, write: bool) -> Case:
    fill(feed, "tk_feed", events, CPU)

    def go() -> tuple[int, float]:
        fd = feed.map_fd("feed")
        args = [str(exe), str(fd)]
        if write:
            args.append(f"/dev/shm/tk-bench-c-{os.getpid()}.bin")
        p = subprocess.run(args, pass_fds=(fd,), capture_output=True, text=True, check=True)
        n, took = p.stdout.split()
        return int(n), float(took)

    return go


def write_only(events: int) -> Case:
    piece = bytes(2 << 20)
    total = events * SCHEMA.size

    def go() -> tuple[int, float]:
        path = f"/dev/shm/tk-bench-w-{os.getpid()}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            left = total
            t = time.perf_counter()
            while left > 0:
                left -= os.write(fd, piece[: min(left, len(piece))])
            took = time.perf_counter() - t
        finally:
            os.close(fd)
            os.unlink(path)
        return events, took

    return go


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help="run the cases whose name starts so (for a profiler)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (BPF)")
    with tempfile.TemporaryDirectory() as d:
        exe = build_consumer(Path(d))
        feed = load_feeder(Path(d), RING)
        n = a.events
        cases: dict[str, Callable[[], Case]] = {
            "tracekit ring buffer -> trace": lambda: tracekit_ring(feed, n),
            "tracekit ring buffer, no sink": lambda: tracekit_ring(feed, n, sink=False),
            "tracekit perf buffer -> trace": lambda: tracekit_perf(feed, n),
            "Python callback, ring (BCC's)": lambda: callback_ring(feed, n),
            "Python callback, perf (BCC's)": lambda: callback_perf(feed, n),
            "C, ring, empty callback": lambda: c_ring(feed, n, exe, write=False),
            "C, ring, copy + write": lambda: c_ring(feed, n, exe, write=True),
            "file write only (ceiling)": lambda: write_only(n),
        }
        if a.only:
            cases = {k: v for k, v in cases.items() if k.startswith(a.only)}
        rates: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(a.rounds):
            for name, make in cases.items():
                got, took = make()()
                assert got == n, (name, got)
                rates[name].append(got / took)
        feed.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"== draining a backlog of {n:,} events (24-byte records), {a.rounds} rounds, median")
    refs = [
        ("callback", "Python callback, ring (BCC's)"),
        ("C empty", "C, ring, empty callback"),
        ("C write", "C, ring, copy + write"),
    ]
    ring = med.get("tracekit ring buffer -> trace")
    head = "".join(f"{'vs ' + r:>12}" for r, _ in refs) + f"{'vs tk ring':>12}"
    print(f"{'consumer':<32}{'M ev/s':>8}{'spread':>8}{head}")
    for name, m in med.items():
        spread = (max(rates[name]) - min(rates[name])) / m
        cols = "".join(f"{m / med[k]:>11.2f}x" if k in med else f"{'-':>12}" for _, k in refs)
        cols += f"{m / ring:>11.2f}x" if ring else f"{'-':>12}"
        print(f"{name:<32}{m / 1e6:>8.2f}{spread:>8.0%}{cols}")


if __name__ == "__main__":
    main()
