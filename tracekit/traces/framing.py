"""Records of a trace file split from its bytes, bodies left where they were read.

Every record is a msgpack array ``[kind, seq, crc, body]`` (format 2) or ``[kind,
crc, body]`` (format 1) whose body is a msgpack ``bin``. Unpacking those with
``msgpack.Unpacker`` copies each body twice (into the unpacker's buffer, then
into a ``bytes``) before the reader CRCs it; for packed batches that is most of
a replay's time. This framer reads the file into chunks it never reuses and
parses the common shape by hand (a fixarray, small integers, a ``bin``): the body
it returns is a ``memoryview`` of the chunk, the file's bytes copied once, by the
kernel's read. Whatever does not have that exact shape (and so anything a forged
file holds) goes through ``msgpack.Unpacker`` with the reader's limits, so the
two paths accept and refuse the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

# Bytes read at a time, and the smallest chunk: large reads are fewer system calls,
# and a chunk is freed (back to the allocator, which hands it out again) once no
# batch points into it.
CHUNK = 4 << 20
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
# The same as struct formats: (format, bytes).
_UINT_AT = {0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8)}
_BIN_AT = {0xC4: (">B", 1), 0xC5: (">H", 2), 0xC6: (">I", 4)}


class RecordTooLong(Exception):
    """Buffered bytes beyond the largest record still do not make one."""


class NotARecord(Exception):
    """A whole msgpack value where a record should start, but not an array (a nil,
    an integer, a map...): corruption, never the end of the records."""


class Framer:
    """``next()``: the next record as a list, or None at the end of the data.

    Only the end of the data is None: any other value where a record should start
    (msgpack's nil included) raises ``NotARecord``.
    """

    def __init__(
        self,
        read_into: Callable[[memoryview], int],
        size: int,
        max_record: int,
        limits: dict[str, int],
    ) -> None:
        """``size``: the bytes the file holds after what was read before."""
        self._read_into = read_into
        self._max_frame = max_record + 1024  # a body and its framing
        self._limits = limits
        self._buf: Any = memoryview(b"")
        self._pos = 0
        self._end = 0
        self.consumed = 0  # bytes of the records returned so far
        self.eof = False
        self._size = size
        self._cut = False

    @property
    def buffered(self) -> int:
        """Bytes read from the file and not yet returned as records."""
        return self._end - self._pos

    def next(self) -> Any:
        while True:
            got = self._fast()
            if got is not None:
                return got
            if self._cut:
                return None
            avail = self._end - self._pos
            if avail:
                up = msgpack.Unpacker(max_buffer_size=self._max_frame + CHUNK, **self._limits)
                up.feed(self._buf[self._pos : self._pos + min(avail, self._max_frame + 1)])
                try:
                    obj = up.unpack()
                except msgpack.OutOfData:
                    if avail > self._max_frame:
                        raise RecordTooLong from None
                else:
                    if type(obj) is not list:
                        raise NotARecord
                    self._take(up.tell())
                    return obj
            if self.eof:
                return None
            self._fill()

    def _take(self, n: int) -> None:
        self._pos += n
        self.consumed += n

    def _uint(self, b: Any, i: int, end: int) -> tuple[int, int] | None:
        """A msgpack unsigned integer at ``i``: (value, next index), or None."""
        if i >= end:
            return None
        t = b[i]
        if t < 0x80:
            return t, i + 1
        w = _UINT.get(t)
        if w is None or i + 1 + w > end:
            return None
        return int.from_bytes(b[i + 1 : i + 1 + w], "big"), i + 1 + w

    def _fast(self) -> list[Any] | None:
        """The record at the current position if it has the common shape and is
        whole in the buffer; None otherwise (nothing consumed)."""
        b, i, end = self._buf, self._pos, self._end
        if end - i < 4 or b[i] not in (0x93, 0x94) or b[i + 1] >= 0x80:
            return None
        out: list[Any] = [b[i + 1]]
        j = i + 2
        for _ in range(b[i] - 0x92):  # seq and crc (format 2), crc (format 1)
            got = self._uint(b, j, end)
            if got is None:
                return None
            out.append(got[0])
            j = got[1]
        if j >= end:
            return None
        w = _BIN.get(b[j])
        if w is None or j + 1 + w > end:
            return None
        n = int.from_bytes(b[j + 1 : j + 1 + w], "big")
        start = j + 1 + w
        if n > self._limits["max_bin_len"]:
            # Said by its header, no need to read it: too long if the file holds
            # that much, else a cut (a file that ends inside a record) or a lie
            # that cannot be told from one; either way nothing is allocated for it.
            if self.consumed + (start - i) + n <= self._size:
                raise RecordTooLong
            self._cut = True
            return None
        if start + n > end:
            return None
        out.append(b[start : start + n])
        self._take(start + n - i)
        return out

    def batch_run(
        self,
        kind: int,
        seq: int,
        crc_of: Callable[[int, int, Any], int],
        size: int,
        max_rows: int,
        max_bytes: int,
    ) -> tuple[list[Any], int]:
        """Consecutive format-2 records ``[kind, seq, crc, bin]`` whole in the buffer,
        each with the next sequence number from ``seq``, a matching CRC and a body of
        whole ``size``-byte records (at most ``max_rows`` of them): their bodies and
        the bytes they take, up to about ``max_bytes`` of bodies.

        One loop over the buffer, no objects per record but its body's view. The run
        stops before the first record that is not such a record (another kind, a
        cut, a bad CRC or number, an odd length): nothing of it is consumed, so the
        checked path (``next``) reads it and says what is wrong with it.
        """
        b, i, end = self._buf, self._pos, self._end
        bodies: list[Any] = []
        got = 0
        max_len = min(self._limits["max_bin_len"], max_rows * size)
        uint, unpack = _UINT_AT, struct.unpack_from
        while got < max_bytes and end - i >= 4 and b[i] == 0x94 and b[i + 1] == kind:
            j = i + 2
            t = b[j]
            if t < 0x80:
                s, j = t, j + 1
            else:
                fmt = uint.get(t)
                if fmt is None or j + fmt[1] >= end:
                    break
                s, j = unpack(fmt[0], b, j + 1)[0], j + 1 + fmt[1]
            if s != seq or j >= end:
                break
            t = b[j]
            if t < 0x80:
                crc, j = t, j + 1
            else:
                fmt = uint.get(t)
                if fmt is None or j + fmt[1] >= end:
                    break
                crc, j = unpack(fmt[0], b, j + 1)[0], j + 1 + fmt[1]
            if j >= end:
                break
            fmt = _BIN_AT.get(b[j])
            if fmt is None or j + fmt[1] >= end:
                break
            n = unpack(fmt[0], b, j + 1)[0]
            start = j + 1 + fmt[1]
            if n > max_len or n % size or start + n > end:
                break
            body = b[start : start + n]
            if crc_of(kind, seq, body) != crc:
                break
            bodies.append(body)
            got += n
            seq += 1
            i = start + n
        taken = i - self._pos
        self._take(taken)
        return bodies, taken

    def _fill(self) -> None:
        """Read more: after the data in this chunk if there is room, else into a new
        chunk that starts with the unread bytes (the old one is never written
        again: batches handed out may point into it)."""
        import numpy as np

        left = self._end - self._pos
        room = len(self._buf) - self._end
        if room < CHUNK // 4:
            new = memoryview(np.empty(left + CHUNK, dtype=np.uint8).data)
            new[:left] = self._buf[self._pos : self._end]
            self._buf, self._pos, self._end = new, 0, left
        n = self._read_into(self._buf[self._end :])
        if n:
            self._end += n
        else:
            self.eof = True
