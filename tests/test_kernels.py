"""What changed between the kernels of the matrix (docs/kernels.md), checked on the host."""

from __future__ import annotations

from tracekit.lab.nics import parse_rx_queue_packets

# virtio_net's `ethtool -S` on 6.12 and 7.2 (made up from the modules' formats rx%u_%s and
# rx%u_hw_%s): rxN_hw_* are the device's own counters, not the driver's RX packets.
ETHTOOL_S_612 = """\
NIC statistics:
     rx_packets: 24148
     rx0_packets: 9076
     rx0_bytes: 9434128
     rx0_hw_packets: 1
     rx1_packets: 15036
     rx1_bytes: 15623001
     tx0_packets: 14
"""


def test_rx_queue_packets_from_612_and_later_virtio_net() -> None:
    assert parse_rx_queue_packets(ETHTOOL_S_612) == {0: 9076, 1: 15036}
