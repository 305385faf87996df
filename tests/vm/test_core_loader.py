"""txq-flip through the CO-RE loader (no BCC, no headers) against the qdisc's counters."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tracekit.lab.txq_flip import TxqFlipResult, lab_txq_flip
from tracekit.live.run import Compiled, RunOptions, compile_probe
from tracekit.plugin.bus import Bus

from .conftest import attached_residue
from .helpers import check_txq_flip_against_tc, printed, read_trace

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def core_run(bus: Bus, out_dir: Path) -> tuple[TxqFlipResult, str, Path, Compiled]:
    spec = bus.probes.get("txq-flip")
    compiled = compile_probe(spec, spec.resolve_params({}), RunOptions(quiet=True, loader="core"))
    assert compiled.loader == "core"
    trace = out_dir / "txq-flip-core.tkt"
    res, live = printed(
        lab_txq_flip,
        bus,
        ("hist", f"msgpack={trace}"),
        6,
        "fq",
        compiled=compiled,
        force=True,
        quiet=True,
    )
    yield res, live, trace, compiled
    compiled.probe.close()


def test_core_flips_are_the_queues_tc_counted(
    core_run: tuple[TxqFlipResult, str, Path, Compiled],
) -> None:
    res, live, trace, _ = core_run
    check_txq_flip_against_tc(res, trace)
    assert "@queue_after[" in live


@pytest.mark.parametrize(
    ("loader", "output"), [("core", "perf"), ("bcc", "perf"), ("bcc", "ringbuf")]
)
def test_each_loader_and_output_delivers_what_the_kernel_counted(
    bus: Bus, out_dir: Path, loader: str, output: str
) -> None:
    """Both loaders drain both outputs from the buffers' pages (tracekit.bpf.ringbuf,
    tracekit.bpf.perfbuf): every change the kernel counted reached the trace."""
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
    r, evs = read_trace(trace)
    footer = r.footer
    assert res.iperf_mbit > 1 and evs
    assert all(e["queue_after"] == e["cpu"] for e in evs)
    assert footer is not None and footer.lost_total == 0
    assert sum(footer.counters["txq_counts"]["changes"].values()) == len(evs) == footer.events


def test_core_detach_leaves_nothing(core_run: tuple[TxqFlipResult, str, Path, Compiled]) -> None:
    core_run[3].probe.detach()
    assert attached_residue() == []
