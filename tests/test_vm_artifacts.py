"""Host-side checks of what the VM tests recorded in .vm-out/ (run after vm/run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OUT = Path(__file__).resolve().parents[1] / ".vm-out"
pytestmark = pytest.mark.after_vm


def _need(p: Path) -> None:
    if not p.exists():
        if os.environ.get("TRACEKIT_REQUIRE_VM_ARTIFACTS") == "1":
            pytest.fail(f"{p} missing: the VM tests did not record it")
        pytest.skip(f"{p.name} not recorded yet: run the VM tests first (scripts/test.sh)")


def test_host_replay_of_vm_recording_prints_the_live_histogram() -> None:
    trace, live = OUT / "txq-flip-lab.tkt", OUT / "txq-flip-lab.hist.txt"
    _need(trace)
    _need(live)
    r = subprocess.run(
        [sys.executable, "-m", "tracekit", "replay", str(trace), "--sink", "hist"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == live.read_text()
    assert "@queue_after[" in r.stdout
