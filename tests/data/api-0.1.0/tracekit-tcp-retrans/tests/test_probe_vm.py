"""tcp-retrans in tracekit's VM: the probe's segments against the kernel's TcpRetransSegs."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tracekit.lab.netns import DEV_A, NetnsLab

pytestmark = pytest.mark.vm


def snmp(lab: NetnsLab) -> dict[str, int]:
    """Tcp counters of /proc/net/snmp and TcpExt of /proc/net/netstat, in namespace A."""
    out: dict[str, int] = {}
    for f in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = lab.ns(lab.ns_a, "cat", f).splitlines()
        for head, vals in zip(lines[::2], lines[1::2], strict=True):
            prefix = head.split(":")[0]
            for k, v in zip(head.split()[1:], vals.split()[1:], strict=True):
                out[f"{prefix}.{k}"] = int(v)
    return out


def test_segments_match_tcp_retrans_segs(tracekit_run_probe: Callable) -> None:
    with NetnsLab(txqueues=1, qdisc="pfifo_fast") as lab:
        # Lose 3% of what A sends: TCP retransmits, and the kernel counts it.
        lab.ns(lab.ns_a, "tc", "qdisc", "replace", "dev", DEV_A, "root", "netem", "loss", "3%")
        lab.start_server(1)
        snap: dict[str, dict[str, int]] = {}

        def quiet() -> bool:
            # No socket left that could still retransmit (TIME-WAIT and LISTEN cannot).
            out = lab.ns(lab.ns_a, "ss", "-tanH", "state", "connected", "exclude", "time-wait")
            return not out.strip()

        def traffic() -> None:
            snap["before"] = snmp(lab)
            client = lab.start_client(0, 4)
            client.wait(timeout=120)
            deadline = time.monotonic() + 30
            while not quiet() and time.monotonic() < deadline:
                time.sleep(0.2)

        out = tracekit_run_probe("tcp-retrans", traffic, sinks=["hist"])
        # After detach: the kernel's window now covers the probe's whole window, and
        # nothing was left to retransmit once the sockets had closed.
        snap["after"] = snmp(lab)
    d = {k: snap["after"][k] - snap["before"].get(k, 0) for k in snap["after"]}
    probe_segs = sum(out.summary.counters["retrans_counts"]["segments"].values())
    assert d["Tcp.RetransSegs"] > 0
    # TcpRetransSegs also counts retransmits that failed to leave (TCPRetransFail);
    # the tracepoint fires only for those that left. (SYN-ACK retransmits, which have
    # their own tracepoint, happen on the server's side, in namespace B.)
    missing = d["Tcp.RetransSegs"] - probe_segs
    assert 0 <= missing <= d.get("TcpExt.TCPRetransFail", 0), d
    assert "@retransmits[" in out.stdout
