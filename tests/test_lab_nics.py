"""Parsing what the VM's NIC pair exposes (the kernel part runs in tests/vm)."""

from __future__ import annotations

import errno
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.lab.nics import (
    MAC_RSS,
    MAC_TX,
    NicPair,
    find_nic_pair,
    parse_rx_queue_packets,
    rx_queue_irqs,
)
from tracekit.lab.qstats import QstatsUnavailable, parse_rx_packets, qstats_dump

INTERRUPTS = """\
           CPU0       CPU1
 24:          0          0   PCI-MSI 49152-edge      virtio2-config
 25:       1520          3   PCI-MSI 49153-edge      virtio2-input.0
 26:          1          0   PCI-MSI 49154-edge      virtio2-output.0
 27:          0          0   PCI-MSI 65536-edge      virtio3-config
 28:         40          0   PCI-MSI 65537-edge      virtio3-input.0
 29:          0          0   PCI-MSI 65538-edge      virtio3-output.0
 30:          0        977   PCI-MSI 65539-edge      virtio3-input.1
 31:          0          0   PCI-MSI 65540-edge      virtio3-output.1
 32:          2          0   PCI-MSI 65541-edge      virtio13-input.0
"""

ETHTOOL_S = """\
NIC statistics:
     rx_queue_0_packets: 2345
     rx_queue_0_bytes: 2345000
     rx_queue_0_drops: 0
     rx_queue_1_packets: 17
     tx_queue_0_packets: 12
"""


def test_rx_queue_irqs_are_those_of_the_nic_only() -> None:
    assert rx_queue_irqs("virtio3", INTERRUPTS) == {0: 28, 1: 30}
    assert rx_queue_irqs("virtio1", INTERRUPTS) == {}


def test_rx_queue_packets_from_ethtool_statistics() -> None:
    assert parse_rx_queue_packets(ETHTOOL_S) == {0: 2345, 1: 17}


def test_nic_pair_is_found_by_mac_or_not_at_all(tmp_path: Path) -> None:
    for name, mac in (("lo", "00:00:00:00:00:00"), ("eth0", MAC_TX), ("eth1", "52:54:00:00:00:01")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(mac + "\n")
    assert find_nic_pair(tmp_path) is None
    (tmp_path / "eth2").mkdir()
    (tmp_path / "eth2" / "address").write_text(MAC_RSS.upper() + "\n")
    assert find_nic_pair(tmp_path) == NicPair(tx="eth0", rss="eth2")
    assert find_nic_pair(tmp_path / "absent") is None


# What each row's RSS NIC reported after the same traffic (vm/capture-nic-stats: UDP
# over 8 flows hashed by ports, so both RX queues got some), captured in its guest.
CAPTURED = Path(__file__).parent / "data" / "nic-stats"


# 6.1 (ethtool -S) and 6.12, 7.2 (netlink only) are the two shapes.
ROWS = sorted(d.name for d in CAPTURED.iterdir() if d.is_dir())


def test_both_shapes_of_per_queue_counters_are_captured() -> None:
    assert {"6.1", "6.12", "7.2"} <= set(ROWS), ROWS


@pytest.mark.parametrize("row", ROWS)
def test_each_kernels_rx_queue_counters_add_up_to_the_devices(row: str) -> None:
    d = CAPTURED / row
    from_ethtool = parse_rx_queue_packets((d / "ethtool-S.txt").read_text())
    raw = d / "qstats.bin"
    from_netlink = parse_rx_packets(raw.read_bytes()) if raw.exists() else {}
    # virtio_net moved them from ethtool -S to the netdev family in 6.10.
    assert bool(from_ethtool) == (row == "6.1")
    assert bool(from_netlink) == (row != "6.1")
    per_queue = from_ethtool or from_netlink
    assert sorted(per_queue) == [0, 1] and all(n > 100 for n in per_queue.values()), per_queue
    # The device's own total (sysfs), read just after: the queues are all of it.
    total = int((d / "rx_packets").read_text())
    assert 0 <= total - sum(per_queue.values()) <= 4, (total, per_queue)


def test_a_reply_that_overruns_or_carries_an_error_is_refused() -> None:
    reply = (CAPTURED / "7.2" / "qstats.bin").read_bytes()
    with pytest.raises(ValueError):
        parse_rx_packets(reply[:-4])
    # NLMSG_ERROR with -EOPNOTSUPP, as a kernel whose driver has no queue stats sends.
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -95) + bytes(16)
    with pytest.raises(OSError) as exc:
        parse_rx_packets(err)
    assert exc.value.errno == errno.EOPNOTSUPP


def _virtio_nics() -> list[str]:
    root = Path("/sys/class/net")
    return [
        d.name
        for d in sorted(root.iterdir())
        if (d / "device" / "driver").exists()
        and (d / "device" / "driver").resolve().name == "virtio_net"
    ]


@pytest.mark.skipif(not _virtio_nics(), reason="no virtio_net device on this machine")
def test_this_machines_virtio_nic_queues_add_up_to_its_sysfs_total() -> None:
    """Live, on this kernel: the client against the kernel's own per-device count."""
    dev = _virtio_nics()[0]
    stat = Path(f"/sys/class/net/{dev}/statistics/rx_packets")
    ifindex = int(Path(f"/sys/class/net/{dev}/ifindex").read_text())
    before = int(stat.read_text())
    try:
        got = parse_rx_packets(qstats_dump(ifindex))
    except QstatsUnavailable:
        pytest.skip("this kernel has no queue statistics over netlink")
    after = int(stat.read_text())
    assert got and before <= sum(got.values()) <= after, (before, got, after)


def test_qstats_command_names_a_missing_device_in_one_line() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "tracekit.lab.qstats", "tk-nosuch0"], capture_output=True, text=True
    )
    assert p.returncode == 2 and p.stderr.startswith("tracekit: no network device 'tk-nosuch0'")
    assert "Traceback" not in p.stderr
