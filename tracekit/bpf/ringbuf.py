"""A BPF ring buffer read straight from its mapped pages, a batch at a time.

The kernel lets user space map a ring buffer map (kernel/bpf/ringbuf.c): one
writable page holding the consumer position, then a read-only page holding the
producer position, then the data pages, mapped twice in a row so that a record
that wraps around the end reads as one contiguous run. Each record is an 8-byte
header (length, with a BUSY bit while its producer is still writing and a DISCARD
bit) and the data, padded to 8 bytes.

Reading the pages ourselves, instead of through a library callback, means no
foreign call per event: everything between the two positions is taken at once,
and the consumer position is written back once per batch.
"""

from __future__ import annotations

import mmap
import select
import struct
from typing import Any

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
# Records checked by one numpy call at most (bounds the work of a check that stops
# early: see drain).
MAX_WINDOW = 1 << 16
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


def batch_records(record: int) -> int:
    """Records one drain takes at most: about 2 MiB of them.

    Small enough that the copy and everything a sink does with it (CRC, write) stay
    in the CPU's cache, and that the allocator hands back the same memory each time:
    a 50 MB array per drain costs a page fault per 4 KiB before a byte is copied.
    """
    return max(1, (2 << 20) // record)


class RingBuffer:
    """The consumer side of one BPF ring buffer map (``fd``, ``size`` data bytes)."""

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size must be a power of two, not {size}")
        page = mmap.PAGESIZE
        self.size = size
        self.mask = size - 1
        self.fd = fd
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._producer = mmap.mmap(
            fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._view = memoryview(self._producer)
        self._data = page  # where the data pages start in the producer mapping
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def wait(self, timeout_ms: int) -> None:
        """Sleep until the kernel signals data (or the timeout): one syscall."""
        if self.pending():
            return
        self._poll.poll(timeout_ms)

    def pending(self) -> int:
        return int(_U64.unpack_from(self._producer, 0)[0] - _U64.unpack_from(self._consumer, 0)[0])

    def drain(self, record: int, limit: int = 0) -> Any:
        """Every complete record now in the buffer, as one uint8 array of packed
        ``record``-byte events (headers stripped), copied once out of the ring; the
        consumer position is advanced once.

        At most ``limit`` records are taken (default: ``batch_records``); the rest
        stay for the next call. Records of a tracekit probe are all ``record`` bytes (at a stride of
        ``HEADER + record`` rounded up to 8): the headers of a contiguous run are
        checked at once (a strided view, no copy) and the run is copied in one
        numpy assignment. Anything else (discarded, another size) is stepped over
        one record at a time; a record still being written (BUSY) ends the drain.
        """
        import numpy as np

        cons = _U64.unpack_from(self._consumer, 0)[0]
        prod = _U64.unpack_from(self._producer, 0)[0]
        stride = (HEADER + record + 7) & ~7
        prod = min(prod, cons + (limit or batch_records(record)) * stride)
        out = np.empty(max(0, prod - cons) // stride * record, dtype=np.uint8)
        if prod <= cons:
            return out
        view = self._view
        events = np.ndarray((len(out) // record,), dtype=f"V{record}", buffer=out)
        got, window = 0, MAX_WINDOW
        while cons < prod:
            start = self._data + (cons & self.mask)
            n = min(prod - cons, self.size, window * stride) // stride
            headers = np.ndarray((n,), dtype="<u4", buffer=view, offset=start, strides=(stride,))
            other = np.flatnonzero(headers != record)
            run = int(other[0]) if other.size else n
            if run:
                # The data pages are mapped twice in a row: a run never wraps.
                events[got : got + run] = np.ndarray(
                    (run,),
                    dtype=f"V{record}",
                    buffer=view,
                    offset=start + HEADER,
                    strides=(stride,),
                )
                got += run
                cons += run * stride
                window = min(MAX_WINDOW, window * 2)
                continue
            # One record by hand; the next check looks a short way ahead, so that
            # discarded records mixed in cannot make each check scan the whole ring.
            window = 64
            hdr = _U32.unpack_from(view, start)[0]
            if hdr & BUSY:
                break
            if hdr == record:
                # One of ours that no check covered (it reaches past the limit,
                # behind a record of another size): taken if there is room.
                if got == len(events):
                    break
                events[got] = np.ndarray(
                    (1,), dtype=f"V{record}", buffer=view, offset=start + HEADER
                )[0]
                got += 1
            length = hdr & ~(BUSY | DISCARD)
            cons += (HEADER + length + 7) & ~7
        # Written once, after the copy: the kernel may reuse the space from then on.
        self._consumer[0:8] = _U64.pack(cons)
        return out[: got * record]

    def drain_bytes(self, record: int, limit: int = 0) -> bytes:
        """What ``drain`` takes, as one bytes object, without numpy: a Python step per
        record. For the first events of a run only, while numpy is still being
        imported (tracekit.bpf.core): they go out without waiting for it."""
        cons = _U64.unpack_from(self._consumer, 0)[0]
        prod = _U64.unpack_from(self._producer, 0)[0]
        limit = limit or batch_records(record)
        view = self._view
        parts: list[bytes] = []
        while cons < prod and len(parts) < limit:
            start = self._data + (cons & self.mask)
            hdr = _U32.unpack_from(view, start)[0]
            if hdr & BUSY:
                break
            if hdr == record:
                parts.append(bytes(view[start + HEADER : start + HEADER + record]))
            cons += (HEADER + (hdr & ~(BUSY | DISCARD)) + 7) & ~7
        self._consumer[0:8] = _U64.pack(cons)
        return b"".join(parts)

    def close(self) -> None:
        self._view.release()
        self._producer.close()
        self._consumer.close()
