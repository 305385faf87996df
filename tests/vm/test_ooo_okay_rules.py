"""ooo-okay names the rule each kernel applies, against a second tracer.

bpftrace reads ``skb->ooo_okay`` where the kernel uses it, at ``netdev_pick_tx``,
for the same sockets: the flags the probe reports (TCP at ``ip_queue_xmit``; UDP
at ``skb_set_owner_w`` on 6.19+) must be the flags that reached the queue choice,
skb for skb in count, and each must follow from the inputs the probe reported by
the rule it named. Before 6.19 the probe does not attach for UDP, and bpftrace
shows that the kernel indeed never sets the flag on a UDP skb.
"""

from __future__ import annotations

import functools
import platform
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tracekit.base.kernel import kernel_version
from tracekit.lab.netns import ADDR_A, ADDR_B, NetnsLab
from tracekit.live.run import Compiled

pytestmark = pytest.mark.vm

RUNNING = kernel_version(platform.release()) or (0,)
UDP_PORT, SINK_PORT = 40001, 9999
TCP_PORT = 5201  # iperf3's
# The kernels' own rules (net/ipv4/tcp_output.c, net/core/sock.c), as the test states them.
TCP_RULE = "tcp_wmem_rtx" if RUNNING >= (6, 6) else "tcp_wmem"
OWNER_W = RUNNING >= (6, 19)

# Counts by flag at netdev_pick_tx, for the lab's UDP socket and the TCP sockets to
# iperf3's port (skc_dport is in network order: 5201 reads 0x5114 on x86).
BPFTRACE = f"""
BEGIN {{ printf("ready\\n"); }}
kprobe:netdev_pick_tx {{
    $skb = (struct sk_buff *)arg1;
    $sk = $skb->sk;
    if ($sk != 0) {{
        if ($sk->sk_protocol == 17 && $sk->__sk_common.skc_num == {UDP_PORT}) {{
            @udp[$skb->ooo_okay] = count();
        }}
        if ($sk->sk_protocol == 6 && $sk->__sk_common.skc_dport == 0x5114) {{
            @tcp[$skb->ooo_okay] = count();
        }}
    }}
}}
"""

# Bursts of datagrams from one connected UDP socket, each burst sent at once into a
# paced fq (so the later ones find the earlier ones queued), then waiting until the
# socket has nothing in flight (/proc/net/udp's tx_queue is sk_wmem_alloc_get()).
SENDER = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{ADDR_A}", {UDP_PORT}))
s.connect(("{ADDR_B}", {SINK_PORT}))
local = "%08X:%04X" % (int.from_bytes(socket.inet_aton("{ADDR_A}"), "little"), {UDP_PORT})
def in_flight():
    for line in open("/proc/net/udp").read().splitlines()[1:]:
        f = line.split()
        if f[1] == local:
            return int(f[4].split(":")[0], 16)
    raise SystemExit("socket not in /proc/net/udp")
sent = 0
for burst in range(int(sys.argv[1])):
    for _ in range(int(sys.argv[2])):
        s.send(b"x" * 1000)
        sent += 1
    deadline = time.monotonic() + 60
    while in_flight():
        if time.monotonic() > deadline:
            raise SystemExit("the qdisc never drained the socket")
        time.sleep(0.01)
print(sent)
"""

SINK = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{ADDR_B}", {SINK_PORT}))
while True:
    s.recv(2048)
"""


@functools.cache  # one answer per boot; each lab run starts a Bpftrace
def bpftrace_without_btf() -> bool:
    """Whether ``bpftrace --info`` says it cannot use the kernel's BTF here."""
    info = subprocess.run(
        ["bpftrace", "--info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ).stdout
    return re.search(r"^\s*btf: no\s*$", info, re.M) is not None


class Bpftrace:
    """The second tracer: started and awaited (its BEGIN runs once every probe is
    attached), stopped with SIGINT, its maps read from what it prints on exit."""

    def __init__(self, script: str) -> None:
        if bpftrace_without_btf():
            # Bookworm's bpftrace (0.17) on 5.10 says "btf: no" (the kernel has
            # vmlinux BTF) and then knows no struct: the kernel's headers tell it.
            script = "#include <linux/skbuff.h>\n#include <net/sock.h>\n" + script
        self.p = subprocess.Popen(
            ["bpftrace", "-B", "line", "-e", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.p.stdout is not None
        seen = []
        for line in self.p.stdout:
            seen.append(line)
            if line.strip() == "ready":
                return
        raise AssertionError(f"bpftrace exited before attaching: {''.join(seen)[-2000:]}")

    def stop(self) -> dict[str, Counter[int]]:
        self.p.send_signal(signal.SIGINT)
        out, _ = self.p.communicate(timeout=120)
        maps: dict[str, Counter[int]] = {}
        for m in re.finditer(r"^@(\w+)\[(\d+)\]: (\d+)$", out, re.M):
            maps.setdefault(m.group(1), Counter())[int(m.group(2))] = int(m.group(3))
        return maps


def _wait_listening(lab: NetnsLab, port: int) -> None:
    deadline = time.monotonic() + 60
    while not lab.ns(lab.ns_b, "ss", "-ulnH", "sport", "=", f":{port}", check=False).strip():
        assert time.monotonic() < deadline, f"UDP sink not bound to {port} after 60 s"
        time.sleep(0.05)


def _wait_tcp_closed(lab: NetnsLab) -> None:
    deadline = time.monotonic() + 60
    ss = ("ss", "-tnH", "exclude", "time-wait", "dport", "=", f":{TCP_PORT}")
    while lab.ns(lab.ns_a, *ss, check=False).strip():
        assert time.monotonic() < deadline, "iperf3's sockets still open after 60 s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def traced(ooo_compiled: Compiled) -> dict[str, object]:
    """One lab run: bpftrace, then the probe, then TCP and UDP traffic; both tracers
    stopped only after all of it."""
    probe = ooo_compiled.probe
    rows: list[tuple[object, ...]] = []
    # fq paces each flow at 400 kbit/s, so datagrams of a burst wait in the qdisc: below
    # fq's low_rate_threshold (550 kbit/s) every packet is paced, none rides on the
    # initial credit a flow gets when it wakes up.
    with NetnsLab(txqueues=4, qdisc="fq", qdisc_args=("maxrate", "400kbit")) as lab:
        sink = lab.popen(lab.ns_b, sys.executable, "-c", SINK)
        _wait_listening(lab, SINK_PORT)
        server = lab.start_server(1)
        bt = Bpftrace(BPFTRACE)
        try:
            probe.open_output()
            probe.attach(ooo_compiled.points)
            client = lab.start_client(0, 3)
            while client.poll() is None:
                rows += probe.poll(50)
            assert client.returncode == 0, client.communicate()[1]
            server.wait(timeout=60)
            _wait_tcp_closed(lab)  # the client's last segments are out
            sender = lab.popen(lab.ns_a, sys.executable, "-c", SENDER, "6", "20")
            while sender.poll() is None:
                rows += probe.poll(50)
            out, err = sender.communicate()
            assert sender.returncode == 0, err
            counters = probe.read_counters()
        finally:
            probe.detach()
            maps = bt.stop()
            sink.kill()
        rows += probe.poll(0)
    names = probe.spec.schema.names
    events = [dict(zip(names, r, strict=True)) for r in rows]
    return {
        "events": events,
        "maps": maps,
        "sent": int(out),
        "counters": counters,
        "points": {ap.describe() for ap in ooo_compiled.points},
    }


def _named(events: list[dict[str, object]], field: str, choices: tuple[str, ...]) -> list[str]:
    return [choices[int(e[field])] for e in events]  # type: ignore[call-overload]


def _udp(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """The lab socket's events (a TCP socket may have the same local port)."""
    from tracekit.probes.ooo_okay import TRANSPORTS

    return [
        e
        for e in events
        if e["sport"] == UDP_PORT and TRANSPORTS[int(e["transport"])] != "tcp"  # type: ignore[call-overload]
    ]


def _check_rule(events: list[dict[str, object]], counters: dict[str, dict[int, int]]) -> None:
    """Each event's flag is its rule applied to its inputs, but for the skbs the probe
    itself counted as changed between the kernel's test and its read (a race)."""
    from tracekit.probes.ooo_okay import RULES

    wrong = []
    for e in events:
        rule = RULES[int(e["rule"])]  # type: ignore[call-overload]
        expected = bool(e["wmem_low"]) or (rule == "tcp_wmem_rtx" and bool(e["rtx_empty"]))
        assert bool(e["wmem_low"]) == (int(e["wmem"]) < int(e["threshold"])), e  # type: ignore[call-overload]
        if bool(e["ooo_okay"]) != expected:
            wrong.append(e)
    assert len(wrong) <= max(1, len(events) // 100), wrong[:5]
    assert sum(counters["not_as_rule"].values()) >= len(wrong)


def test_tcp_flags_follow_this_kernels_rule_and_reach_netdev_pick_tx(
    traced: dict[str, object],
) -> None:
    from tracekit.probes.ooo_okay import RULES, TRANSPORTS

    events = [e for e in traced["events"] if e["dport"] == TCP_PORT]  # type: ignore[attr-defined]
    assert len(events) >= 20, len(events)
    assert set(_named(events, "transport", TRANSPORTS)) == {"tcp"}
    assert set(_named(events, "rule", RULES)) == {TCP_RULE}, platform.release()
    threshold = {int(e["threshold"]) for e in events}  # type: ignore[call-overload]
    assert len(threshold) == 1 and threshold.pop() > 512  # SKB_TRUESIZE(1): two structs
    _check_rule(events, traced["counters"]["ooo_counts"])  # type: ignore[index]
    flags = Counter(int(e["ooo_okay"]) for e in events)  # type: ignore[call-overload]
    assert flags == traced["maps"].get("tcp"), (flags, traced["maps"])  # type: ignore[attr-defined]
    assert flags[0] and flags[1], flags  # both outcomes, or the comparison shows little


@pytest.mark.skipif(
    not OWNER_W, reason=f"Linux {platform.release()} < 6.19: no skb_set_owner_w rule"
)
def test_udp_flags_follow_skb_set_owner_w_and_reach_netdev_pick_tx(
    traced: dict[str, object],
) -> None:
    from tracekit.probes.ooo_okay import RULES, TRANSPORTS

    assert {"kprobe:skb_set_owner_w", "kretprobe:skb_set_owner_w"} <= traced["points"]  # type: ignore[operator]
    events = _udp(traced["events"])  # type: ignore[arg-type]
    assert len(events) == traced["sent"], (len(events), traced["sent"])
    assert set(_named(events, "transport", TRANSPORTS)) == {"udp"}
    assert set(_named(events, "rule", RULES)) == {"owner_w"}
    assert {int(e["threshold"]) for e in events} == {1}  # type: ignore[call-overload]
    _check_rule(events, traced["counters"]["ooo_counts"])  # type: ignore[index]
    flags = Counter(int(e["ooo_okay"]) for e in events)  # type: ignore[call-overload]
    assert flags == traced["maps"].get("udp"), (flags, traced["maps"])  # type: ignore[attr-defined]
    # Each burst's first datagram found the socket idle; the others found it queued.
    assert flags[1] >= 6 and flags[0] >= 6 * 10, flags
    assert all(int(e["wmem"]) > 0 for e in events if not e["ooo_okay"])  # type: ignore[call-overload]


@pytest.mark.skipif(OWNER_W, reason=f"Linux {platform.release()} has skb_set_owner_w's rule")
def test_before_6_19_no_udp_skb_carries_the_flag(traced: dict[str, object]) -> None:
    assert not {p for p in traced["points"] if "skb_set_owner_w" in p}  # type: ignore[attr-defined]
    assert not _udp(traced["events"])  # type: ignore[arg-type]
    udp = traced["maps"].get("udp", Counter())  # type: ignore[attr-defined]
    assert udp == Counter({0: traced["sent"]}), udp


def test_the_report_names_the_rules_applied(traced: dict[str, object]) -> None:
    from tracekit.base.session import Summary
    from tracekit.probes.ooo_okay import report

    lines = report(Summary(counters=traced["counters"]))  # type: ignore[arg-type]
    text = "\n".join(lines)
    assert f"rule {TCP_RULE}:" in text, text
    assert ("rule owner_w:" in text) == OWNER_W, text
