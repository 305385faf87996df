"""The CSV sink and the plugin's registration, on any machine (no kernel needed)."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tracekit_tcp_retrans import SCHEMA

from tracekit.session import Session
from tracekit.testing import synthetic_rows


@pytest.fixture
def session() -> Session:
    return Session(probe="tcp-retrans", schema=SCHEMA, hostname="h", kernel="6.1.0")


def test_csv_rows_follow_the_schema(
    tracekit_feed: Callable, session: Session, tmp_path: Path
) -> None:
    out = tmp_path / "r.csv"
    rows = synthetic_rows(SCHEMA, 250, seed=3)
    tracekit_feed(session, [f"csv={out}"], [rows[:100], rows[100:]])
    got = list(csv.reader(out.open()))
    assert got[0] == list(SCHEMA.names)
    assert len(got) == 251
    assert got[1][SCHEMA.index("saddr")].count(".") == 3  # shown as an address


def test_csv_to_stdout(tracekit_feed: Callable, session: Session) -> None:
    out = tracekit_feed(session, ["csv"], [synthetic_rows(SCHEMA, 3)])
    assert out.stdout.splitlines()[0].startswith("ts_ns,cpu,saddr")
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
    tracekit_feed: Callable, tracekit_replay: Callable, session: Session, tmp_path: Path
) -> None:
    trace = tmp_path / "t.tkt"
    tracekit_feed(session, [f"msgpack={trace}"], [synthetic_rows(SCHEMA, 10)])
    out = tracekit_replay(trace, ["csv"])
    assert len(out.stdout.splitlines()) == 11
