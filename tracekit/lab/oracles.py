"""What the kernel counts by itself, read beside a probe: the labs' oracles.

``/proc/net/softnet_stat`` (receive work per CPU) and fq's ``tc -s qdisc`` counters;
the per-TX-queue packets (``tc``) and the NIC's RX queue counters are read by
``NetnsLab`` (tracekit/lab/netns.py), which knows the devices.
"""

from __future__ import annotations

import re
from pathlib import Path


def read_softnet() -> dict[int, int]:
    """Packets processed per CPU: /proc/net/softnet_stat's first column (hex)."""
    out: dict[int, int] = {}
    lines = Path("/proc/net/softnet_stat").read_text().splitlines()
    for i, line in enumerate(lines):
        cols = line.split()
        # Since 5.10 the 13th column is the CPU id; before, rows are online CPUs in order.
        cpu = int(cols[12], 16) if len(cols) >= 13 else i
        out[cpu] = int(cols[0], 16)
    return out


def parse_fq_stats(text: str) -> dict[int, dict[str, int]]:
    """Per TX queue of an mq device: fq's ``throttled`` and ``flows_plimit`` counters.

    tc prints ``flows_plimit`` only when it is not zero.
    """
    out: dict[int, dict[str, int]] = {}
    current: int | None = None
    for line in text.splitlines():
        m = re.match(r"^qdisc fq \S+ parent 1:([0-9a-f]+)", line)
        if m:
            current = int(m.group(1), 16) - 1
            out[current] = {"throttled": 0, "flows_plimit": 0, "dropped": 0}
            continue
        if line.startswith("qdisc "):
            current = None
            continue
        if current is None:
            continue
        m = re.search(r"\(dropped (\d+),", line)
        if m:
            out[current]["dropped"] = int(m.group(1))
        # "flows N (inactive N throttled N)" counts flows throttled now; the
        # cumulative counter is on the "gc ... throttled N ... flows_plimit N" line.
        if line.strip().startswith("gc "):
            m = re.search(r"\bthrottled (\d+)", line)
            if m:
                out[current]["throttled"] = int(m.group(1))
            m = re.search(r"\bflows_plimit (\d+)", line)
            if m:
                out[current]["flows_plimit"] = int(m.group(1))
    return out
