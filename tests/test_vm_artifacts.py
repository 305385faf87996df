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


# One trace each built-in probe recorded in the VM's labs (tests/vm/test_*.py).
RECORDED = {
    "txq-flip": "txq-flip-lab.tkt",
    "rss-cpu": "rss-cpu.none.tkt",
    "ooo-okay": "ooo-okay.limited.tkt",
    "fq-throttle": "fq-throttle.tkt",
}


@pytest.mark.parametrize("probe", sorted(RECORDED))
def test_each_probes_plot_of_its_vm_recording(probe: str, tmp_path: Path) -> None:
    """`tracekit plot` on what the kernel really produced, not on synthetic events."""
    trace = OUT / RECORDED[probe]
    _need(trace)
    out = tmp_path / f"{probe}.png"
    r = subprocess.run(
        [sys.executable, "-m", "tracekit", "plot", str(trace), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    info = subprocess.run(
        [sys.executable, "-m", "tracekit", "info", str(trace)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0 and probe in info.stdout, info.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
