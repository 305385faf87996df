"""BPF perf buffers read straight from their mapped pages, a batch at a time.

The perf buffer (kernels before 5.8, or ``--output perf``) is one ring per CPU: a
``perf_event_open`` event of type ``PERF_COUNT_SW_BPF_OUTPUT`` whose fd sits in the
program's ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` at the CPU's index. Each ring is a
control page (``data_head`` written by the kernel, ``data_tail`` by us) followed
by a power-of-two data area that is mapped once (unlike the BPF ring buffer, a
record may wrap around its end). A program's ``bpf_perf_event_output`` writes a
``PERF_RECORD_SAMPLE``: the 8-byte ``perf_event_header`` (type, misc, size), a
u32 raw size, then the event, padded so the record is a multiple of 8 bytes; an
overrun writes one ``PERF_RECORD_LOST`` (header, id, count) before the next
sample that fits.

As for the ring buffer (tracekit.bpf.ringbuf), all fixed-size samples between the two
positions are checked and copied with numpy a contiguous run at a time, and the
tail is written once per drain: no Python step, and no foreign call, per event.

Ordering: the head is read before the samples it covers and the tail written after
they were copied, which x86's memory ordering keeps as written; a weakly ordered
CPU (arm64) would want the barriers the kernel pairs with (smp_rmb/smp_mb), which
Python cannot issue (tracekit.bpf.ringbuf has the same limit).
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import functools
import mmap
import os
import platform
import select
import struct
from collections.abc import Callable
from typing import Any

from tracekit.bpf.ringbuf import batch_records

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5: every field we set is in it
# Where the kernel keeps the positions in the control page (struct perf_event_mmap_page).
_HEAD, _TAIL = 1024, 1032
_SYSCALL = {"x86_64": 298, "aarch64": 241, "armv7l": 364, "ppc64le": 319, "s390x": 331}
_NOT_MISC = 0xFFFF_0000_FFFF_FFFF  # a perf_event_header as u64, less its misc bits
# Records checked by one numpy call at most (bounds the work of a check that stops
# early: see drain_into).
MAX_WINDOW = 1 << 16
_U64 = struct.Struct("=Q")
_HDR = struct.Struct("=IHH")


def sample_stride(size: int) -> int:
    """Bytes one sample of a ``size``-byte event takes in a perf ring.

    The kernel pads the raw data (u32 size + event) to 8 bytes (perf_prepare_sample).
    """
    return 8 + ((4 + size + 7) & ~7)


class PerfBufferError(OSError):
    pass


def _attr(wakeup_events: int) -> bytes:
    a = bytearray(_ATTR_SIZE)
    # type, size, config, sample_period, sample_type
    struct.pack_into(
        "=IIQQQ", a, 0, PERF_TYPE_SOFTWARE, _ATTR_SIZE, PERF_COUNT_SW_BPF_OUTPUT, 1, PERF_SAMPLE_RAW
    )
    # wakeup_events (offset 48, after read_format and the flag bits): wake the reader
    # every this many samples, not every sample (a wakeup costs more than the sample).
    struct.pack_into("=I", a, 48, max(1, wakeup_events))
    return bytes(a)


class _Libc:
    """libc's syscall() and ioctl(), loaded once (see _libc)."""

    def __init__(self) -> None:
        # By soname: ctypes.util.find_library would run ldconfig (a fork per run).
        try:
            libc = ct.CDLL("libc.so.6", use_errno=True)
        except OSError:
            libc = ct.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.syscall = libc.syscall
        self.syscall.restype = ct.c_long
        self.ioctl = libc.ioctl
        self.ioctl.restype = ct.c_int
        self.ioctl.argtypes = [ct.c_int, ct.c_ulong, ct.c_ulong]


@functools.lru_cache(maxsize=1)
def _libc() -> _Libc:
    return _Libc()


def perf_event_open(cpu: int, wakeup_events: int) -> int:
    """A BPF-output perf event on ``cpu`` (any process), disabled until enabled."""
    nr = _SYSCALL.get(platform.machine())
    if nr is None:
        raise PerfBufferError(0, f"perf_event_open: unknown syscall number on {platform.machine()}")
    libc = _libc()
    attr = ct.create_string_buffer(_attr(wakeup_events), _ATTR_SIZE)
    fd = libc.syscall(
        ct.c_long(nr),
        attr,
        ct.c_int(-1),
        ct.c_int(cpu),
        ct.c_int(-1),
        ct.c_ulong(PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        err = ct.get_errno()
        raise PerfBufferError(err, f"perf_event_open on CPU {cpu}: {os.strerror(err)}")
    return int(fd)


class PerfRing:
    """One CPU's perf ring: ``pages`` data pages (a power of two) behind a control page."""

    def __init__(self, cpu: int, pages: int, wakeup_events: int) -> None:
        if pages <= 0 or pages & (pages - 1):
            raise ValueError(f"perf buffer pages must be a power of two, not {pages}")
        self.cpu = cpu
        page = mmap.PAGESIZE
        self.size = pages * page
        self.mask = self.size - 1
        self.fd = perf_event_open(cpu, wakeup_events)
        try:
            self._map = mmap.mmap(
                self.fd, page + self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            os.close(self.fd)
            raise PerfBufferError(
                exc.errno, f"perf buffer of {pages} pages on CPU {cpu}: {exc.strerror}"
            ) from None
        self._view = memoryview(self._map)
        self._data = page
        self.lost = 0  # PERF_RECORD_LOST totals: the kernel's own count of overruns

    def enable(self) -> None:
        if _libc().ioctl(self.fd, PERF_EVENT_IOC_ENABLE, 0) != 0:
            err = ct.get_errno()
            raise PerfBufferError(
                err, f"enabling the perf event on CPU {self.cpu}: {os.strerror(err)}"
            )

    def head(self) -> int:
        return int(_U64.unpack_from(self._map, _HEAD)[0])

    def tail(self) -> int:
        return int(_U64.unpack_from(self._map, _TAIL)[0])

    def pending(self) -> int:
        return self.head() - self.tail()

    def drain_into(self, out: Any, at: int, size: int, stride: int, head: int) -> int:
        """Copy the complete ``size``-byte samples before ``head`` (a position read
        earlier) into records ``at``... of ``out`` (a uint8 array of whole records,
        with room for ``(head - tail) // stride`` of them); returns how many were
        copied. Advances the tail once.
        """
        import numpy as np

        tail = _U64.unpack_from(self._map, _TAIL)[0]
        view, base, ring = self._view, self._data, self.size
        events = np.ndarray((len(out) // size,), dtype=f"V{size}", buffer=out)
        want = PERF_RECORD_SAMPLE | (stride << 48)
        got, window = 0, MAX_WINDOW
        while tail < head:
            off = tail & self.mask
            # Whole samples before the end of the data area, checked in one go: each
            # header's type and size (misc, the middle 16 bits, says kernel or user).
            n = min(head - tail, ring - off, window * stride) // stride
            if n:
                hdrs = np.ndarray(
                    (n,), dtype="<u8", buffer=view, offset=base + off, strides=(stride,)
                )
                bad = np.flatnonzero((hdrs & _NOT_MISC) != want)
                run = int(bad[0]) if bad.size else n
                if run:
                    events[at + got : at + got + run] = np.ndarray(
                        (run,),
                        dtype=f"V{size}",
                        buffer=view,
                        offset=base + off + 12,
                        strides=(stride,),
                    )
                    got += run
                    tail += run * stride
                    window = min(MAX_WINDOW, window * 2)
                    continue
            # One record by hand: a LOST record, or a sample across the end. The next
            # check looks a short way ahead, so that records of other kinds mixed in
            # cannot make each check scan the whole ring again.
            window = 64
            first = bytes(view[base + off : base + min(off + 8, ring)])
            if len(first) < 8:
                first += bytes(view[base : base + 8 - len(first)])
            kind, _misc, length = _HDR.unpack(first)
            if length < 8 or length > head - tail:
                break  # not written whole yet (cannot happen: head moves after the record)
            if kind == PERF_RECORD_LOST:
                rec = self._read(off, length)
                self.lost += _U64.unpack_from(rec, 16)[0]
            elif kind == PERF_RECORD_SAMPLE and length == stride:
                rec = self._read(off, length)
                events[at + got] = np.frombuffer(rec, dtype=f"V{size}", count=1, offset=12)[0]
                got += 1
            tail += length
        # The kernel reads the tail to know what it may overwrite: written once.
        self._map[_TAIL : _TAIL + 8] = _U64.pack(tail)
        return got

    def _read(self, off: int, length: int) -> bytes:
        base, view = self._data, self._view
        end = off + length
        if end <= self.size:
            return bytes(view[base + off : base + end])
        head = bytes(view[base + off : base + self.size])
        return head + bytes(view[base : base + end - self.size])

    def close(self) -> None:
        _libc().ioctl(self.fd, PERF_EVENT_IOC_DISABLE, 0)
        self._view.release()
        self._map.close()
        os.close(self.fd)


class PerfBuffer:
    """Per-CPU perf rings for one ``PERF_EVENT_ARRAY`` map, drained together.

    ``set_cpu(cpu, fd)`` puts a ring's perf event into the map at the CPU's index
    (through libbpf for the CO-RE loader, through BCC's table for BCC's).
    """

    def __init__(
        self,
        set_cpu: Callable[[int, int], None],
        cpus: list[int],
        pages: int,
        wakeup_events: int = 64,
    ) -> None:
        self.rings: list[PerfRing] = []
        self._next = 0
        self._poll = select.poll()
        try:
            for cpu in cpus:
                ring = PerfRing(cpu, pages, wakeup_events)
                self.rings.append(ring)
                set_cpu(cpu, ring.fd)
                ring.enable()
                self._poll.register(ring.fd, select.POLLIN)
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_map(
        cls, lib: Any, map_fd: int, cpus: list[int], pages: int, wakeup_events: int = 64
    ) -> PerfBuffer:
        """Rings for the map ``map_fd``, set with libbpf (``tracekit.bpf.libbpf``)."""

        def set_cpu(cpu: int, fd: int) -> None:
            key, val = ct.c_uint32(cpu), ct.c_uint32(fd)
            with lib.call(f"perf buffer on CPU {cpu}"):
                lib.check_rc(
                    lib.lib.bpf_map_update_elem(map_fd, ct.byref(key), ct.byref(val), 0),
                    "map update",
                )

        return cls(set_cpu, cpus, pages, wakeup_events)

    def pending(self) -> int:
        return sum(r.pending() for r in self.rings)

    def wait(self, timeout_ms: int) -> None:
        if self.pending():
            return
        self._poll.poll(timeout_ms)

    def lost(self) -> dict[int, int]:
        """PERF_RECORD_LOST totals per CPU since the buffer opened (or reset_lost)."""
        return {r.cpu: r.lost for r in self.rings}

    def reset_lost(self) -> None:
        for r in self.rings:
            r.lost = 0

    def drain(self, size: int, limit: int = 0) -> Any:
        """Complete samples of every CPU, at most ``limit`` (default: as many as
        ``tracekit.bpf.ringbuf.batch_records``), as one uint8 array of ``size``-byte
        records (CPU by CPU, each in order), copied once out of the rings. The CPU
        read first turns round from one call to the next, so none waits behind
        the others."""
        import numpy as np

        stride = sample_stride(size)
        left = limit or batch_records(size)
        # Each ring's head is read once, capped to what this call takes, so the
        # output is sized before the copy.
        k = self._next % max(1, len(self.rings))
        self._next += 1
        order = self.rings[k:] + self.rings[:k]
        heads = []
        for r in order:
            tail = r.tail()
            head = min(r.head(), tail + left * stride)
            heads.append(head)
            left -= (head - tail) // stride
        room = sum((h - r.tail()) // stride for r, h in zip(order, heads, strict=True))
        out = np.empty(room * size, dtype=np.uint8)
        got = 0
        for ring, head in zip(order, heads, strict=True):
            got += ring.drain_into(out, got, size, stride, head)
        return out[: got * size]

    def close(self) -> None:
        for r in self.rings:
            r.close()
        self.rings.clear()
