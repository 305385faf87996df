"""Faults on the host: a recorder killed with SIGKILL, fuzzed trace files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.base.errors import TraceFileError
from tracekit.base.session import Session
from tracekit.traces.tracefile import BATCH, TraceReader, TraceWriter

RECORDER = """
import sys, time
from tracekit.probes.txq_flip import SCHEMA
from tracekit.base.session import Session
from tracekit.testing import synthetic_rows
from tracekit.traces.tracefile import TraceWriter
w = TraceWriter(sys.argv[1], Session(probe="txq-flip", schema=SCHEMA))
rows = synthetic_rows(SCHEMA, 100)
n = 0
while True:
    w.write_batch(rows)
    n += 1
    if n == 20:
        print("ready", flush=True)
    time.sleep(0.001)
"""


def test_sigkill_while_recording_leaves_a_replayable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.tkt"
    p = subprocess.Popen(
        [sys.executable, "-c", RECORDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = TraceReader(str(path))
    batches = [rec.payload for rec in r.records() if rec.kind == BATCH]
    # The reader joins consecutive batch records: every record it counted is whole.
    assert r.batches >= 20 and sum(len(b) for b in batches) == 100 * r.batches == r.rows
    assert r.truncated and r.footer is None
    out = subprocess.run(
        [sys.executable, "-m", "tracekit", "replay", str(path), "--sink", "hist"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "ends early" in out.stderr and "@queue_after[" in out.stdout


def _good_file(tmp: Path, session: Session, rows: list) -> bytes:
    p = tmp / "good.tkt"
    if p.exists():
        p.unlink()
    w = TraceWriter(str(p), session)
    w.write_batch(rows[:40])
    w.write_batch(rows[40:80])
    w.close(None)
    return p.read_bytes()


@settings(
    max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_files_give_data_or_one_clear_error(
    tmp_path: Path, session: Session, rows: list, data: st.DataObject
) -> None:
    good = bytearray(_good_file(tmp_path, session, rows))
    how = data.draw(st.sampled_from(["flip", "cut", "splice", "garbage"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(good) - 1))
            good[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "cut":
        good = good[: data.draw(st.integers(0, len(good)))]
    elif how == "splice":
        i = data.draw(st.integers(0, len(good)))
        good[i:i] = data.draw(st.binary(max_size=64))
    else:
        good = bytearray(good[:8]) + bytearray(data.draw(st.binary(max_size=512)))
    p = tmp_path / "fuzz.tkt"
    p.write_bytes(bytes(good))
    try:
        r = TraceReader(str(p))
        for rec in r.records():
            if rec.kind == BATCH:
                assert all(len(row) == len(session.schema.fields) for row in rec.payload)
    except TraceFileError as exc:
        assert "\n" not in str(exc)


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        import pytest

        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    return subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-m",
            "tracekit",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "HOME": "/nonexistent"},
    )


def test_not_root_is_one_line_with_its_own_status() -> None:
    r = _as_nobody("run", "txq-flip", "--duration", "1")
    assert r.returncode == 4, r.stderr
    # The CO-RE loader's capabilities; where no CO-RE object is found (a row's root
    # sees no object cache), the BCC loader's.
    assert r.stderr.strip() in (
        "tracekit: needs root or the capabilities CAP_BPF, CAP_PERFMON: run with sudo, "
        'or grant them (README, "Capabilities")',
        "tracekit: needs root (or CAP_SYS_ADMIN, with the BCC loader): run with sudo",
    ), r.stderr


def test_check_lists_every_problem_at_once() -> None:
    r = _as_nobody("check", "fq-throttle")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    fails = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("FAIL")]
    assert "privileges" in fails[0]
    # Every attach point is reported, present or not, in one report.
    assert sum("fq_enqueue" in ln or "fq_dequeue" in ln for ln in r.stdout.splitlines()) == 4


def test_no_kernel_headers_is_one_line_with_its_own_status() -> None:
    """This machine's own kernel has no headers (the VM's has): a real case, not a mock."""
    release = os.uname().release
    if os.geteuid() != 0 or Path(f"/lib/modules/{release}/build").exists():
        pytest.skip("needs root on a kernel without headers (this machine's, in CI)")
    r = subprocess.run(
        [sys.executable, "-m", "tracekit", "run", "rss-cpu", "--loader", "bcc", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 5, r.stderr
    assert r.stderr.strip() == (
        f"tracekit: no kernel headers for {release} in /lib/modules/{release}/build: "
        f"install linux-headers-{release}"
    )


def test_bcc_calling_sys_exit_becomes_one_compile_error(capsys: pytest.CaptureFixture[str]) -> None:
    """BCC's struct readers print a line and call sys.exit(1) on a type they cannot
    map: tracekit turns that into its own one-line error, BCC's words folded in."""
    import sys

    from tracekit.base.errors import CompileError
    from tracekit.bpf.bcc import bcc_guard

    def bcc_like() -> None:
        print(
            "Type: '__be16' not recognized. Please define the data with ctypes manually.",
            file=sys.stderr,
        )
        sys.exit(1)

    with pytest.raises(CompileError) as exc, bcc_guard("probe x: reading struct tk_event"):
        bcc_like()
    assert str(exc.value) == (
        "probe x: reading struct tk_event: Type: '__be16' not recognized. "
        "Please define the data with ctypes manually."
    )
    with (
        pytest.raises(CompileError, match=r"^probe x failed to compile: boom$"),
        bcc_guard("probe x failed to compile"),
    ):
        raise Exception("boom")
    assert capsys.readouterr().err == ""


@settings(
    max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_value_where_a_record_should_start_is_never_the_end(
    tmp_path: Path, session: Session, rows: list, data: st.DataObject
) -> None:
    """Any msgpack value that is not an array, at any record boundary: corrupt, never
    the end of the file (a nil there once dropped every record after it)."""
    import msgpack

    good = _good_file(tmp_path, session, rows)
    p = tmp_path / "fuzz.tkt"
    p.write_bytes(good)
    r = TraceReader(str(p))
    starts = [rec.offset for rec in r.records()] + [len(good)]
    value = data.draw(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**64 - 1),
            st.floats(),
            st.just({}),
        )
    )
    at = data.draw(st.sampled_from(starts))
    p.write_bytes(good[:at] + msgpack.packb(value) + good[at:])
    with pytest.raises(TraceFileError, match=f"corrupt at byte {at}: not a record"):
        for _ in TraceReader(str(p)).records():
            pass
