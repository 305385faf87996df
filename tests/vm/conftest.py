"""Fixtures for tests that run inside the VM (``vm/run``), one pytest session per boot.

Compiling a probe takes minutes under TCG, so each probe is compiled once per
session and shared. Results the host checks afterwards go to ``.vm-out/``, the one
folder the VM shares read-write.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tracekit.live.run import Compiled, RunOptions, compile_probe
from tracekit.plugin.bus import Bus, build_bus
from tracekit.traces.tracefile import TraceReader

from .helpers import read_trace, too_old

OUT = Path(__file__).resolve().parents[2] / ".vm-out"


@pytest.fixture(scope="session")
def out_dir() -> Path:
    OUT.mkdir(exist_ok=True)
    return OUT


@pytest.fixture(scope="session")
def bus() -> Bus:
    return build_bus()


@pytest.fixture(scope="session")
def txq_compiled(bus: Bus) -> Compiled:
    # txq-flip through BCC: the same source as its CO-RE object, which
    # test_core_loader.py runs against the same oracles (rss-cpu's tests use the
    # default loader, CO-RE wherever its object is built).
    spec = bus.probes.get("txq-flip")
    compiled = compile_probe(spec, spec.resolve_params({}), RunOptions(quiet=True, loader="bcc"))
    assert compiled.loader == "bcc"
    yield compiled
    compiled.probe.close()


def _compile(
    bus: Bus, name: str, params: dict[str, str], stream: bool, aggregate: bool
) -> Compiled:
    if (need := too_old(name)) is not None:
        # A row below the probe's minimum (5.10: fq-throttle); test_no_headers.py's
        # test_below_min_kernel_is_one_line checks the error users get there.
        pytest.skip(f"{name} needs Linux {need} or later")
    spec = bus.probes.get(name)
    return compile_probe(
        spec, spec.resolve_params(params), RunOptions(quiet=True), stream, aggregate
    )


@pytest.fixture(scope="session")
def ooo_compiled(bus: Bus) -> Compiled:
    # Every TCP skb streamed (all=1) and the in-kernel aggregate kept too, so tests can
    # correlate with txq-flip and compare the two histogram paths on the same data.
    compiled = _compile(bus, "ooo-okay", {"all": "1"}, stream=True, aggregate=True)
    yield compiled
    compiled.probe.close()


@pytest.fixture(scope="session")
def rss_compiled(bus: Bus) -> Compiled:
    compiled = _compile(bus, "rss-cpu", {}, stream=True, aggregate=True)
    yield compiled
    compiled.probe.close()


@pytest.fixture(scope="session")
def fq_compiled(bus: Bus) -> Compiled:
    # sch_fq must be loaded for its BTF (the labs load it by configuring fq).
    subprocess.run(["modprobe", "sch_fq"], check=True)
    compiled = _compile(bus, "fq-throttle", {}, stream=True, aggregate=False)
    yield compiled
    compiled.probe.close()


def trace_rows(path: Path) -> tuple[TraceReader, list[dict[str, object]]]:
    """The reader and the trace's events as dicts (tests/vm/helpers.py's read_trace)."""
    return read_trace(path)


def _debugfs() -> Path:
    p = Path("/sys/kernel/debug")
    if not (p / "kprobes").exists():
        subprocess.run(["mount", "-t", "debugfs", "none", str(p)], check=False)
    return p


def attached_residue() -> list[str]:
    """What a tracekit run could leave behind, as the kernel itself lists it.

    Programs this test process keeps loaded on purpose (the shared compiled probe)
    are not residue; they are detached, which the kprobe and perf lists show.
    """
    residue = []
    kp = _debugfs() / "kprobes" / "list"
    if kp.exists():
        ours = (
            "netdev_pick_tx",
            "ip_queue_xmit",
            "inet6_csk_xmit",
            "skb_set_owner_w",
            "fq_enqueue",
            "fq_dequeue",
        )
        residue += [
            f"kprobe {ln}" for ln in kp.read_text().splitlines() if any(f in ln for f in ours)
        ]
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        ev = Path(root, "kprobe_events")
        if ev.exists():
            residue += [f"kprobe_event {ln}" for ln in ev.read_text().splitlines() if "_bcc_" in ln]
            break
    perf = subprocess.run(["bpftool", "perf", "show"], capture_output=True, text=True).stdout
    residue += [
        f"bpf perf link {ln}"
        for ln in perf.splitlines()
        if "netdev_pick_tx" in ln or "fq_" in ln or "queue_xmit" in ln or "owner_w" in ln
    ]
    progs = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    me = os.getpid()
    for prog in json.loads(progs or "[]"):
        owners = {p.get("pid") for p in prog.get("pids", [])}
        if str(prog.get("name", "")).startswith("tk_") and owners - {me}:
            residue.append(f"bpf prog {prog.get('name')} held by {sorted(owners)}")
    nets = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    residue += [f"netns {ln}" for ln in nets.splitlines() if ln.startswith("tklab")]
    return residue


@pytest.fixture
def no_residue() -> None:
    assert os.geteuid() == 0
    yield
    assert attached_residue() == []
