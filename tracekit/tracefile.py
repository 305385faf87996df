"""The trace file: a versioned msgpack stream that replays anywhere.

Layout::

    MAGIC (8 bytes)
    record*            each a msgpack array [kind, crc32(body), body]

``body`` is itself msgpack. Kinds:

* ``HEADER`` (first): format version, tracekit version, probe, parameters, event
  schema (with default histograms), kernel release, CPU count, hostname, start time.
* ``BATCH``: a list of events, each an array in schema order (not a map: arrays are
  about 4x faster to decode and 2.3x smaller).
* ``LOST``: events lost per CPU, with the mechanism that lost them.
* ``SYMBOLS``: kernel addresses -> names (and stack ids -> addresses) that events
  refer to, written before the first batch that needs them, so replay never asks
  the machine it runs on.
* ``FOOTER`` (last): event totals, losses per CPU, duration, in-kernel counters.

Each record carries a CRC32 of its body, so a bit flip is reported as corruption
instead of replaying wrong numbers. Records are flushed one by one: a recording cut
short by a crash replays up to its last complete batch.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import msgpack

from tracekit.errors import TraceFileError, UsageError
from tracekit.session import LostReport, Session, Summary

MAGIC = b"\x89TKT\r\n\x1a\n"
FORMAT_VERSION = 1

HEADER, BATCH, LOST, SYMBOLS, FOOTER = 0, 1, 2, 3, 9
_KINDS = {HEADER, BATCH, LOST, SYMBOLS, FOOTER}

# Upper bounds on what a reader accepts, so a corrupt length field cannot make it
# allocate gigabytes. A batch is at most MAX_BATCH rows (the writer splits larger
# ones); 64 MiB leaves room for wide rows.
MAX_BATCH = 8192
MAX_RECORD = 64 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


class TraceWriter:
    """Writes one session to a file, record by record, flushing each."""

    def __init__(self, path: str, session: Session, force: bool = False) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        try:
            # Mode 0o666 filtered by the user's umask: traces carry addresses and host
            # names, so a restrictive umask must apply as it does to any other file.
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            raise UsageError(f"{path} exists; pass --force to overwrite it") from None
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None
        self._f: IO[bytes] = os.fdopen(fd, "wb")
        self._f.write(MAGIC)
        header = {"format": FORMAT_VERSION, **session.header()}
        self._write(HEADER, header)
        self._symbols_written = 0
        self._stacks_written = 0
        self.closed = False

    def _write(self, kind: int, payload: Any) -> None:
        body = _pack(payload)
        self._f.write(_pack([kind, zlib.crc32(body), body]))
        self._f.flush()

    def write_symbols(self, session: Session) -> None:
        """Write symbols and stacks the session learnt since the last call."""
        if (
            len(session.symbols) == self._symbols_written
            and len(session.stacks) == self._stacks_written
        ):
            return
        syms = dict(list(session.symbols.items())[self._symbols_written :])
        stacks = dict(list(session.stacks.items())[self._stacks_written :])
        self._write(SYMBOLS, {"symbols": syms, "stacks": stacks})
        self._symbols_written = len(session.symbols)
        self._stacks_written = len(session.stacks)

    def write_batch(self, rows: list[tuple[Any, ...]]) -> None:
        for i in range(0, len(rows), MAX_BATCH):
            self._write(BATCH, rows[i : i + MAX_BATCH])

    def write_lost(self, lost: LostReport) -> None:
        self._write(LOST, {"source": lost.source, "per_cpu": lost.per_cpu})

    def close(self, summary: Summary | None) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if summary is not None:
                self._write(FOOTER, summary.to_dict())
        finally:
            self._f.close()


@dataclass
class Record:
    kind: int
    payload: Any
    offset: int


class TraceReader:
    """Reads a trace file; ``session`` comes from the header, records stream after it.

    Raises ``TraceFileError`` (one line, naming the file) for anything that is not a
    tracekit trace or is corrupt. A file that simply ends early sets ``truncated``
    and ``truncated_at`` instead of raising.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._f: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise TraceFileError(f"cannot read {path}: {exc.strerror}") from None
        self.size = os.fstat(self._f.fileno()).st_size
        magic = self._f.read(len(MAGIC))
        if magic != MAGIC:
            self._f.close()
            raise TraceFileError(f"{path}: not a tracekit trace file")
        self._unpacker = msgpack.Unpacker(
            max_buffer_size=MAX_RECORD + 1024,
            max_bin_len=MAX_RECORD,
            max_array_len=3,
            max_map_len=0,
            max_str_len=0,
            max_ext_len=0,
        )
        self._offset = len(MAGIC)
        self._eof = False
        self.truncated = False
        self.truncated_at = 0
        self.footer: Summary | None = None
        first = self._next()
        if first is None or first.kind != HEADER:
            self._f.close()
            raise TraceFileError(f"{path}: no header: not a tracekit trace or cut short")
        header = first.payload
        if not isinstance(header, dict) or not isinstance(header.get("format"), int):
            self._f.close()
            raise TraceFileError(f"{path}: corrupt header")
        if header["format"] > FORMAT_VERSION:
            self._f.close()
            raise TraceFileError(
                f"{path}: format version {header['format']} is newer than this tracekit "
                f"reads ({FORMAT_VERSION}); upgrade tracekit"
            )
        self.header: dict[str, Any] = header
        try:
            self.session = Session.from_header(header)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._f.close()
            raise TraceFileError(f"{path}: corrupt header ({exc})") from None
        self._width = len(self.session.schema.fields)

    def _corrupt(self, why: str) -> TraceFileError:
        self._f.close()
        return TraceFileError(f"{self.path}: corrupt at byte {self._offset}: {why}")

    def _next(self) -> Record | None:
        """The next framed record, or None at the end (sets ``truncated`` if cut)."""
        while True:
            try:
                frame = self._unpacker.unpack()
                break
            except msgpack.OutOfData:
                if self._eof:
                    if self._unpacker.tell() + len(MAGIC) < self.size:
                        self.truncated = True
                        self.truncated_at = self._offset
                    return None
                chunk = self._f.read(_READ_CHUNK)
                if not chunk:
                    self._eof = True
                else:
                    self._unpacker.feed(chunk)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
                raise self._corrupt(f"bad framing ({type(exc).__name__})") from None
        start = self._offset
        self._offset = len(MAGIC) + self._unpacker.tell()
        if (
            not isinstance(frame, list)
            or len(frame) != 3
            or not isinstance(frame[0], int)
            or frame[0] not in _KINDS
            or not isinstance(frame[1], int)
            or not isinstance(frame[2], bytes)
        ):
            raise self._corrupt("not a record")
        kind, crc, body = frame
        if zlib.crc32(body) != crc:
            raise self._corrupt("checksum mismatch")
        try:
            payload = msgpack.unpackb(body, use_list=False, strict_map_key=False, raw=False)
        except Exception as exc:  # noqa: BLE001 - any decode failure is corruption
            raise self._corrupt(f"bad record body ({type(exc).__name__})") from None
        return Record(kind, payload, start)

    def records(self) -> Iterator[Record]:
        """Records after the header; BATCH payloads are tuples of row tuples."""
        try:
            while True:
                rec = self._next()
                if rec is None:
                    if self.footer is None and not self.truncated:
                        # Ends on a record boundary but never got its footer: the
                        # recorder died between two batches.
                        self.truncated = True
                        self.truncated_at = self._offset
                    return
                if rec.kind == BATCH:
                    rows = rec.payload
                    # Whole-batch checks at C speed: every row a tuple of schema width.
                    if not isinstance(rows, tuple) or (
                        rows
                        and (
                            set(map(type, rows)) != {tuple} or set(map(len, rows)) != {self._width}
                        )
                    ):
                        raise self._corrupt("batch does not match the schema")
                elif rec.kind == FOOTER:
                    try:
                        self.footer = Summary.from_dict(_to_dict(rec.payload))
                    except (TypeError, ValueError, AttributeError) as exc:
                        raise self._corrupt(f"bad footer ({exc})") from None
                elif rec.kind == HEADER:
                    raise self._corrupt("second header")
                yield rec
                if rec.kind == FOOTER:
                    return
        finally:
            self._f.close()

    def close(self) -> None:
        self._f.close()


def _to_dict(obj: Any) -> Any:
    """msgpack gives tuples for arrays (use_list=False); footers want plain dicts/lists."""
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [_to_dict(v) for v in obj]
    return obj


def read_symbols(payload: Any, session: Session) -> None:
    """Merge a SYMBOLS record into the session."""
    if not isinstance(payload, dict):
        raise TraceFileError("corrupt symbols record")
    for addr, name in dict(payload.get("symbols", {})).items():
        session.symbols[int(addr)] = str(name)
    for sid, addrs in dict(payload.get("stacks", {})).items():
        session.stacks[int(sid)] = [int(a) for a in addrs]


def read_lost(payload: Any) -> LostReport:
    if not isinstance(payload, dict):
        raise TraceFileError("corrupt lost-events record")
    return LostReport(
        source=str(payload.get("source", "?")),
        per_cpu={int(c): int(n) for c, n in dict(payload.get("per_cpu", {})).items()},
    )
