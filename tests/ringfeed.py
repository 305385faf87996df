"""The XDP feeder (tests/bpf/ringfeed.bpf.c): records written on demand, no traffic.

Its programs run with BPF_PROG_TEST_RUN (no attach, no packets sent), one record
per repetition, into a ring buffer (``tk_feed``, ``tk_feed_small``) or the perf
buffer of the CPU they run on (``tk_feed_perf``); ``counts`` are the kernel's own
tally (written, refused). Shared by tests/test_ringbuf.py, tests/test_perfbuf.py
and bench/drain.py. Needs root, BPF and clang.
"""

from __future__ import annotations

import ctypes as ct
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tracekit.base.errors import TracekitError
from tracekit.bpf.core_build import compile_core
from tracekit.bpf.libbpf import BpfObject

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "bpf" / "ringfeed.bpf.c"
REC = struct.Struct("=QI12s")  # struct rec in ringfeed.bpf.c: seq, cpu, tag
RUN_MAX = 100_000  # repetitions per BPF_PROG_TEST_RUN call


def load_feeder(out_dir: Path, ring_bytes: int) -> BpfObject:
    """Compile the feeder into ``out_dir`` and load it with a ``ring_bytes`` ring
    buffer; TracekitError (the object closed) if this kernel cannot load it."""
    out = out_dir / "ringfeed.o"
    compile_core(SOURCE, out, [ROOT / "probes"])
    obj = BpfObject(str(out))
    obj.set_max_entries("feed", ring_bytes)
    try:
        obj.load()
    except TracekitError:
        obj.close()
        raise
    return obj


def counts(obj: BpfObject) -> tuple[int, int]:
    """(records written, records the buffer refused) since the feeder loaded."""
    fd = obj.map_fd("counts")
    out = []
    for i in (0, 1):
        k, v = ct.c_uint32(i), ct.c_uint64()
        obj.lib.lib.bpf_map_lookup_elem(fd, ct.byref(k), ct.byref(v))
        out.append(v.value)
    return out[0], out[1]


@contextmanager
def on_cpu(cpu: int) -> Iterator[int]:
    """Run on ``cpu`` meanwhile: ``tk_feed_perf`` writes into that CPU's perf ring."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, old)


def fill(obj: BpfObject, prog: str, events: int, cpu: int) -> None:
    """Write ``events`` records with ``prog`` from ``cpu``; every one must fit."""
    with on_cpu(cpu):
        _, refused0 = counts(obj)
        left = events
        while left > 0:
            obj.test_run(prog, min(left, RUN_MAX))
            left -= RUN_MAX
        _, refused1 = counts(obj)
        assert refused1 == refused0, "the buffer is too small for these events"
