"""txq-flip through the CO-RE loader (no BCC, no headers) against the qdisc's counters."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.bus import Bus
from tracekit.lab.scenarios import LabResult, lab_txq_flip
from tracekit.run import Compiled, RunOptions, compile_probe
from tracekit.tracefile import BATCH, TraceReader

from .conftest import attached_residue

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def core_run(bus: Bus, out_dir: Path) -> tuple[LabResult, str, Path, Compiled]:
    spec = bus.probes.get("txq-flip")
    compiled = compile_probe(spec, spec.resolve_params({}), RunOptions(quiet=True, loader="core"))
    assert compiled.loader == "core"
    trace = out_dir / "txq-flip-core.tkt"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = lab_txq_flip(
            bus, ("hist", f"msgpack={trace}"), 6, "fq", compiled=compiled, force=True, quiet=True
        )
    yield res, buf.getvalue(), trace, compiled
    compiled.probe.close()


def test_core_flips_are_the_queues_tc_counted(
    core_run: tuple[LabResult, str, Path, Compiled],
) -> None:
    res, live, trace, _ = core_run
    r = TraceReader(str(trace))
    names = r.session.schema.names
    evs = [
        dict(zip(names, row, strict=True))
        for rec in r.records()
        if rec.kind == BATCH
        for row in rec.payload
    ]
    assert res.iperf_mbit > 1
    # XPS maps CPU n to queue n: every pick lands on the picking CPU's queue.
    assert evs and all(e["queue_after"] == e["cpu"] for e in evs)
    in_events = {e["queue_after"] for e in evs} | {e["queue_before"] for e in evs}
    in_events.discard(0xFFFF)
    grew = {q for q, n in res.queue_delta.items() if n > 0}
    assert in_events == grew, (in_events, res.queue_delta)
    # The ring buffer read from its pages lost nothing: the kernel's count of
    # changes is the number of events that reached the trace.
    footer = r.footer
    assert footer is not None and footer.lost_total == 0
    assert sum(footer.counters["txq_counts"]["changes"].values()) == len(evs) == footer.events
    # Strings decoded as the BCC path does.
    assert {e["ifname"] for e in evs} == {"tk0"}
    assert "@queue_after[" in live


@pytest.mark.parametrize(
    ("loader", "output"), [("core", "perf"), ("bcc", "perf"), ("bcc", "ringbuf")]
)
def test_each_loader_and_output_delivers_what_the_kernel_counted(
    bus: Bus, out_dir: Path, loader: str, output: str
) -> None:
    """Both loaders drain both outputs from the buffers' pages (tracekit.ringbuf,
    tracekit.perfbuf): every change the kernel counted reached the trace."""
    spec = bus.probes.get("txq-flip")
    opts = RunOptions(quiet=True, loader=loader, output=output)
    compiled = compile_probe(spec, spec.resolve_params({}), opts)
    assert compiled.loader == loader and compiled.probe.output == output
    trace = out_dir / f"txq-flip-{loader}-{output}.tkt"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            res = lab_txq_flip(
                bus, (f"msgpack={trace}",), 4, "fq", compiled=compiled, force=True, quiet=True
            )
    finally:
        compiled.probe.close()
    r = TraceReader(str(trace))
    names = r.session.schema.names
    evs = [
        dict(zip(names, row, strict=True))
        for rec in r.records()
        if rec.kind == BATCH
        for row in rec.payload
    ]
    footer = r.footer
    assert res.iperf_mbit > 1 and evs
    assert all(e["queue_after"] == e["cpu"] for e in evs)
    assert footer is not None and footer.lost_total == 0
    assert sum(footer.counters["txq_counts"]["changes"].values()) == len(evs) == footer.events


def test_core_detach_leaves_nothing(core_run: tuple[LabResult, str, Path, Compiled]) -> None:
    core_run[3].probe.detach()
    assert attached_residue() == []


def _without_headers(*args: str) -> subprocess.CompletedProcess[str]:
    """Run tracekit in a mount namespace where the kernel's headers are hidden."""
    release = os.uname().release
    hide = " && ".join(
        f"mount -t tmpfs none {d}"
        for d in (f"/lib/modules/{release}/build", "/usr/src")
        if Path(d).exists()
    )
    cmd = " ".join([sys.executable, "-m", "tracekit", *args])
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{hide} && ls /usr/src | wc -l && {cmd}"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_no_headers_check_and_lab_run_on_btf_alone() -> None:
    r = _without_headers("check", "txq-flip")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("0\n")  # the headers really are gone in there
    assert "loader: core (CO-RE object" in r.stdout
    assert "kernel headers" not in r.stdout
    r = _without_headers("lab", "txq-flip", "--duration", "4", "--sink", "hist")
    assert r.returncode == 0, r.stderr
    assert "loading txq-flip (CO-RE object" in r.stderr
    assert "@queue_after[" in r.stdout and "tc -s qdisc" in r.stdout
