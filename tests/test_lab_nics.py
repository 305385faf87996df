"""Parsing what the VM's NIC pair exposes (the kernel part runs in tests/vm)."""

from __future__ import annotations

from pathlib import Path

from tracekit.lab.nics import (
    MAC_RSS,
    MAC_TX,
    NicPair,
    find_nic_pair,
    parse_rx_queue_packets,
    rx_queue_irqs,
)

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

