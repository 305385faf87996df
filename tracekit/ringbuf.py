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
from collections.abc import Callable
from typing import Any

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


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

    def drain(self, decode: Callable[[memoryview, int], Any], record: int) -> list[Any]:
        """Decode every complete record now in the buffer; advance the consumer once.

        ``record`` is the size of the fixed event struct; ``decode(run, n)`` turns a
        run of ``n`` records laid out at a stride of ``HEADER + record`` (rounded up
        to 8) into one batch, copying it out of the buffer. A record still being
        written stops the batch there. Returns the batches.
        """
        import numpy as np

        cons = _U64.unpack_from(self._consumer, 0)[0]
        prod = _U64.unpack_from(self._producer, 0)[0]
        if prod <= cons:
            return []
        stride = (HEADER + record + 7) & ~7
        view = self._view
        out: list[Any] = []
        while cons < prod:
            start = self._data + (cons & self.mask)
            n = min(prod - cons, self.size) // stride
            # Records of a tracekit probe are all `record` bytes: the headers of a
            # run are checked at once (a strided view, no copy), and the run is
            # decoded in one call. Anything else (busy, discarded, another size)
            # is handled one record at a time below.
            headers = np.ndarray((n,), dtype="<u4", buffer=view, offset=start, strides=(stride,))
            other = np.flatnonzero(headers != record)
            run = int(other[0]) if other.size else n
            if run:
                out.append(decode(view[start : start + run * stride], run))
                cons += run * stride
                continue
            hdr = _U32.unpack_from(view, start)[0]
            if hdr & BUSY:
                break
            length = hdr & ~(BUSY | DISCARD)
            cons += (HEADER + length + 7) & ~7
        self._consumer[0:8] = _U64.pack(cons)
        return out

    def close(self) -> None:
        self._view.release()
        self._producer.close()
        self._consumer.close()
