"""A two-namespace network lab: a veth pair (or the VM's NIC pair) between ``A`` and ``B``.

Everything the lab creates lives in namespaces it made itself, named after its
process id; it never touches interfaces or addresses outside them, and it deletes
them on exit, on Ctrl-C and on SIGTERM. Namespaces left by a lab that was killed
(SIGKILL) are removed by the next lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tracekit.base import kernel
from tracekit.base.errors import LabError
from tracekit.lab.nics import (
    NicPair,
    find_nic_pair,
    parse_rx_queue_packets,
    rx_queue_irqs,
)

PREFIX = "tklab"
ADDR_A, ADDR_B = "10.201.0.1", "10.201.0.2"
DEV_A, DEV_B = "tk0", "tk1"
TOOLS = ("ip", "tc", "iperf3", "taskset")


def _run(args: Sequence[str], check: bool = True, timeout: float = 60) -> str:
    try:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{args[0]} is not installed") from None
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(args)} failed: {(p.stderr or p.stdout).strip()[:300]}")
    return p.stdout


def remove_stale_labs() -> list[str]:
    removed = []
    out = _run(["ip", "netns", "list"], check=False)
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{PREFIX}(\d+)[ab]$", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


def lab_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False)
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(PREFIX)]


@dataclass
class IperfResult:
    bits_per_second: float
    retransmits: int
    seconds: float
    bytes_sent: int = 0
    # UDP only: datagrams the server received (from its report in the client's JSON).
    packets_received: int | None = None

    @property
    def mbit(self) -> float:
        return self.bits_per_second / 1e6


class NetnsLab:
    """``with NetnsLab(txqueues=4, qdisc="fq") as lab:`` builds the pair, then removes it.

    ``A`` holds ``tk0`` (``txqueues`` TX queues under an ``mq`` root with one
    ``qdisc`` child per queue, XPS mapping CPU n to queue n); ``B`` holds ``tk1``
    with a single TX queue, so only ``tk0`` goes through ``netdev_pick_tx``.

    ``link="nics"`` uses the VM's two virtio-net NICs instead of a veth (see
    ``tracekit.lab.nics``): ``tk0`` is the one-queue NIC, ``tk1`` the RSS NIC,
    whose RX queue n interrupts CPU n. They go back to the root namespace, under
    their own names, when the lab ends.
    """

    def __init__(
        self,
        txqueues: int = 4,
        qdisc: str = "fq",
        qdisc_args: Sequence[str] = (),
        link: str = "veth",
    ) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (it creates network namespaces)")
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            raise LabError(
                f"the lab needs {', '.join(missing)}: apt-get install iproute2 iperf3 util-linux"
            )
        self.nics: NicPair | None = None
        if link == "nics":
            self.nics = find_nic_pair()
            if self.nics is None:
                raise LabError(
                    "no RSS NIC pair here: it exists in VMs booted by vm/run (see vm/nics)"
                )
            txqueues = 1
        elif link != "veth":
            raise LabError(f"unknown lab link {link!r} (veth or nics)")
        self.txqueues = txqueues
        self.qdisc = qdisc
        self.qdisc_args = tuple(qdisc_args)
        self.ns_a = f"{PREFIX}{os.getpid()}a"
        self.ns_b = f"{PREFIX}{os.getpid()}b"
        # The interface names, for a test's tc/ethtool commands without a second import.
        self.dev_a, self.dev_b = DEV_A, DEV_B
        self.ifindex_a = 0
        self._procs: list[subprocess.Popen[str]] = []

    # -- helpers -------------------------------------------------------------------

    def ns(self, which: str, *args: str, check: bool = True) -> str:
        return _run(["ip", "netns", "exec", which, *args], check=check)

    def popen(self, which: str, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            ["ip", "netns", "exec", which, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches tracekit, which stops them itself
        )
        self._procs.append(p)
        return p

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        remove_stale_labs()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def _build(self) -> None:
        a, b = self.ns_a, self.ns_b
        _run(["ip", "netns", "add", a])
        _run(["ip", "netns", "add", b])
        if self.nics is not None:
            self._take_nics()
        else:
            self._add_veth()
        self._configure()

    def _take_nics(self) -> None:
        assert self.nics is not None
        virtio = Path(os.readlink(f"/sys/class/net/{self.nics.rss}/device")).name
        for dev, ns, name in ((self.nics.tx, self.ns_a, DEV_A), (self.nics.rss, self.ns_b, DEV_B)):
            _run(["ip", "link", "set", dev, "down"])
            _run(["ip", "link", "set", dev, "netns", ns])
            self.ns(ns, "ip", "link", "set", dev, "name", name)
        # Take the NIC's hash (virtio hash report) into skb->hash, as real NICs do.
        self.ns(self.ns_b, "ethtool", "-K", DEV_B, "rxhash", "on")
        # Each RX queue's interrupt on its own CPU (the NIC driver only hints at
        # this): which queue RSS picks then decides which CPU does the receive work.
        ncpus = kernel.ncpus()
        for q, irq in rx_queue_irqs(virtio, Path("/proc/interrupts").read_text()).items():
            Path(f"/proc/irq/{irq}/smp_affinity_list").write_text(f"{q % ncpus}\n")

    def _add_veth(self) -> None:
        a, b = self.ns_a, self.ns_b
        n = str(self.txqueues)
        _run(
            [
                "ip",
                "link",
                "add",
                DEV_A,
                "netns",
                a,
                "numtxqueues",
                n,
                "numrxqueues",
                n,
                "type",
                "veth",
                "peer",
                "name",
                DEV_B,
                "netns",
                b,
                "numtxqueues",
                "1",
                "numrxqueues",
                n,
            ]
        )

    def _configure(self) -> None:
        a, b = self.ns_a, self.ns_b
        for ns in (a, b):
            # No IPv6: router solicitations and ND would add packets the probes and
            # the counters would both see, but that the tests do not drive.
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            self.ns(ns, "ip", "link", "set", "lo", "up")
        self.ns(a, "ip", "addr", "add", f"{ADDR_A}/24", "dev", DEV_A)
        self.ns(b, "ip", "addr", "add", f"{ADDR_B}/24", "dev", DEV_B)
        self.ns(a, "ip", "link", "set", DEV_A, "up")
        self.ns(b, "ip", "link", "set", DEV_B, "up")
        if self.txqueues == 1:
            # mq needs several queues: one queue gets the qdisc at the root.
            self.ns(a, "tc", "qdisc", "replace", "dev", DEV_A, "root", self.qdisc, *self.qdisc_args)
        else:
            self.ns(a, "tc", "qdisc", "replace", "dev", DEV_A, "root", "handle", "1:", "mq")
            for q in range(self.txqueues):
                self.ns(
                    a,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    DEV_A,
                    "parent",
                    f"1:{q + 1:x}",
                    self.qdisc,
                    *self.qdisc_args,
                )
        ncpus = kernel.ncpus()
        # XPS only means something with several queues (the kernel refuses it on one).
        for q in range(self.txqueues if self.txqueues > 1 else 0):
            mask = (1 << q) if q < ncpus else 0
            self.ns(a, "sh", "-c", f"echo {mask:x} > /sys/class/net/{DEV_A}/queues/tx-{q}/xps_cpus")
        self.ifindex_a = int(self.ns(a, "cat", f"/sys/class/net/{DEV_A}/ifindex").strip())
        self.wait_reachable()

    def wait_reachable(self, timeout: float = 60.0) -> None:
        """Wait until A has resolved B's address over the link (ARP answered).

        A link set up is not yet a link that passes traffic: the VM's NIC pair goes
        through taps and a bridge outside the guest, and a client started too early
        fails with "No route to host" (which the lab used to hide as a run with no
        traffic). A datagram to B makes A ask; B's hardware address in A's neighbour
        table means the path works both ways.
        """
        poke = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(b'tracekit', ('{ADDR_B}', 9))"
        )
        deadline = time.monotonic() + timeout
        while True:
            self.ns(self.ns_a, sys.executable, "-c", poke, check=False)
            neigh = self.ns(self.ns_a, "ip", "neigh", "show", ADDR_B, "dev", DEV_A, check=False)
            if "lladdr" in neigh:
                return
            if time.monotonic() > deadline:
                hint = (
                    " (the VM's NIC pair: see docs/reliability.md, 'NIC pair stalls')"
                    if self.nics is not None
                    else ""
                )
                raise LabError(
                    f"{ADDR_B} did not answer ARP from {DEV_A} within {timeout:.0f}s: "
                    f"the link passes no traffic{hint}"
                )
            time.sleep(0.1)

    def teardown(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
                with contextlib.suppress(Exception):
                    p.wait(timeout=5)
        if self.nics is not None:
            # Deleting a namespace would return the NICs as tk0/tk1: give them back
            # their names first, so the root namespace looks as it did.
            for ns, name, orig in (
                (self.ns_a, DEV_A, self.nics.tx),
                (self.ns_b, DEV_B, self.nics.rss),
            ):
                self.ns(ns, "ip", "link", "set", name, "down", check=False)
                self.ns(ns, "ip", "link", "set", name, "name", orig, check=False)
                self.ns(ns, "ip", "link", "set", orig, "netns", "1", check=False)
        for ns in (self.ns_a, self.ns_b):
            _run(["ip", "netns", "del", ns], check=False)

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- measurements --------------------------------------------------------------

    def queue_packets(self) -> dict[int, int]:
        """Packets sent per TX queue of tk0, from the mq children in ``tc -s qdisc``."""
        out = self.ns(self.ns_a, "tc", "-s", "qdisc", "show", "dev", DEV_A)
        return parse_tc_queue_packets(out)

    def rx_queue_packets(self) -> dict[int, int]:
        """Packets received per RX queue of the RSS NIC (its own counters), else {}.

        ``ethtool -S`` has them up to 6.9 (``rx_queue_N_packets``); from 6.10 on
        virtio_net gives them only to the netdev netlink family's queue statistics
        (``tracekit.lab.qstats``), run in B's namespace, where the NIC is.
        """
        if self.nics is None:
            return {}
        got = parse_rx_queue_packets(self.ns(self.ns_b, "ethtool", "-S", DEV_B))
        if got:
            return got
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns_b, sys.executable, "-m", "tracekit.lab.qstats", DEV_B],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if p.returncode == 3:  # no queue statistics in this kernel or driver either
            return {}
        if p.returncode != 0:
            raise LabError(f"reading {DEV_B}'s queue statistics failed: {p.stderr.strip()[:300]}")
        return {int(q): int(n) for q, n in json.loads(p.stdout)["rx"].items()}

    def set_rx_flow_hash(self, fields: str) -> None:
        """What the RSS NIC hashes for UDP over IPv4: ``sd`` addresses, ``sdfn`` ports too."""
        if self.nics is None:
            raise LabError("RSS hash fields need the VM's NIC pair (--link nics)")
        self.ns(self.ns_b, "ethtool", "-N", DEV_B, "rx-flow-hash", "udp4", fields)
        got = self.ns(self.ns_b, "ethtool", "-n", DEV_B, "rx-flow-hash", "udp4")
        hashes_ports = "L4 bytes" in got
        if hashes_ports != ("f" in fields):
            raise LabError(f"ethtool did not set rx-flow-hash udp4 {fields}: {got.strip()}")

    def tc_stats(self) -> str:
        return self.ns(self.ns_a, "tc", "-s", "qdisc", "show", "dev", DEV_A)

    def start_server(self, cpu: int, timeout: float = 60.0) -> subprocess.Popen[str]:
        """iperf3 server in B pinned to ``cpu``, returned once it is listening.

        Readiness is awaited, not assumed: under emulation on a busy host iperf3 can
        take seconds to bind, and a server that died (port taken, bad option) is
        reported with its own words rather than as a client that found nobody.
        """
        p = self.popen(self.ns_b, "taskset", "-c", str(cpu), "iperf3", "-s", "-1", "-B", ADDR_B)
        deadline = time.monotonic() + timeout
        while True:
            if p.poll() is not None:
                _, err = p.communicate(timeout=5)
                raise LabError(f"iperf3 server exited ({p.returncode}): {err.strip()[:300]}")
            listening = self.ns(self.ns_b, "ss", "-ltnH", "sport", "=", ":5201", check=False)
            if listening.strip():
                return p
            if time.monotonic() > deadline:
                raise LabError(f"iperf3 server not listening on {ADDR_B}:5201 after {timeout:.0f}s")
            time.sleep(0.05)

    def start_client(
        self, cpu: int, seconds: float, extra: Sequence[str] = ()
    ) -> subprocess.Popen[str]:
        """iperf3 client in A pinned to ``cpu``; ``extra`` adds iperf3 options (-u, -b, -P)."""
        args = [
            "taskset",
            "-c",
            str(cpu),
            "iperf3",
            "-c",
            ADDR_B,
            "-J",
            "-t",
            str(max(1, round(seconds))),
            *extra,
        ]
        return self.popen(self.ns_a, *args)


def parse_tc_queue_packets(text: str) -> dict[int, int]:
    """Map TX queue number -> packets sent, from ``tc -s qdisc show`` of an mq device."""
    out: dict[int, int] = {}
    current: int | None = None
    for line in text.splitlines():
        m = re.match(r"^qdisc \S+ \S+ parent 1:([0-9a-f]+)", line)
        if m:
            current = int(m.group(1), 16) - 1
            continue
        if line.startswith("qdisc "):
            current = None
            continue
        m = re.match(r"^\s*Sent \d+ bytes (\d+) pkt", line)
        if m and current is not None:
            out[current] = int(m.group(1))
            current = None
    return out


def parse_iperf(stdout: str) -> IperfResult:
    """The client's ``-J`` report; iperf3's own error text when it has one."""
    try:
        data = json.loads(stdout)
    except ValueError:
        raise LabError(f"iperf3 gave no result: {stdout.strip()[:200]!r}") from None
    if not isinstance(data, dict):
        raise LabError(f"iperf3 gave no result: {stdout.strip()[:200]!r}")
    if data.get("error"):
        raise LabError(f"iperf3 failed: {str(data['error'])[:300]}")
    try:
        end = data["end"]
        sent = end.get("sum_sent") or end["sum"]
        received = end.get("sum_received") or {}
        udp = data.get("start", {}).get("test_start", {}).get("protocol") == "UDP"
        return IperfResult(
            float(sent["bits_per_second"]),
            int(sent.get("retransmits", 0)),
            float(sent.get("seconds", 0.0)),
            bytes_sent=int(sent.get("bytes", 0)),
            packets_received=(
                int(received["packets"]) - int(received.get("lost_packets", 0))
                if udp and "packets" in received
                else None
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise LabError(f"iperf3 gave no result: {stdout.strip()[:200]!r}") from None


def server_words(server: subprocess.Popen[str] | None) -> str:
    """The last lines an iperf3 server printed (it is stopped first if still running).

    When a client fails, the cause is often only on the server's side ("control
    socket has closed unexpectedly" says nothing about why the server closed it).
    """
    if server is None:
        return ""
    if server.poll() is None:
        server.terminate()
    try:
        out, err = server.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        server.kill()
        return ""
    lines = [ln.strip() for ln in f"{out or ''}\n{err or ''}".splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("-----")]
    return " | ".join(lines[-3:])[:400]


def finish_client(
    proc: subprocess.Popen[str],
    timeout: float = 30,
    server: subprocess.Popen[str] | None = None,
) -> IperfResult:
    """Wait for an iperf3 client and check that it moved traffic.

    A client that failed (its exit status, its JSON ``error``), sent nothing, or
    whose UDP datagrams never reached the server is a lab error naming the cause
    (and what the server said, when ``server`` is given): a lab that measured no
    workload must not report a result.
    """
    try:
        return _finish_client(proc, timeout)
    except LabError as exc:
        said = server_words(server)
        if said:
            raise LabError(f"{exc} (server: {said})") from None
        raise


def _finish_client(proc: subprocess.Popen[str], timeout: float) -> IperfResult:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        raise LabError(f"iperf3 client still running {timeout:.0f}s after its end") from None
    try:
        res = parse_iperf(out)
    except LabError as exc:
        if proc.returncode and err.strip():
            raise LabError(f"{exc} ({err.strip()[:200]})") from None
        raise
    if proc.returncode not in (0, None):
        raise LabError(f"iperf3 client exited with status {proc.returncode}: {err.strip()[:200]}")
    if res.bytes_sent <= 0:
        raise LabError("iperf3 client sent nothing: the lab's workload did not run")
    if res.packets_received == 0:
        raise LabError("iperf3's UDP datagrams never reached the server")
    return res
