"""The VM's NIC pair: two virtio-net NICs that ``vm/run`` wires together on the host.

``tx`` has one queue pair; ``rss`` has one RX queue per CPU and QEMU's virtio RSS:
QEMU picks the RX queue of each packet by a Toeplitz hash over the fields the
guest's driver asks for (``ethtool -N DEV rx-flow-hash udp4 sd`` hashes addresses
only, ``sdfn`` ports too), as the NIC of the RSS seed does. Each RX queue's
interrupt is pinned to one CPU, so the queue decides which CPU does the receive
work. The NICs are found by the MAC addresses ``vm/nics`` gives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MAC_TX = "52:54:00:7b:00:0a"
MAC_RSS = "52:54:00:7b:00:0b"
# ethtool's names for the hash fields: s/d = IP source/destination, f/n = the
# first/second two bytes of the L4 header (the UDP ports).
HASH_FIELDS = {"addresses": "sd", "ports": "sdfn"}


@dataclass(frozen=True)
class NicPair:
    tx: str
    rss: str


def _by_mac(root: Path = Path("/sys/class/net")) -> dict[str, str]:
    out = {}
    for dev in root.iterdir() if root.is_dir() else ():
        try:
            out[(dev / "address").read_text().strip().lower()] = dev.name
        except OSError:
            continue
    return out


def find_nic_pair(root: Path = Path("/sys/class/net")) -> NicPair | None:
    """The pair in this network namespace, or None (not in the VM, or booted without)."""
    macs = _by_mac(root)
    if MAC_TX in macs and MAC_RSS in macs:
        return NicPair(tx=macs[MAC_TX], rss=macs[MAC_RSS])
    return None


def rx_queue_irqs(virtio: str, interrupts: str) -> dict[int, int]:
    """RX queue -> IRQ number, from /proc/interrupts lines like ``25: ... virtio3-input.1``."""
    out = {}
    for line in interrupts.splitlines():
        m = re.match(rf"^\s*(\d+):.*\s{re.escape(virtio)}-input\.(\d+)\s*$", line)
        if m:
            out[int(m.group(2))] = int(m.group(1))
    return out


def parse_rx_queue_packets(ethtool_s: str) -> dict[int, int]:
    """RX queue -> packets, from virtio_net's ``ethtool -S`` (``rx_queue_N_packets``)."""
    return {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"^\s*rx_queue_(\d+)_packets:\s*(\d+)", ethtool_s, re.M)
    }
