"""fq-throttle in the VM: counts against `tc -s qdisc`'s throttled and flows_plimit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tracekit.lab.fq_throttle import FqThrottleResult, lab_fq_throttle
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus

from .conftest import attached_residue, trace_rows
from .helpers import assert_replay_prints, check_fq_throttle_against_tc, printed, tracekit

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def run(bus: Bus, fq_compiled: Compiled, out_dir: Path) -> tuple[FqThrottleResult, str]:
    return printed(
        lab_fq_throttle,
        bus,
        ("hist", f"msgpack={out_dir / 'fq-throttle.tkt'}"),
        4,
        compiled=fq_compiled,
        force=True,
        quiet=True,
    )


def test_counts_equal_the_qdisc_counters(run: tuple[FqThrottleResult, str]) -> None:
    check_fq_throttle_against_tc(run[0])


def test_events_carry_queue_and_flow(run: tuple[FqThrottleResult, str], out_dir: Path) -> None:
    res, _ = run
    reader, rows = trace_rows(out_dir / "fq-throttle.tkt")
    assert reader.footer is not None and reader.footer.lost_total == 0, reader.footer.lost
    drops = [r for r in rows if r["kind"] == 2]
    throttles = [r for r in rows if r["kind"] == 1]
    assert sum(r["count"] for r in drops) == sum(v["flows_plimit"] for v in res.fq_delta.values())
    assert sum(r["count"] for r in throttles) == sum(v["throttled"] for v in res.fq_delta.values())
    # Drops name the queue whose fq dropped them, and a UDP flow of the lab.
    per_queue: dict[int, int] = {}
    for r in drops:
        per_queue[r["queue"]] = per_queue.get(r["queue"], 0) + r["count"]
    assert per_queue == {q: v["flows_plimit"] for q, v in res.fq_delta.items() if v["flows_plimit"]}
    assert all(r["ifname"] == "tk0" and r["dport"] == 5201 for r in drops)
    # Throttles carry their flow too (one event per throttle, from fq's delayed tree):
    # the lab's UDP flows and iperf3's control connection, all to port 5201.
    assert throttles and all(r["count"] == 1 and r["dport"] == 5201 for r in throttles)
    assert all(r["flow_limit"] == 10 and r["maxrate"] == 1250000 for r in rows)


def test_live_hist_replays_identically(run: tuple[FqThrottleResult, str], out_dir: Path) -> None:
    _, live = run
    assert "@throttle_delay[kind=throttle, ifname=tk0," in live
    assert_replay_prints(live, out_dir / "fq-throttle.tkt")


def test_check_reports_module_not_loaded_then_ok() -> None:
    if subprocess.run(["rmmod", "sch_fq"], capture_output=True).returncode == 0:
        r = tracekit("check", "fq-throttle")
        assert r.returncode == 7, r.stdout
        assert "module sch_fq is not loaded" in r.stdout
        subprocess.run(["modprobe", "sch_fq"], check=True)
    r = tracekit("check", "fq-throttle")
    assert r.returncode == 0, r.stdout
    assert "ok   kprobe:fq_dequeue" in r.stdout


def test_nothing_left_attached() -> None:
    assert attached_residue() == []
