"""``tracekit export``: traces as tables for DuckDB, pandas or Spark.

One row per event, one typed column per schema field (``u32`` stays an unsigned
32-bit integer, ``str16`` a string), then the run's metadata as columns (host,
kernel, probe, parameters, start time, ...), so the exports of many hosts
concatenate into one dataset and a query can group by host.

A trace whose probe counted in the kernel instead of streaming (``session.streamed``
false) becomes its aggregate table: one row per key the kernel counted, the
aggregated fields then ``count``, then the same metadata columns. A trace that
streamed and counted both exports its events (the kernel's counts go into the
Parquet file's metadata, with the rest of the footer).

OUT ``-`` is standard output. Otherwise OUT is written beside itself and renamed
over at the end, and never replaces an input, a symbolic link or anything but a
regular file (``open_output``).

Streaming: a trace is read batch by batch (at most ``MAX_BATCH`` rows each) and
each batch becomes Arrow columns in one call per column; memory stays flat in the
trace's size. Parquet row groups collect ``ROW_GROUP`` rows first, because many
tiny row groups make the file slow to query.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import click

from tracekit.base import trust
from tracekit.base.errors import TraceFileError, UsageError
from tracekit.base.schema import Field, Schema
from tracekit.base.session import EventBatch, Session, Summary
from tracekit.base.text import CSV_FORMULA_START, CSV_PLAIN_NUMBER, examples, printable
from tracekit.fleet.extras import mode_option, need
from tracekit.traces.progress import Progress
from tracekit.traces.tracefile import BATCH, TraceReader, find_streamed

FORMATS = ("parquet", "csv", "jsonl")
ROW_GROUP = 128 * 1024

# Columns added to every row, after the schema's fields. Names a schema may not use.
META_COLUMNS = (
    "host",
    "kernel",
    "probe",
    "params",
    "start_time",
    "ncpus",
    "sample_every",
    "tracekit_version",
    "trace",
)

_ARROW_INTS = {
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "s8": "int8",
    "s16": "int16",
    "s32": "int32",
    "s64": "int64",
}


def arrow_type(f: Field) -> Any:
    pa = need("pyarrow", "tracekit export")
    return pa.string() if f.is_str else getattr(pa, _ARROW_INTS[f.type])()


def arrow_schema(schema: Schema) -> Any:
    """The Arrow schema of an export: typed fields (with unit, display, doc and enum
    names as field metadata, so a reader can decode them) and the metadata columns."""
    pa = need("pyarrow", "tracekit export")
    fields = [
        pa.field(
            f.name,
            arrow_type(f),
            nullable=False,
            metadata={
                "unit": f.unit,
                "display": f.display,
                "doc": f.doc,
                "choices": json.dumps(list(f.choices)),
            },
        )
        for f in schema.fields
    ]
    fields += [
        pa.field("host", pa.string()),
        pa.field("kernel", pa.string()),
        pa.field("probe", pa.string()),
        pa.field("params", pa.string()),
        pa.field("start_time", pa.timestamp("us", tz="UTC")),
        pa.field("ncpus", pa.uint32()),
        pa.field("sample_every", pa.uint32()),
        pa.field("tracekit_version", pa.string()),
        pa.field("trace", pa.string()),
    ]
    return pa.schema(fields)


# The column of an aggregate table that holds the kernel's count of each key.
COUNT_COLUMN = Field("count", "u64", doc="events the kernel counted with this key")


def aggregate_schema(session: Session) -> Schema:
    """The table of a kernel-counted trace: its aggregated fields, then ``count``."""
    fields = tuple(session.schema.field(a) for a in session.aggregated)
    if COUNT_COLUMN.name in session.aggregated:
        raise UsageError(
            f"{printable(session.probe)} aggregates on a field named "
            f"{COUNT_COLUMN.name!r}, the count's column"
        )
    return Schema(fields=(*fields, COUNT_COLUMN))


@dataclass
class Run:
    """One trace being exported: its session, its metadata values, and how it ended."""

    path: str
    session: Session
    host: str
    footer: Summary | None = None
    truncated_at: int | None = None
    events: int = 0

    def meta(self) -> dict[str, Any]:
        s = self.session
        return {
            "host": self.host,
            "kernel": s.kernel,
            "probe": s.probe,
            # JSON so a query can take one parameter: params->>'ifindex' in DuckDB.
            "params": json.dumps(dict(s.params), sort_keys=True),
            "start_time": dt.datetime.fromtimestamp(s.start_time, tz=dt.UTC),
            "ncpus": s.ncpus,
            "sample_every": s.sample_every,
            "tracekit_version": s.tracekit_version,
            "trace": os.path.basename(self.path),
        }


@dataclass
class Exported:
    events: int = 0
    runs: list[Run] = field(default_factory=list)
    seconds: float = 0.0


def open_runs(paths: tuple[str, ...], host: str | None) -> list[tuple[Run, TraceReader]]:
    """Open every trace first: a schema that does not match the first one is refused
    before anything is written, and so is a mix of streamed and kernel-counted
    traces (their tables have different columns)."""
    out: list[tuple[Run, TraceReader]] = []
    try:
        for p in paths:
            # Whether it streamed: said by its header, or (older traces) by its batches.
            session = find_streamed(p)
            r = TraceReader(p)
            out.append((Run(p, session, host or session.hostname), r))
            first = out[0][0].session
            if [(f.name, f.type) for f in session.schema.fields] != [
                (f.name, f.type) for f in first.schema.fields
            ]:
                raise UsageError(
                    f"{printable(p)} is a {printable(session.probe)} trace whose fields differ "
                    f"from {printable(paths[0])} ({printable(first.probe)}): export each probe "
                    "to its own file"
                )
            if (session.streamed, session.aggregated if not session.streamed else ()) != (
                first.streamed,
                first.aggregated if not first.streamed else (),
            ):
                what = {True: "streamed events", False: "only the kernel's counts"}
                raise UsageError(
                    f"{printable(p)} holds {what[session.streamed]}, {printable(paths[0])} "
                    f"{what[first.streamed]}"
                    + ("" if session.streamed else " by other fields")
                    + ": export them to separate files"
                )
        first = out[0][0].session
        names = first.schema.names if first.streamed else aggregate_schema(first).names
        clash = set(names) & set(META_COLUMNS)
        if clash:
            raise UsageError(
                f"field {', '.join(sorted(clash))} of {printable(first.probe)} "
                "has the name of a metadata column"
            )
    except BaseException:
        for _, r in out:
            r.close()
        raise
    return out


# Events joined into one batch before it is written: packed records go to Arrow a
# column at a time, and Python's work per batch spreads over this many events.
EXPORT_ROWS = 64 * 1024


def batches(run: Run, reader: TraceReader) -> Iterator[EventBatch | list[tuple[Any, ...]]]:
    """What to write for ``run``: its events (batches of up to EXPORT_ROWS, packed
    records as read), or the kernel's counts of a trace that holds only those
    (``aggregate_schema``) as rows."""
    pending: list[EventBatch] = []
    rows = 0
    reader.progress = Progress(f"exporting {run.path}", reader.size)
    for rec in reader.records():
        if rec.kind == BATCH and rec.payload and run.session.streamed:
            run.events += len(rec.payload)
            pending.append(rec.payload)
            rows += len(rec.payload)
            if rows >= EXPORT_ROWS:
                yield EventBatch.concat(pending)
                pending, rows = [], 0
    if pending:
        yield EventBatch.concat(pending)
    run.footer = reader.footer
    if reader.truncated:
        run.truncated_at = reader.truncated_at
    if run.session.streamed:
        return
    if run.footer is None:
        raise TraceFileError(
            f"{printable(run.path)} ends before its footer, which holds the kernel's counts: "
            "nothing to export"
        )
    idx = [run.session.schema.index(a) for a in run.session.aggregated]
    agg = [(*(row[i] for i in idx), n) for row, n in run.footer.kernel_agg]
    run.events = sum(n for _, n in run.footer.kernel_agg)
    for i in range(0, len(agg), ROW_GROUP):
        yield agg[i : i + ROW_GROUP]


class _Writer:
    def write(self, run: Run, rows: EventBatch | list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def close(self, runs: list[Run]) -> None:
        raise NotImplementedError


class _ArrowWriter(_Writer):
    """Parquet or CSV through pyarrow: a batch becomes one RecordBatch."""

    def __init__(self, fmt: str, path: IO[bytes], schema: Schema, neutralise: bool = True) -> None:
        self.pa = need("pyarrow", "tracekit export")
        # CSV only: cells a spreadsheet would run as formulas get a ' in front.
        self.pc = (
            need("pyarrow.compute", "tracekit export") if fmt == "csv" and neutralise else None
        )
        self.schema = arrow_schema(schema)
        self.types = [arrow_type(f) for f in schema.fields]
        self.fmt = fmt
        self.pending: list[Any] = []
        self.pending_rows = 0
        self._meta_for: tuple[Run, list[Any]] | None = None
        if fmt == "parquet":
            pq = need("pyarrow.parquet", "tracekit export --to parquet")
            self.out: Any = pq.ParquetWriter(path, self.schema, compression="zstd")
        else:
            pacsv = need("pyarrow.csv", "tracekit export --to csv")
            self.out = pacsv.CSVWriter(path, self.schema)

    def _meta_scalars(self, run: Run) -> list[Any]:
        if self._meta_for is None or self._meta_for[0] is not run:
            meta = run.meta()
            n = len(self.types)
            scalars = [
                self.pa.scalar(meta[name], type=self.schema.field(n + i).type)
                for i, name in enumerate(META_COLUMNS)
            ]
            self._meta_for = (run, scalars)
        return self._meta_for[1]

    def write(self, run: Run, rows: EventBatch | list[tuple[Any, ...]]) -> None:
        pa = self.pa
        n = len(rows)
        try:
            if isinstance(rows, EventBatch) and rows.packed and rows.schema is not None:
                # Straight from the packed records: an integer column is a numpy
                # array of the field's own type (Arrow takes it as it is); strings are
                # decoded once per distinct value (EventBatch.column_values).
                fields = rows.schema.fields
                cols = [
                    pa.array(rows.column_values(i) if f.is_str else rows.field_array(i), type=t)
                    for i, (f, t) in enumerate(zip(fields, self.types, strict=True))
                ]
            else:
                # zip(*rows) transposes in C; pa.array converts a whole column in C++.
                cols = [
                    pa.array(c, type=t)
                    for c, t in zip(zip(*list(rows), strict=True), self.types, strict=True)
                ]
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
            raise TraceFileError(
                f"{printable(run.path)}: a value does not fit its field's type ({exc})"
            ) from None
        cols += [pa.repeat(s, n) for s in self._meta_scalars(run)]
        if self.pc is not None:
            cols = [self._neutralise(c) if pa.types.is_string(c.type) else c for c in cols]
        batch = pa.RecordBatch.from_arrays(cols, schema=self.schema)
        if self.fmt != "parquet":
            self.out.write_batch(batch)
            return
        self.pending.append(batch)
        self.pending_rows += n
        if self.pending_rows >= ROW_GROUP:
            self._flush()

    def _neutralise(self, col: Any) -> Any:
        """A string column with a ``'`` before every cell that starts with ``= + - @``,
        a tab or a carriage return and is not a plain number (OWASP's advice on CSV
        injection; tracekit.base.text.csv_cell is the same rule in Python)."""
        pc: Any = self.pc
        risky = pc.match_substring_regex(col, CSV_FORMULA_START)
        if not pc.any(risky).as_py():
            return col
        risky = pc.and_(risky, pc.invert(pc.match_substring_regex(col, CSV_PLAIN_NUMBER)))
        return pc.if_else(risky, pc.utf8_replace_slice(col, start=0, stop=0, replacement="'"), col)

    def _flush(self) -> None:
        if self.pending:
            table = self.pa.Table.from_batches(self.pending, schema=self.schema)
            self.out.write_table(table, row_group_size=max(self.pending_rows, 1))
            self.pending, self.pending_rows = [], 0

    def close(self, runs: list[Run]) -> None:
        if self.fmt == "parquet":
            self._flush()
            # Each run's header and footer (counters, losses, duration) in the file's
            # key-value metadata: what no event row carries.
            self.out.add_key_value_metadata({"tracekit.runs": json.dumps(_runs_meta(runs))})
        self.out.close()


class _JsonlWriter(_Writer):
    """One JSON object a line; needs nothing beyond the standard library.

    A batch is encoded with ``map`` over the C encoder, and the run's metadata is
    spliced in front of each object with one ``str.replace`` on the joined batch:
    JSON escapes newlines inside strings, so ``\\n{`` only ever starts an object.
    """

    def __init__(self, f: IO[bytes], schema: Schema) -> None:
        self.f = f
        self.names = schema.names
        self.enc = json.JSONEncoder(ensure_ascii=True)
        self._prefix_for: tuple[Run, str] | None = None

    def _prefix(self, run: Run) -> str:
        if self._prefix_for is None or self._prefix_for[0] is not run:
            meta = run.meta()
            meta["start_time"] = meta["start_time"].isoformat()
            self._prefix_for = (run, json.dumps(meta)[:-1] + ", ")
        return self._prefix_for[1]

    def write(self, run: Run, rows: EventBatch | list[tuple[Any, ...]]) -> None:
        if isinstance(rows, EventBatch):
            for part in rows.slices():  # rows decoded a slice at a time
                self._write_rows(run, part.rows)
            return
        self._write_rows(run, rows)

    def _write_rows(self, run: Run, rows: list[tuple[Any, ...]]) -> None:
        names = self.names
        objs = map(dict, map(zip, [names] * len(rows), rows))
        text = "\n".join(map(self.enc.encode, objs))
        prefix = self._prefix(run)
        # ASCII: ensure_ascii escapes everything else.
        self.f.write((prefix + text[1:].replace("\n{", "\n" + prefix) + "\n").encode("ascii"))

    def close(self, runs: list[Run]) -> None:
        self.f.flush()


def _runs_meta(runs: list[Run]) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        d: dict[str, Any] = {"trace": os.path.basename(r.path), "host": r.host}
        d.update(r.session.header())
        d["events_exported"] = r.events
        d["footer"] = r.footer.to_dict() if r.footer is not None else None
        d["truncated_at"] = r.truncated_at
        out.append(d)
    return out


class Output:
    """Where an export goes: standard output (``-``), or a new file renamed over OUT.

    The one place an export's output is opened (``open_output``); ``commit`` makes
    it final, ``abort`` leaves OUT as it was.
    """

    def __init__(self, name: str, f: IO[bytes], tmp: trust.OutputFile | None = None) -> None:
        self.name = name
        self.file = f
        self._tmp = tmp

    def commit(self) -> None:
        if self._tmp is None:
            self.file.flush()
            return
        self._tmp.commit()  # flushed to disk, renamed over OUT (tracekit.base.trust)
        self._tmp = None

    def abort(self) -> None:
        if self._tmp is not None:
            self._tmp.abort()
            self._tmp = None


def check_output(out: str, force: bool, inputs: tuple[str, ...]) -> None:
    """Refuse an OUT that export must not write: one of its inputs (with --force
    too, by any name: compared by device and inode), a symbolic link, a device, a
    FIFO or a directory, or an existing file without --force."""
    if out == "-":
        return
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"cannot write {printable(out)}: {exc.strerror}") from None
    if st is not None:
        for p in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(out, p):
                    raise UsageError(
                        f"{printable(out)} is one of the traces being exported; "
                        "write to another file"
                    )
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(
                f"{printable(out)} is a symbolic link; export replaces no link "
                "(name the file itself, or - for standard output)"
            )
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(
                f"{printable(out)} is not a regular file; export writes a new file, "
                "or - for standard output"
            )
        if not force:
            raise UsageError(f"{printable(out)} exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UsageError(
            f"cannot write {printable(out)}: directory {printable(parent)} does not exist"
        )


def open_output(
    out: str, force: bool, inputs: tuple[str, ...], mode: int = trust.DEFAULT_MODE
) -> Output:
    """Open OUT for an export of ``inputs`` (``check_output`` first).

    ``-`` is standard output. A file is written to a temporary file beside OUT, of
    an unpredictable name, created with ``O_EXCL | O_NOFOLLOW`` and ``mode`` (0600
    unless --mode), and renamed over OUT by ``commit`` (tracekit.base.trust.OutputFile):
    a failed export leaves no half file that a later query would read as complete,
    no file or link already there is followed, and the rename replaces only what
    ``check_output`` allowed.
    """
    check_output(out, force, inputs)
    if out == "-":
        sys.stdout.flush()
        return Output(out, sys.stdout.buffer)
    tmp = trust.OutputFile(out, mode=mode, replace=force)
    assert tmp.file is not None
    return Output(out, tmp.file, tmp)


def export(
    paths: tuple[str, ...],
    fmt: str,
    out: str,
    force: bool = False,
    host: str | None = None,
    mode: int = trust.DEFAULT_MODE,
    raw_csv: bool = False,
) -> Exported:
    """Export ``paths`` (traces of one probe) to ``out`` (``-``: stdout) in ``fmt``.

    CSV cells that a spreadsheet would run as formulas (starting with ``= + - @``,
    a tab or a carriage return: a comm, interface or host name anyone can choose)
    get a ``'`` in front, unless ``raw_csv``."""
    if fmt not in FORMATS:
        raise UsageError(f"--to {fmt}: valid formats are {', '.join(FORMATS)}")
    if not paths:
        raise UsageError("export needs at least one trace file")
    check_output(out, force, paths)
    if out == "-" and fmt == "parquet" and sys.stdout.isatty():
        raise UsageError("--to parquet -: Parquet is binary; redirect it to a file or a pipe")
    if fmt != "jsonl":
        need("pyarrow", "tracekit export")
    started = time.monotonic()
    runs = open_runs(paths, host)
    first = runs[0][0].session
    schema = first.schema if first.streamed else aggregate_schema(first)
    result = Exported()
    try:
        output = open_output(out, force, paths, mode)
    except BaseException:
        for _, reader in runs:
            reader.close()
        raise
    ok = False
    writer: _Writer | None = None
    try:
        writer = (
            _JsonlWriter(output.file, schema)
            if fmt == "jsonl"
            else _ArrowWriter(fmt, output.file, schema, neutralise=not raw_csv)
        )
        for run, reader in runs:
            for rows in batches(run, reader):
                writer.write(run, rows)
            result.events += run.events
            result.runs.append(run)
        writer.close(result.runs)
        output.commit()
        ok = True
    finally:
        for _, reader in runs:
            reader.close()
        if not ok:
            # The first error is the one to report, not one from closing after it.
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close(result.runs)
            output.abort()
    result.seconds = time.monotonic() - started
    return result


@click.command(
    "export",
    epilog=examples(
        "tracekit export examples/traces/rss-cpu.tkt --to parquet rss.parquet",
        "tracekit export host-*.tkt --to parquet all.parquet      # one probe, many hosts",
        "tracekit export examples/traces/txq-flip.tkt --to jsonl - | jq .queue_after",
        "tracekit export examples/traces/fq-throttle.tkt --to csv fq.csv",
    ),
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--to", "fmt", type=click.Choice(FORMATS), required=True, help="the output's format")
@click.argument("out", nargs=1, type=click.Path(dir_okay=False))
@click.option(
    "--host",
    default=None,
    metavar="NAME",
    help="the host column's value (default: the hostname recorded in each trace)",
)
@click.option("--force", is_flag=True, help="replace OUT (a regular file, not one of FILEs)")
@mode_option
@click.option(
    "--raw-csv",
    is_flag=True,
    help="CSV: write cells as they are (by default a cell starting with = + - @, a tab or "
    "a CR gets a ' in front, so that no spreadsheet runs it as a formula)",
)
def export_cmd(
    files: tuple[str, ...],
    fmt: str,
    out: str,
    host: str | None,
    force: bool,
    mode: int,
    raw_csv: bool,
) -> None:
    """Write the events of trace FILEs (one probe) to OUT as Parquet, CSV or JSON lines.

    One typed column per event field, then host, kernel, probe, params (JSON),
    start_time, ncpus, sample_every, tracekit_version and trace: exports from many
    hosts concatenate into one dataset. A trace that holds only the kernel's counts
    becomes its aggregate table: the fields it was counted by, then count.

    OUT - writes to standard output. An existing OUT is replaced only with --force,
    and never when it is one of the FILEs, a symbolic link or not a regular file.
    """
    result = export(files, fmt, out, force=force, host=host, mode=mode, raw_csv=raw_csv)
    for run in result.runs:
        if run.truncated_at is not None:
            click.echo(
                f"tracekit: warning: {printable(run.path)} ends early (cut at byte "
                f"{run.truncated_at}); exported its {run.events} events up to there",
                err=True,
            )
    hosts = sorted({r.host for r in result.runs})
    rate = result.events / result.seconds if result.seconds > 0 else 0.0
    counted = result.runs and not result.runs[0].session.streamed
    what = "kernel-counted events as their aggregate table" if counted else "events"
    click.echo(
        f"tracekit: exported {result.events} {what} from {len(result.runs)} trace(s) "
        f"(hosts: {printable(', '.join(hosts))}) to {printable(out)} "
        f"in {result.seconds:.2f}s ({rate:,.0f} events/s)",
        err=True,
    )
    sys.stderr.flush()
