"""txq-flip through the CO-RE loader (no BCC, no headers) against the qdisc's counters."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tracekit.bus import Bus
from tracekit.lab.scenarios import LabResult, lab_txq_flip
from tracekit.run import Compiled, RunOptions, compile_probe

from .conftest import attached_residue
from .helpers import check_txq_flip_against_tc

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
    check_txq_flip_against_tc(res, trace)
    assert "@queue_after[" in live


def test_core_detach_leaves_nothing(core_run: tuple[LabResult, str, Path, Compiled]) -> None:
    core_run[3].probe.detach()
    assert attached_residue() == []
