"""rss-cpu in the VM: per-CPU counts against /proc/net/softnet_stat, RPS spreading."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import pytest

from tracekit.base.hist import Histogram
from tracekit.base.stats import imbalance
from tracekit.lab.nics import find_nic_pair
from tracekit.lab.rss_cpu import RssCpuResult, lab_rss_cpu
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus

from .conftest import attached_residue, trace_rows
from .helpers import (
    SOFTNET_TOLERANCE,
    assert_replay_prints,
    check_rss_cpu_against_softnet,
    printed,
)

pytestmark = pytest.mark.vm

TOLERANCE = SOFTNET_TOLERANCE


@pytest.fixture(scope="module")
def runs(bus: Bus, rss_compiled: Compiled, out_dir: Path) -> dict[str, tuple[RssCpuResult, str]]:
    out = {}
    for spread in ("none", "rps"):
        out[spread] = printed(
            lab_rss_cpu,
            bus,
            ("hist", f"msgpack={out_dir / 'rss-cpu.tkt'}"),
            4,
            spread,
            compiled=rss_compiled,
            link="veth",
            force=True,
            quiet=True,
        )
    return out


@pytest.mark.parametrize("spread", ["none", "rps"])
def test_per_cpu_counts_match_softnet_stat(runs: dict, spread: str) -> None:
    check_rss_cpu_against_softnet(runs[spread][0])


def test_rps_spreads_the_receive_work(runs: dict) -> None:
    none, _ = runs["none"]
    rps, _ = runs["rps"]
    n = len(none.softnet_delta)
    _, _, before = imbalance(none.counter_delta("rss_counts", "packets"), n)
    _, _, after = imbalance(rps.counter_delta("rss_counts", "packets"), n)
    assert before > 0.9 * n, before  # nearly everything on the sender's CPU
    assert after < before - 0.2, (before, after)


def test_kernel_aggregate_and_streamed_events_agree(runs: dict, out_dir: Path) -> None:
    reader, rows = trace_rows(out_dir / "rss-cpu.rps.tkt")
    s, f = reader.session, reader.footer
    assert f is not None and f.kernel_agg
    assert f.lost_total == 0, f.lost
    names = s.schema.names
    for spec in s.schema.histograms:
        a, b = Histogram(spec, s.schema), Histogram(spec, s.schema)
        a.add_rows(tuple(r[n] for n in names) for r in rows)
        b.add_weighted(f.kernel_agg)
        assert a.render() == b.render()
    assert sum(f.counters["rss_counts"]["packets"].values()) == len(rows)


def test_live_output_names_the_busiest_cpu_and_replays_the_same(runs: dict, out_dir: Path) -> None:
    _, live = runs["none"]
    assert "busiest CPU: cpu0" in live and "imbalance" in live
    assert_replay_prints(live, out_dir / "rss-cpu.none.tkt")


@pytest.fixture(scope="module")
def nic_runs(bus: Bus, rss_compiled: Compiled, out_dir: Path) -> dict[str, RssCpuResult]:
    """The seed on the VM's virtio-net pair: RSS by addresses only, then by ports too."""
    pair = find_nic_pair()
    if pair is None:
        pytest.skip("this VM was booted without the NIC pair (vm/run --no-nics)")
    out = {}
    for spread in ("none", "rss"):
        with contextlib.redirect_stdout(io.StringIO()):
            out[spread] = lab_rss_cpu(
                bus,
                ("hist", f"msgpack={out_dir / 'rss-cpu-nic.tkt'}"),
                4,
                spread,
                rate="1M",
                flows=16,
                compiled=rss_compiled,
                link="nics",
                force=True,
                quiet=True,
            )
    # The NICs are back in the root namespace under their own names.
    assert find_nic_pair() == pair
    with (out_dir / "rss-cpu-nic.txt").open("w") as f:
        for spread, res in out.items():
            f.write(
                f"{spread}: probe {res.counter_delta('rss_counts', 'packets')} "
                f"softnet {res.softnet_delta} NIC rx queues {res.rxq_delta}\n"
            )
    return out


@pytest.mark.parametrize("spread", ["none", "rss"])
def test_nic_rx_queues_cpus_and_softnet_stat_agree(
    nic_runs: dict, spread: str, out_dir: Path
) -> None:
    """Three counts of the same packets: the NIC's per-queue counters, the kernel's
    per-CPU softnet_stat, and the probe (the lab pins queue n's interrupt to CPU n)."""
    res = nic_runs[spread]
    probe = res.counter_delta("rss_counts", "packets")
    assert sum(res.rxq_delta.values()) > 1000, res.rxq_delta
    for cpu, n in res.softnet_delta.items():
        assert abs(probe.get(cpu, 0) - n) <= TOLERANCE, (cpu, probe, res.softnet_delta)
    # softnet_stat also counts what the other NIC (tk0) receives: compare the NIC's
    # queues with the probe's events on tk1 alone.
    _, rows = trace_rows(out_dir / f"rss-cpu-nic.{spread}.tkt")
    on_rss_nic = Counter(r["cpu"] for r in rows if r["ifname"] == "tk1")
    for q, n in res.rxq_delta.items():
        assert abs(on_rss_nic.get(q, 0) - n) <= TOLERANCE, (q, on_rss_nic, res.rxq_delta)


def test_rss_over_ports_spreads_what_rss_over_addresses_piles_up(nic_runs: dict) -> None:
    none, rss = nic_runs["none"], nic_runs["rss"]
    n = len(none.softnet_delta)
    _, _, before = imbalance(none.rxq_delta, n)
    _, _, after = imbalance(rss.rxq_delta, n)
    # Hashing addresses only, 16 flows between two addresses share one queue.
    assert before > 0.95 * n, none.rxq_delta
    # With ports, all 16 land in one queue of two with probability 2^-15.
    assert after < before - 0.2, (none.rxq_delta, rss.rxq_delta)


def test_nic_events_carry_the_nics_hash_and_queue(nic_runs: dict, out_dir: Path) -> None:
    """The RSS NIC hands its Toeplitz hash to the kernel (virtio hash report): the
    flows share one hash when ports are left out of it, and each has its own when not."""
    for spread in ("none", "rss"):
        _, rows = trace_rows(out_dir / f"rss-cpu-nic.{spread}.tkt")
        udp = [r for r in rows if r["ifname"] == "tk1" and r["proto"] == 17 and r["dport"] == 5201]
        assert len(udp) > 1000
        assert len({r["sport"] for r in udp}) == 16
        hashes = {r["hash"] for r in udp}
        if spread == "none":
            assert len(hashes) == 1, sorted(hashes)[:5]
            assert not any(r["l4_hash"] for r in udp)
        else:
            assert len(hashes) == 16
            assert all(r["l4_hash"] for r in udp)
        assert all(r["rx_queue"] == r["cpu"] for r in udp)


def test_nothing_left_attached() -> None:
    assert attached_residue() == []
