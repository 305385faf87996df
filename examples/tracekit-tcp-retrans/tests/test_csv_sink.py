"""The CSV sink and the plugin's registration, on any machine (no kernel needed)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from tracekit_tcp_retrans import SCHEMA

from tracekit import FeedFixture, ReplayFixture, Session, synthetic_rows


@pytest.fixture
def session() -> Session:
    return Session(probe="tcp-retrans", schema=SCHEMA, hostname="h", kernel="6.1.0")


def test_csv_rows_follow_the_schema(
    tracekit_feed: FeedFixture, session: Session, tmp_path: Path
) -> None:
    out = tmp_path / "r.csv"
    rows = synthetic_rows(SCHEMA, 250, seed=3)
    tracekit_feed(session, [f"csv={out}"], [rows[:100], rows[100:]])
    got = list(csv.reader(out.open()))
    assert got[0] == list(SCHEMA.names)
    assert len(got) == 251
    assert got[1][SCHEMA.index("saddr")].count(".") == 3  # shown as an address


def test_csv_to_stdout(tracekit_feed: FeedFixture, session: Session) -> None:
    out = tracekit_feed(session, ["csv"], [synthetic_rows(SCHEMA, 3)])
    # The columns are struct tk_event's members, in its order, without its padding.
    assert out.stdout.splitlines()[0] == "ts_ns,cpu,saddr,daddr,sport,dport,segs,state"
    assert len(out.stdout.splitlines()) == 4


def test_unwritable_path_is_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracekit",
            "run",
            "tcp-retrans",
            "--sink",
            f"csv={tmp_path}/no/such/dir/x.csv",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "csv=" in r.stderr


def test_registered_through_the_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "tracekit", "list"], capture_output=True, text=True)
    assert "tcp-retrans" in r.stdout and "tcp_retrans 0.1.0" in r.stdout
    assert "csv" in r.stdout


def test_replay_into_csv(
    tracekit_feed: FeedFixture, tracekit_replay: ReplayFixture, session: Session, tmp_path: Path
) -> None:
    trace = tmp_path / "t.tkt"
    tracekit_feed(session, [f"msgpack={trace}"], [synthetic_rows(SCHEMA, 10)])
    out = tracekit_replay(trace, ["csv"])
    assert len(out.stdout.splitlines()) == 11


def _formula_session() -> Session:
    """A session whose ``state`` names are spreadsheet formulas (a replayed trace
    carries its own schema: anyone may write one)."""
    import dataclasses

    from tracekit import Schema

    fields = tuple(
        dataclasses.replace(f, display="enum", choices=("=1+1", "@SUM(A1)", "-bash", "ok"))
        if f.name == "state"
        else f
        for f in SCHEMA.fields
    )
    return Session(probe="tcp-retrans", schema=Schema(fields), hostname="h", kernel="6.1.0")


def test_csv_cells_that_a_spreadsheet_would_run_get_a_quote(
    tracekit_feed: FeedFixture, tmp_path: Path
) -> None:
    session = _formula_session()
    i = SCHEMA.index("state")
    rows = [(*r[:i], n % 4, *r[i + 1 :]) for n, r in enumerate(synthetic_rows(SCHEMA, 8))]
    out, raw = tmp_path / "n.csv", tmp_path / "raw.csv"
    tracekit_feed(session, [f"csv={out}"], [rows])
    tracekit_feed(session, [f"csv=raw:{raw}"], [rows])
    states = [r[i] for r in list(csv.reader(out.open(newline="")))[1:]]
    raws = [r[i] for r in list(csv.reader(raw.open(newline="")))[1:]]
    assert raws[:4] == ["=1+1", "@SUM(A1)", "-bash", "ok"]
    assert states[:4] == ["'=1+1", "'@SUM(A1)", "'-bash", "ok"]


def test_csv_file_is_0600_and_never_written_through_a_link(
    tracekit_feed: FeedFixture, session: Session, tmp_path: Path
) -> None:
    import os

    from tracekit import UsageError

    out = tmp_path / "r.csv"
    old = os.umask(0o022)
    try:
        tracekit_feed(session, [f"csv={out}"], [synthetic_rows(SCHEMA, 3)])
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o600
    with pytest.raises(UsageError, match="exists; pass --force"):
        tracekit_feed(session, [f"csv={out}"], [synthetic_rows(SCHEMA, 3)])
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    link = tmp_path / "link.csv"
    link.symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"):
        tracekit_feed(session, [f"csv={link}"], [synthetic_rows(SCHEMA, 3)], force=True)
    assert victim.read_text() == "secret\n"
