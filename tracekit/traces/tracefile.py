"""The trace file: a versioned msgpack stream that replays anywhere.

Layout (format 2; docs/trace-format.md specifies it field by field)::

    MAGIC (8 bytes)
    record*            each a msgpack array [kind, seq, crc32(kind, seq, body), body]

``body`` is itself msgpack. Kinds:

* ``HEADER`` (first): format version, tracekit version, probe, parameters, event
  schema (with default histograms), kernel release, CPU count, hostname, start time.
* ``BATCH``: a list of events, each an array in schema order (not a map: arrays are
  about 4x faster to decode and 2.3x smaller).
* ``LOST``: events lost per CPU, with the mechanism that lost them.
* ``SYMBOLS``: kernel addresses -> names (and stack ids -> addresses) that events
  refer to, written before the first batch that needs them, so replay never asks
  the machine it runs on.
* ``FOOTER`` (last): event totals, losses per CPU, duration, in-kernel counters, and
  the writer's own count of the records, batches and rows it wrote.

The CRC covers the kind and the sequence number as well as the body, so one changed
byte cannot turn a record into another kind; ``seq`` counts records from 0 (the
header), so a missing, repeated or reordered record is detected; the footer's counts
are checked against what was read, and nothing may follow it. Records are flushed
one by one: a recording cut short by a crash or a full disk replays up to its last
complete batch.

Format 1 (``[kind, crc32(body), body]``, no sequence numbers, no counts in the
footer) is still read; what it cannot detect is listed in ``FORMAT_1_WEAKNESSES``.
Every payload of either format is checked by ``tracekit.traces.checks`` before use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import msgpack

try:  # ISA-L's CRC-32 (the same function as zlib's) runs 4-5x faster than zlib 1.2's
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib still reads every file
    from zlib import crc32 as _crc32

from tracekit.base import trust
from tracekit.base.errors import TraceFileError, TracekitError
from tracekit.base.session import EventBatch, LostReport, Session, Summary
from tracekit.base.text import printable
from tracekit.traces.checks import (
    Invalid,
    RowCheck,
    check_footer,
    check_header,
    check_lost,
    check_symbols,
)
from tracekit.traces.framing import Framer, NotARecord, RecordTooLong

MAGIC = b"\x89TKT\r\n\x1a\n"
FORMAT_VERSION = 2

HEADER, BATCH, LOST, SYMBOLS, FOOTER = 0, 1, 2, 3, 9
_KINDS = {HEADER, BATCH, LOST, SYMBOLS, FOOTER}
_KIND_NAMES = {
    HEADER: "header",
    BATCH: "batch",
    LOST: "lost-events",
    SYMBOLS: "symbols",
    FOOTER: "footer",
}

FORMAT_1_WEAKNESSES = (
    "format 1: the record kind is outside the CRC and records are not numbered, so a "
    "changed kind, reordered batches, a missing lost-events or symbols record, or data "
    "after the footer may go undetected; a missing or repeated batch shows only "
    "against the footer's event total"
)

# Upper bounds on what a reader accepts, so that neither a corrupt length field nor
# a forged but well-formed record can make it allocate much more than the file's
# size. A batch is at most MAX_BATCH rows and a record at most MAX_RECORD bytes (the
# writer splits larger ones). A decoded record takes up to about 30 times its size
# in Python objects (a 3-byte string becomes a 51-byte str, its pointer, and its
# share of the row tuples), so 4 MiB keeps one record near 120 MB; 8,192 rows of 512
# bytes still fit, and rss-cpu's largest footer (16,384 aggregated flows) is ~1 MB.
MAX_BATCH = 8192
MAX_RECORD = 4 * 1024 * 1024
_MAX_BODY = MAX_RECORD - 64  # room for the framing around a body
# Totals over a whole file: symbols and stacks are kept for the whole replay.
MAX_SYMBOLS = 1 << 20
MAX_STACKS = 1 << 16
_MAX_SEQ = (1 << 63) - 1
# Bytes of consecutive batch records the reader joins into one batch (TraceReader._run).
RUN_BYTES = 4 << 20


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _crc(kind: int, seq: int, body: bytes | memoryview) -> int:
    return _crc32(body, _crc32(struct.pack("<BQ", kind, seq)))


def _batch_head(seq: int, crc: int, n: int) -> bytes:
    """The msgpack bytes of ``[BATCH, seq, crc, <bin of n bytes>]`` before the body:
    what ``_pack`` would write, so the body can be written from where it is."""
    if n < 1 << 8:
        bin_head = b"\xc4" + n.to_bytes(1, "big")
    elif n < 1 << 16:
        bin_head = b"\xc5" + n.to_bytes(2, "big")
    else:
        bin_head = b"\xc6" + n.to_bytes(4, "big")
    return b"\x94" + _pack(BATCH) + _pack(seq) + _pack(crc) + bin_head


class TraceWriteError(TracekitError):
    """Writing the trace failed (disk full, I/O error): one line, the file stays readable."""

    exit_code = 10


class TraceWriter:
    """Writes one session to a file, record by record, flushing each."""

    def __init__(
        self, path: str, session: Session, force: bool = False, mode: int = trust.DEFAULT_MODE
    ) -> None:
        self.path = path
        # A new file, mode 0600 unless asked (traces carry kernel addresses and host
        # names), made with O_EXCL | O_NOFOLLOW; with force an existing regular file
        # is replaced by a new one renamed over it, never truncated, and a link,
        # device or FIFO at the name is refused (tracekit.base.trust.create_output).
        fd = trust.create_output(path, mode=mode, replace=force)
        self._f: IO[bytes] = os.fdopen(fd, "wb")
        self._session = session
        self._seq = 0
        self.batches = 0
        self.rows = 0
        self._names_written = (0, 0)  # KernelNames.mark() after the last SYMBOLS record
        self.closed = False
        self.failed = False
        self._raw(MAGIC)
        header = {"format": FORMAT_VERSION, **session.header()}
        self._write(HEADER, header)

    def _raw(self, *data: bytes | memoryview) -> None:
        if self.failed:
            return
        try:
            # A body larger than the file's buffer goes to the kernel from where it
            # is (BufferedWriter writes it directly): no copy of the events here.
            for d in data:
                self._f.write(d)
            self._f.flush()
        except OSError as exc:
            # A full disk leaves at most one partial record at the end, which the
            # reader treats as a cut: the file replays up to its last complete batch.
            self.failed = True
            raise TraceWriteError(
                f"cannot write {self.path}: {exc.strerror or exc}; the recording stops "
                f"there and replays up to its last complete batch ({self.rows} events)"
            ) from None

    def _write(self, kind: int, payload: Any) -> None:
        body = _pack(payload)
        if len(body) > _MAX_BODY:
            # Readers refuse it; better one clear line now than an unreadable file.
            # (Batches and symbols are split below; a header or footer this large
            # would take a schema or an in-kernel aggregate far beyond any probe's.)
            self.failed = True
            raise TraceWriteError(
                f"cannot write {self.path}: a {_KIND_NAMES[kind]} record of {len(body)} "
                f"bytes exceeds the {MAX_RECORD // 2**20} MiB limit; the file replays up "
                f"to its last complete batch ({self.rows} events)"
            )
        self._raw(_pack([kind, self._seq, _crc(kind, self._seq, body), body]))
        self._seq += 1

    def write_symbols(self, session: Session) -> None:
        """Write symbols and stacks the session learnt since the last call."""
        syms, stacks = session.names.added_since(self._names_written)
        if not syms and not stacks:
            return
        step = 20_000
        for i in range(0, max(len(syms), len(stacks)), step):
            self._write_symbols(syms[i : i + step], stacks[i : i + step])
        self._names_written = session.names.mark()

    def _write_symbols(self, syms: list[tuple[int, str]], stacks: list[tuple[int, Any]]) -> None:
        payload = {"symbols": dict(syms), "stacks": dict(stacks)}
        if len(syms) + len(stacks) > 1 and len(_pack(payload)) > _MAX_BODY:
            # Long names or deep stacks: halve until each record fits.
            hs, ht = (len(syms) + 1) // 2, (len(stacks) + 1) // 2
            self._write_symbols(syms[:hs], stacks[:ht])
            self._write_symbols(syms[hs:], stacks[ht:])
            return
        self._write(SYMBOLS, payload)

    def write_batch(self, batch: list[tuple[Any, ...]] | EventBatch) -> None:
        """Write events as BATCH records of packed records (rows are packed first).

        The records go from the batch's own memory to the file: each BATCH record's
        framing is built by hand and written before its body, so the body is never
        copied in user space (it is CRC'd in place).
        """
        if not isinstance(batch, EventBatch):
            batch = EventBatch(self._session.probe, batch, schema=self._session.schema)
        if not len(batch):
            return
        size = self._session.schema.size
        # At most MAX_BATCH records and _MAX_BODY bytes each; a record is at most
        # MAX_FIELDS x MAX_STR_WIDTH = 1 MiB, so at least one always fits.
        step = max(1, min(MAX_BATCH, _MAX_BODY // size)) * size
        for part in batch.chunks():
            data = memoryview(part.view("u1"))  # bytes, not records
            for i in range(0, len(data), step):
                body = data[i : i + step]
                crc = _crc(BATCH, self._seq, body)
                self._raw(_batch_head(self._seq, crc, len(body)), body)
                self._seq += 1
                self.batches += 1
                self.rows += len(body) // size

    def write_lost(self, lost: LostReport) -> None:
        self._write(LOST, {"source": lost.source, "per_cpu": lost.per_cpu})

    def close(self, summary: Summary | None) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if summary is not None and not self.failed:
                footer = summary.to_dict()
                footer["written"] = {
                    "records": self._seq,
                    "batches": self.batches,
                    "rows": self.rows,
                }
                self._write(FOOTER, footer)
        finally:
            # A failure was reported by _raw already; closing cannot lose more.
            with contextlib.suppress(OSError):
                self._f.close()


@dataclass
class Record:
    kind: int
    payload: Any
    offset: int


def _open_regular(path: str) -> IO[bytes]:
    """Open ``path`` for reading without ever blocking; refuse non-regular files.

    A FIFO with no writer would block ``open()`` forever and a device may never end;
    O_NONBLOCK makes the open return at once so fstat can refuse them.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise TraceFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise TraceFileError(f"cannot read {path}: {what}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


class TraceReader:
    """Reads a trace file; ``session`` comes from the header, records stream after it.

    Raises ``TraceFileError`` (one line, naming the file, the record and the field)
    for anything that is not a tracekit trace or is corrupt. A file that simply ends
    early sets ``truncated`` and ``truncated_at`` instead of raising. BATCH payloads
    are checked against the schema; SYMBOLS payloads become ``(symbols, stacks)``,
    LOST payloads ``LostReport`` and the footer ``footer``. A record's ``payload`` is
    valid until the next record is read (keep the payload, not the record).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._shown = printable(path)
        self._f = _open_regular(path)
        try:
            self._start()
        except BaseException:
            self._f.close()
            raise

    def _start(self) -> None:
        self.size = os.fstat(self._f.fileno()).st_size
        magic = self._read(len(MAGIC))
        if magic != MAGIC:
            raise TraceFileError(f"{self._shown}: not a tracekit trace file")
        self._framer = Framer(
            self._read_into,
            self.size - len(MAGIC),
            MAX_RECORD,
            {
                "max_bin_len": MAX_RECORD,
                "max_array_len": 4,
                "max_map_len": 0,
                "max_str_len": 0,
                "max_ext_len": 0,
            },
        )
        self._offset = len(MAGIC)
        self._seq = 0
        self.format = FORMAT_VERSION  # until the first record's framing says otherwise
        self.truncated = False
        self.truncated_at = 0
        self.footer: Summary | None = None
        self.batches = 0
        self.rows = 0
        self.trailing = 0
        first = self._next()
        if first is None or first.kind != HEADER:
            raise TraceFileError(f"{self._shown}: no header: not a tracekit trace or cut short")
        raw = first.payload
        if type(raw) is dict and type(raw.get("format")) is int:
            if raw["format"] > FORMAT_VERSION:
                raise TraceFileError(
                    f"{self._shown}: format version {raw['format']} is newer than this "
                    f"tracekit reads ({FORMAT_VERSION}); upgrade tracekit"
                )
            if raw["format"] != self.format:
                raise self._corrupt(
                    f"header says format {raw['format']} but records are framed as "
                    f"format {self.format}",
                    first.offset,
                )
        try:
            header = check_header(raw, FORMAT_VERSION)
        except Invalid as exc:
            raise self._corrupt(f"bad header: {exc}", first.offset) from None
        # The checked header, as plain data (the schema as a dict, as in the file).
        self.header: dict[str, Any] = {**header, "schema": header["schema"].to_dict()}
        self.session = Session(
            probe=header["probe"],
            schema=header["schema"],
            params=header["params"],
            mode="replay",
            kernel=header["kernel"],
            ncpus=header["ncpus"],
            hostname=header["hostname"],
            start_time=header["start_time"],
            monotonic_ns=header["monotonic_ns"],
            tracekit_version=header["tracekit_version"],
            sample_every=header["sample_every"],
            aggregated=tuple(header["aggregated"]),
            metadata=header["metadata"],
            # Until read (``find_streamed``): an older trace's header does not say.
            streamed=header["streamed"] if header["streamed"] is not None else True,
        )
        # Whether the header said if events were streamed (traces from 0.2 on do).
        self.streamed_known = header["streamed"] is not None
        self._rows = RowCheck(self.session.schema)
        self._record_size = self.session.schema.size
        self.progress: Any = None  # see records()

    @property
    def weaknesses(self) -> str | None:
        """What this file's format cannot detect, or None."""
        return FORMAT_1_WEAKNESSES if self.format == 1 else None

    def _read(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except OSError as exc:
            # /proc/self/mem gives EIO; a failing disk too.
            raise TraceFileError(
                f"cannot read {self._shown}: {exc.strerror or errno.errorcode.get(exc.errno or 0)}"
            ) from None

    def _read_into(self, buf: memoryview) -> int:
        try:
            return self._f.readinto(buf)  # type: ignore[attr-defined,no-any-return]
        except OSError as exc:
            raise TraceFileError(
                f"cannot read {self._shown}: {exc.strerror or errno.errorcode.get(exc.errno or 0)}"
            ) from None

    def _corrupt(self, why: str, at: int | None = None) -> TraceFileError:
        self._f.close()
        where = self._offset if at is None else at
        return TraceFileError(f"{self._shown}: corrupt at byte {where}: {printable(why)}")

    def _frame(self) -> Any:
        try:
            return self._framer.next()
        except NotARecord:
            # A nil (or any value) is not the end of the file: records may follow.
            raise self._corrupt("not a record") from None
        except RecordTooLong:
            raise self._corrupt(
                f"a record longer than the {MAX_RECORD // 2**20} MiB limit"
            ) from None
        except (
            ValueError,
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
            msgpack.BufferFull,
        ) as exc:
            raise self._corrupt(f"bad framing ({type(exc).__name__})") from None

    def _next(self, decode_batches: bool = True) -> Record | None:
        """The next framed record, or None at the end (sets ``truncated`` if cut).

        Without ``decode_batches`` a format-1 BATCH payload is its row count
        (``_Rows``), read from the msgpack array header, and the body is not decoded
        (see ``verify``).
        """
        frame = self._frame()
        if frame is None:
            if self._framer.consumed + len(MAGIC) < self.size:
                self.truncated = True
                self.truncated_at = self._offset
            return None
        start = self._offset
        self._offset = len(MAGIC) + self._framer.consumed
        if type(frame) is not list or len(frame) not in (3, 4):
            raise self._corrupt("not a record", start)
        if start == len(MAGIC):
            # The first record's framing says which format the file is.
            self.format = 1 if len(frame) == 3 else 2
        if len(frame) != (3 if self.format == 1 else 4):
            raise self._corrupt("record framed for another format version", start)
        if self.format == 1:
            kind, crc, body = frame
            seq = self._seq
        else:
            kind, seq, crc, body = frame
        if (
            type(kind) is not int
            or kind not in _KINDS
            or type(seq) is not int
            or not 0 <= seq <= _MAX_SEQ
            or type(crc) is not int
            or type(body) not in (bytes, memoryview)
        ):
            raise self._corrupt("not a record", start)
        ok = _crc32(body) == crc if self.format == 1 else _crc(kind, seq, body) == crc
        if not ok:
            raise self._corrupt("checksum mismatch", start)
        if seq != self._seq:
            how = "repeated or out of order" if seq < self._seq else "missing before it"
            raise self._corrupt(
                f"{_KIND_NAMES[kind]} record {seq} where record {self._seq} was due "
                f"(records {how})",
                start,
            )
        self._seq += 1
        if kind == BATCH and self.format >= 2:
            # Packed records: nothing to decode (see _check); the bytes are the batch.
            return Record(kind, body if decode_batches else _Count(body), start)
        if kind == BATCH and not decode_batches:
            return Record(kind, _Rows(_array_len(body)), start)
        try:
            payload = msgpack.unpackb(body, use_list=False, strict_map_key=False, raw=False)
        except Exception as exc:  # noqa: BLE001 - any decode failure is corruption
            raise self._corrupt(
                f"bad {_KIND_NAMES[kind]} record body ({type(exc).__name__})", start
            ) from None
        return Record(kind, payload, start)

    def _run(self, decode_batches: bool) -> Record | None:
        """Consecutive format-2 BATCH records as one batch, or None (none whole in the
        buffer, or the next record is another kind or fails a check: ``_next`` reads it
        then, and says what is wrong).

        Live runs write small batches (tens of events a record); reading each as its
        own record costs more Python than its events cost numpy. Each record of a run
        is still checked as ``_next`` and ``_check`` would: its sequence number, its
        CRC, a whole number of records, at most MAX_BATCH rows. The bodies are joined
        with one copy (``bytes.join``), not viewed one by one.
        """
        if self.format < 2 or self._seq == 0:
            return None
        size = self._record_size
        bodies, _ = self._framer.batch_run(BATCH, self._seq, _crc, size, MAX_BATCH, RUN_BYTES)
        if not bodies:
            return None
        start = self._offset
        self._offset = len(MAGIC) + self._framer.consumed
        self._seq += len(bodies)
        self.batches += len(bodies)
        if not decode_batches:  # verify(): counted, not joined
            self.rows += sum(map(len, bodies)) // size
            return Record(BATCH, _Count(b""), start)
        data: bytes | memoryview = bodies[0] if len(bodies) == 1 else b"".join(bodies)
        self.rows += len(data) // size
        session = self.session
        return Record(BATCH, EventBatch.from_records(session.probe, session.schema, data), start)

    def verify(self) -> None:
        """Read the whole file once without yielding, raising for any corruption.

        Replay calls this before any sink starts, so a damaged file (a flipped bit,
        a dropped, repeated or reordered record, a relabelled kind, a footer whose
        counts disagree, data after the footer) is one line and status 2 with nothing
        printed before it. Batch bodies are only CRC-checked and counted here (their
        rows are checked, column by column, when ``records`` yields them): decoding
        every batch twice would halve replay speed. So the one thing found only
        during replay is a batch whose CRC is valid but whose values are not, which
        takes a deliberately forged file; replay then stops there with one line.
        """
        for _ in self.records(decode_batches=False):
            pass

    def records(self, decode_batches: bool = True) -> Iterator[Record]:
        """Records after the header, each checked; see the class docstring.

        ``progress``, if set (a ``tracekit.traces.progress.Progress``), is told the
        bytes read as records are yielded, and closed at the end."""
        session = self.session
        progress = self.progress
        try:
            while True:
                if progress is not None:
                    progress.update(self._offset)
                rec = self._run(decode_batches)
                if rec is not None:
                    yield rec  # checked record by record by the framer's run
                    rec.payload = None
                    del rec
                    continue
                rec = self._next(decode_batches)
                if rec is None:
                    if self.footer is None and not self.truncated:
                        # Ends on a record boundary but never got its footer: the
                        # recorder died between two batches.
                        self.truncated = True
                        self.truncated_at = self._offset
                    return
                try:
                    self._check(rec, session)
                except Invalid as exc:
                    raise self._corrupt(str(exc), rec.offset) from None
                yield rec
                if rec.kind == FOOTER:
                    self._after_footer()
                    return
                # The caller's loop variable still holds this record while the next
                # one decodes: dropping the payload here keeps one decoded record in
                # memory, not two (a record's objects take up to ~25x its bytes).
                rec.payload = None
                del rec
        finally:
            if progress is not None:
                progress.close()
            self._f.close()

    def _check(self, rec: Record, session: Session) -> None:
        kind, where = rec.kind, f"record {self._seq - 1} ({_KIND_NAMES[rec.kind]})"
        if kind == BATCH and self.format >= 2:
            body = rec.payload.body if type(rec.payload) is _Count else rec.payload
            size = self._record_size
            if len(body) % size:
                raise Invalid(
                    f"{where}: {len(body)} bytes are not a whole number of the schema's "
                    f"{size}-byte records"
                )
            n = len(body) // size
            if n > MAX_BATCH:
                raise Invalid(f"{where}: {n} rows (limit {MAX_BATCH})")
            if type(rec.payload) is not _Count:
                # Every value of a packed record is valid for its field: an integer
                # field holds exactly its type's range, a strN field N bytes that
                # are decoded safely when a sink asks for them (EventBatch).
                rec.payload = EventBatch.from_records(session.probe, session.schema, body)
            self.batches += 1
            self.rows += n
        elif kind == BATCH:
            if type(rec.payload) is _Rows:  # verify(): counted, not decoded
                n = rec.payload.n
                if n < 0:
                    raise Invalid(f"{where}: expected an array of rows")
                if n > MAX_BATCH:
                    raise Invalid(f"{where}: {n} rows (limit {MAX_BATCH})")
            else:
                self._rows.check(rec.payload, where, MAX_BATCH)
                n = len(rec.payload)
                rec.payload = EventBatch(session.probe, list(rec.payload), schema=session.schema)
            self.batches += 1
            self.rows += n
        elif kind == SYMBOLS:
            syms, stacks = check_symbols(rec.payload, where)
            if len(session.symbols) + len(syms) > MAX_SYMBOLS:
                raise Invalid(f"{where}: more than {MAX_SYMBOLS} symbols in the file")
            if len(session.stacks) + len(stacks) > MAX_STACKS:
                raise Invalid(f"{where}: more than {MAX_STACKS} stacks in the file")
            rec.payload = (syms, stacks)
        elif kind == LOST:
            source, per_cpu = check_lost(rec.payload, where)
            rec.payload = LostReport(source, per_cpu)
        elif kind == FOOTER:
            summary, written = check_footer(rec.payload, self._rows, where)
            if self.format >= 2:
                self._check_counts(written, where)
            elif summary.events != self.rows:
                # Format 1 has no record counts, but its writer always wrote the events
                # it streamed: a dropped or repeated batch shows here.
                raise Invalid(f"{where}: says {summary.events} events, the file holds {self.rows}")
            self.footer = summary
            rec.payload = summary
        else:
            raise Invalid(f"{where}: a second header")

    def _check_counts(self, written: dict[str, int], where: str) -> None:
        read = {"records": self._seq - 1, "batches": self.batches, "rows": self.rows}
        for name, n in read.items():
            if name not in written:
                raise Invalid(f"{where}.written: no {name} count")
            if written[name] != n:
                raise Invalid(
                    f"{where}: the writer wrote {written[name]} {name}, the file holds {n}"
                )

    def _after_footer(self) -> None:
        """Nothing may follow the footer (format 2); format 1 only counts it."""
        read = len(MAGIC) + self._framer.consumed
        extra = max(self.size - read, self._framer.buffered)
        if extra <= 0 and self._framer.eof:
            return
        if extra <= 0:
            # The size from fstat may be stale (a file still growing): look.
            if not self._read(1):
                return
            extra = 1
        self.trailing = extra
        if self.format >= 2:
            raise self._corrupt(f"{extra} bytes after the footer")

    def close(self) -> None:
        self._f.close()


class _Count:
    """A format-2 batch body that ``verify`` only counts (no EventBatch is built)."""

    __slots__ = ("body",)

    def __init__(self, body: bytes | memoryview) -> None:
        self.body = body


class _Rows:
    """A format-1 batch that ``verify`` only counts: its rows, from the array header.

    Not a bare int: a forged body may decode to an integer, which must be refused as
    a batch, not taken for a count.
    """

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def _array_len(body: bytes | memoryview) -> int:
    """Rows in a BATCH body from its msgpack array header; -1 if it is not an array.

    -1 is then refused as not a batch when the body is decoded; here it only needs to
    differ from any real count.
    """
    if not body:
        return -1
    b = body[0]
    if 0x90 <= b <= 0x9F:
        return b & 0x0F
    if b == 0xDC and len(body) >= 3:
        return int.from_bytes(body[1:3], "big")
    if b == 0xDD and len(body) >= 5:
        return int.from_bytes(body[1:5], "big")
    return -1


def read_symbols(payload: Any, session: Session) -> None:
    """Merge a (checked) SYMBOLS record into the session."""
    syms, stacks = payload
    session.names.add_symbols(syms)
    session.names.add_stacks(stacks)


def read_lost(payload: Any) -> LostReport:
    """The (checked) LOST record as a report."""
    if not isinstance(payload, LostReport):
        raise TraceFileError("lost-events record read without TraceReader.records()")
    return payload


def find_streamed(path: str, reader: TraceReader | None = None) -> Session:
    """The session of trace ``path``, saying whether it holds streamed events.

    Its header says (``streamed``); a trace written before it did holds streamed
    events if it has batches or counted nothing in the kernel, which takes one pass
    over the file's framing (batch bodies are not decoded). ``reader``, if given, is
    a fresh reader of ``path`` that has read nothing yet; it is used up.
    """
    from dataclasses import replace

    reader = reader or TraceReader(path)
    session = reader.session
    if reader.streamed_known or not session.aggregated:
        reader.close()
        return session
    reader.verify()
    return replace(session, streamed=reader.batches > 0)
