"""txq-flip against the kernel's own counters, in the namespace lab (runs in the VM)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tracekit.lab.netns import parse_tc_queue_packets
from tracekit.lab.txq_flip import TxqFlipResult, lab_txq_flip
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus
from tracekit.traces.tracefile import TraceReader

from .conftest import attached_residue
from .helpers import (
    assert_replay_prints,
    printed,
    run_then_signal,
    trace_batch_rows,
    trace_events,
    tracekit,
)


def tc_of(ns: str) -> str:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", "tk0"],
        capture_output=True,
        text=True,
    )
    return r.stdout


pytestmark = pytest.mark.vm

# The lab's result, what it printed and its trace.
LabOut = tuple[TxqFlipResult, str, Path]


@pytest.fixture(scope="module")
def lab_run(bus: Bus, txq_compiled: Compiled, out_dir: Path) -> LabOut:
    trace = out_dir / "txq-flip-lab.tkt"
    res, live = printed(
        lab_txq_flip,
        bus,
        ("hist", f"msgpack={trace}"),
        6,
        "fq",
        compiled=txq_compiled,
        force=True,
        quiet=True,
    )
    (out_dir / "txq-flip-lab.hist.txt").write_text(live)
    (out_dir / "txq-flip-lab.tc.txt").write_text(res.tc_after)
    return res, live, trace


events = trace_events


def test_flips_between_the_two_cpus_queues(lab_run: LabOut) -> None:
    res, live, trace = lab_run
    evs = events(trace)
    assert res.iperf_mbit > 1, "iperf3 moved no data"
    flips = [e for e in evs if e["queue_before"] != 0xFFFF]
    # The seed's pattern: the client's CPU moves the socket to its queue, the CPU
    # processing ACKs moves it back to its own.
    assert any(e["cpu"] == 0 and e["queue_before"] == 1 and e["queue_after"] == 0 for e in flips)
    assert any(e["cpu"] == 1 and e["queue_before"] == 0 and e["queue_after"] == 1 for e in flips)
    # XPS maps CPU n to queue n: every pick lands on the picking CPU's queue.
    assert all(e["queue_after"] == e["cpu"] for e in evs)
    assert (
        "@queue_after[cpu=0, queue_before=1]:" in live
        and "@queue_after[cpu=1, queue_before=0]:" in live
    )


def test_flip_queues_are_exactly_the_queues_tc_counted(
    lab_run: LabOut,
) -> None:
    res, _, trace = lab_run
    evs = events(trace)
    in_events = {e["queue_after"] for e in evs} | {e["queue_before"] for e in evs}
    in_events.discard(0xFFFF)
    grew = {q for q, n in res.queue_delta.items() if n > 0}
    assert grew, res.tc_after
    assert in_events == grew, (in_events, res.queue_delta)


def test_kernel_counters_agree_with_streamed_events(lab_run: LabOut) -> None:
    _, _, trace = lab_run
    r, n = trace_batch_rows(trace)
    footer = r.footer
    assert footer is not None and footer.lost_total == 0
    changes = footer.counters["txq_counts"]["changes"]
    assert sum(changes.values()) == n == footer.events
    assert sum(footer.counters["txq_counts"]["calls"].values()) >= n


def test_replay_in_the_vm_prints_the_live_histogram(lab_run: LabOut) -> None:
    _, live, trace = lab_run
    assert_replay_prints(live, trace)


def test_nothing_left_attached_after_the_lab(lab_run: LabOut) -> None:
    assert attached_residue() == []


def test_cli_lab_ctrl_c_prints_histogram_and_detaches(out_dir: Path) -> None:
    """The headline command through the real CLI, stopped with Ctrl-C mid-run."""
    trace = out_dir / "txq-flip-sigint.tkt"

    def traffic_flows(p: subprocess.Popen[str]) -> None:
        # Readiness, not a guess: iperf3's traffic is flowing through the lab's qdisc.
        ns = f"tklab{p.pid}a"
        deadline = time.monotonic() + 300
        while sum(parse_tc_queue_packets(tc_of(ns)).values()) < 2000:
            assert p.poll() is None and time.monotonic() < deadline, "no traffic in the lab"
            time.sleep(0.2)

    p, out, err = run_then_signal(
        (
            "lab",
            "txq-flip",
            "--duration",
            "120",
            "--sink",
            "hist",
            "--sink",
            f"msgpack={trace}",
            "--force",
        ),
        "attached",
        signal.SIGINT,
        wait=traffic_flows,
    )
    assert p.returncode == 0, err
    assert "@queue_after[" in out and "iperf3:" in out
    r, n = trace_batch_rows(trace)
    assert r.footer is not None and r.footer.interrupted and r.footer.events == n > 0
    assert attached_residue() == []


def test_sigterm_during_run_detaches_and_file_replays(out_dir: Path) -> None:
    trace = out_dir / "txq-flip-sigterm.tkt"
    p, _, err = run_then_signal(
        ("run", "txq-flip", "--sink", f"msgpack={trace}", "--force"),
        "attached",
        signal.SIGTERM,
        wait=lambda p: time.sleep(1),
    )
    assert p.returncode == 0, err
    r = TraceReader(str(trace))
    list(r.records())
    assert r.footer is not None and r.footer.interrupted
    assert attached_residue() == []


def test_check_reports_attach_points() -> None:
    r = tracekit("check", "txq-flip")
    assert r.returncode == 0, r.stdout + r.stderr
    # In kallsyms is not enough: the kernel takes kprobes and ftrace can trace it.
    assert (
        "ok   kprobe:netdev_pick_tx: present in kallsyms and available_filter_functions; "
        "kprobes via " in r.stdout
    ), r.stdout


def test_ctrl_c_during_compile_leaves_nothing(out_dir: Path) -> None:
    """SIGINT while BCC compiles (the lab's namespaces already exist)."""
    p, _, err = run_then_signal(
        ("lab", "txq-flip", "--duration", "60", "--loader", "bcc"),
        "compiling",
        signal.SIGINT,
        wait=lambda p: time.sleep(3),
        timeout=600,
    )
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "tracekit: interrupted before tracing started: nothing attached, nothing recorded"
    ), err
    assert "Traceback" not in err
    assert attached_residue() == []
