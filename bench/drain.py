"""Live drain rate: tracekit's ring buffer reader beside a per-event callback and C.

    python bench/drain.py [--events 2000000] [--rounds 3]

Runs on this machine's own kernel (root, BPF, no attach needed): an XDP program
(tests/bpf/ringfeed.bpf.c) run with BPF_PROG_TEST_RUN fills a ring buffer with a
backlog of records, then one consumer drains it, timed (a producer running beside
the consumer caps every consumer at the producer's ~1 M events/s here, so the
backlog measures what the consumer alone can take):

- tracekit: `RingBuffer.drain` (mapped pages, a whole run checked and copied with
  numpy) into packed `EventBatch`es, then the msgpack sink's writer to /dev/null;
- libbpf + Python callback: `ring_buffer__poll` calling a ctypes callback per
  event that does nothing (what bare BCC's ring buffer loop costs);
- C: a small libbpf consumer with an empty callback, built here with gcc.

Events per second are compared side by side, rounds interleaved.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tracekit.core_build import compile_core
from tracekit.libbpf import BpfObject
from tracekit.ringbuf import RingBuffer
from tracekit.schema import Field, Schema
from tracekit.session import EventBatch, Session
from tracekit.tracefile import TraceWriter

ROOT = Path(__file__).resolve().parents[1]
RING = 1 << 27  # 128 MiB: room for the whole backlog (32-byte slots)
SCHEMA = Schema((Field("seq", "u64"), Field("cpu", "u32"), Field("tag", "str12")))

C_CONSUMER = r"""
#include <bpf/libbpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static long n;
static int cb(void *ctx, void *data, size_t size) { n++; return 0; }
int main(int argc, char **argv) {
    int fd = atoi(argv[1]);
    struct ring_buffer *rb = ring_buffer__new(fd, cb, NULL, NULL);
    if (!rb) return 1;
    struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
    ring_buffer__consume(rb);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld %.9f\n", n, (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""


def build(tmp: Path) -> tuple[Path, Path]:
    obj = tmp / "ringfeed.o"
    compile_core(ROOT / "tests" / "bpf" / "ringfeed.bpf.c", obj, [ROOT / "probes"])
    src = tmp / "consume.c"
    src.write_text(C_CONSUMER)
    exe = tmp / "consume"
    subprocess.run(["gcc", "-O2", str(src), "-o", str(exe), "-lbpf"], check=True)
    return obj, exe


def counts(feed: BpfObject) -> tuple[int, int]:
    fd = feed.map_fd("counts")
    out = []
    for i in (0, 1):
        k, v = ct.c_uint32(i), ct.c_uint64()
        feed.lib.lib.bpf_map_lookup_elem(fd, ct.byref(k), ct.byref(v))
        out.append(v.value)
    return out[0], out[1]


def fill(feed: BpfObject, events: int) -> None:
    """Put ``events`` records in the ring (BPF_PROG_TEST_RUN, 100,000 per call)."""
    left = events
    while left > 0:
        feed.test_run("tk_feed", min(left, 100_000))
        left -= 100_000


def drain_tracekit(feed: BpfObject) -> tuple[int, float]:
    """tracekit's reader to packed batches (as CoreProbe.poll makes them), written
    by the trace writer (the msgpack sink's) to tmpfs."""
    ring = RingBuffer(feed.map_fd("feed"), RING)
    session = Session(probe="bench", schema=SCHEMA, params={})
    fd, path = tempfile.mkstemp(suffix=".tkt", dir="/dev/shm")
    os.close(fd)
    w = TraceWriter(path, session, force=True)
    n = 0
    t = time.perf_counter()
    while ring.pending():
        b = EventBatch.from_records("bench", SCHEMA, ring.drain(SCHEMA.size))
        w.write_batch(b)
        n += len(b)
    took = time.perf_counter() - t
    w.close(None)
    os.unlink(path)
    ring.close()
    return n, took


def drain_callback(feed: BpfObject) -> tuple[int, float]:
    """libbpf's ring_buffer__consume calling a Python (ctypes) callback per event."""
    lib = feed.lib.lib
    cbtype = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)
    got = [0]

    def cb(_ctx: int, _data: int, _size: int) -> int:
        got[0] += 1
        return 0

    fn = cbtype(cb)
    lib.ring_buffer__new.restype = ct.c_void_p
    lib.ring_buffer__new.argtypes = [ct.c_int, cbtype, ct.c_void_p, ct.c_void_p]
    lib.ring_buffer__consume.argtypes = [ct.c_void_p]
    lib.ring_buffer__free.argtypes = [ct.c_void_p]
    rb = lib.ring_buffer__new(feed.map_fd("feed"), fn, None, None)
    t = time.perf_counter()
    lib.ring_buffer__consume(rb)
    took = time.perf_counter() - t
    lib.ring_buffer__free(rb)
    return got[0], took


def drain_c(feed: BpfObject, exe: Path) -> tuple[int, float]:
    fd = feed.map_fd("feed")
    p = subprocess.run(
        [str(exe), str(fd)], pass_fds=(fd,), capture_output=True, text=True, check=True
    )
    n, took = p.stdout.split()
    return int(n), float(took)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help="run the cases whose name starts so (for a profiler)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (BPF)")
    with tempfile.TemporaryDirectory() as d:
        obj, exe = build(Path(d))
        feed = BpfObject(str(obj))
        feed.set_max_entries("feed", RING)
        feed.load()
        cases = {
            "tracekit RingBuffer -> trace writer": lambda: drain_tracekit(feed),
            "libbpf + Python callback (bare BCC)": lambda: drain_callback(feed),
            "C consumer (libbpf, empty callback)": lambda: drain_c(feed, exe),
        }
        if a.only:
            cases = {k: v for k, v in cases.items() if k.startswith(a.only)}
        rates: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(a.rounds):
            for name, fn in cases.items():
                _, refused0 = counts(feed)
                fill(feed, a.events)
                _, refused1 = counts(feed)
                assert refused1 == refused0, "the ring is too small for --events"
                n, took = fn()
                assert n == a.events, (name, n)
                rates[name].append(n / took)
        base = statistics.median(rates.get("libbpf + Python callback (bare BCC)", [1.0]))
        c = statistics.median(rates.get("C consumer (libbpf, empty callback)", [1.0]))
        print(
            f"== draining a backlog of {a.events:,} events (24-byte records), "
            f"{a.rounds} rounds, median"
        )
        for name, v in rates.items():
            m = statistics.median(v)
            print(f"{name:<38}{m / 1e6:8.2f} M ev/s  {m / base:6.2f}x callback  {m / c:6.2f}x C")
        feed.close()


if __name__ == "__main__":
    main()
