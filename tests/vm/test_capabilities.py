"""Least privilege: tracekit run as an unprivileged user with only the capabilities
`tracekit check` asks for (setpriv ... --ambient-caps), checked against the kernel's
own counters; each capability of the set shown necessary by the kernel itself.

The user is nobody (65534), in no group; its only privileges are the ambient
capabilities setpriv gives it. Root (this test) builds the labs and reads the
oracles; the traced run is the unprivileged process's own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tracekit.bpf.preflight import required_capabilities
from tracekit.lab.netns import NetnsLab, finish_client
from tracekit.plugin.bus import build_bus

from .helpers import SOFTNET_TOLERANCE, check_txq_flip_against_tc, read_trace, too_old

pytestmark = pytest.mark.vm

NOBODY = 65534
BUILTIN = ("txq-flip", "rss-cpu", "fq-throttle", "ooo-okay")


def caps_of(probe: str) -> list[str]:
    spec = build_bus().probes.get(probe)
    return [c.removeprefix("CAP_").lower() for c in required_capabilities(spec, "core")]


def as_nobody(caps: list[str], argv: list[str]) -> list[str]:
    """``argv`` as nobody with exactly ``caps`` (names like ``bpf``) as ambient caps."""
    inh = ",".join(["-all", *(f"+{c}" for c in caps)])
    amb = ",".join(f"+{c}" for c in caps) or "-all"
    return [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        f"--inh-caps={inh}",
        f"--ambient-caps={amb}",
        "--",
        *argv,
    ]


@pytest.fixture
def nobody_dir(tmp_path: Path) -> Path:
    """A folder only nobody may write, for its trace."""
    d = tmp_path / "nobody"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    tmp_path.chmod(0o755)
    for p in tmp_path.parents:
        if p == Path("/tmp") or not os.access(p, os.X_OK):
            break
        if str(p).startswith("/tmp/"):
            p.chmod(p.stat().st_mode | 0o055)
    return d


PARANOID = Path("/proc/sys/kernel/perf_event_paranoid")


@pytest.fixture(autouse=True)
def perf_event_paranoid_2() -> object:
    """Debian's kernels at perf_event_paranoid 3 refuse a kprobe's perf event without
    CAP_SYS_ADMIN (README, "Kprobes on Debian's kernels"): the tests run with what the
    README tells users to set, 2 (the upstream default), and put it back."""
    before = PARANOID.read_text().strip()
    if int(before) > 2:
        PARANOID.write_text("2\n")
    yield
    PARANOID.write_text(before + "\n")


ATTACH = """
import sys
from tracekit.bpf.core import CoreProbe
from tracekit.bpf.core_build import find_object
from tracekit.bpf.preflight import preflight
from tracekit.plugin.bus import build_bus
spec = build_bus().probes.get(sys.argv[1]).resolved()
path, why = find_object(spec)
assert path is not None, why
_, points = preflight(spec, "core")  # the report is not raised: the kernel decides
try:
    p = CoreProbe(spec, spec.resolve_params({}), path)
    p.attach(points)
    p.close()
except Exception as exc:
    print("refused:", str(exc)[:200])
    sys.exit(3)
print("attached")
"""


@pytest.mark.parametrize(
    "probe",
    [
        pytest.param(
            p,
            marks=pytest.mark.xfail(
                reason="as nobody with CAP_BPF+CAP_PERFMON, fq-throttle's attach failed on "
                "7.2 and 7.3 in the CI rehearsal (cause not yet found: README's table "
                "does not claim it until it passes)",
                strict=False,
            ),
        )
        if p == "fq-throttle"
        else p
        for p in BUILTIN
    ],
)
def test_the_kernel_needs_each_capability_of_the_set(probe: str) -> None:
    """Loaded and attached past tracekit's own checks: with the set, it attaches; with
    any one of CAP_BPF and CAP_PERFMON missing, the kernel refuses."""
    if (need := too_old(probe)) is not None:
        pytest.skip(f"{probe} needs Linux {need}")
    subprocess.run(["modprobe", "sch_fq"], check=True)
    caps = caps_of(probe)
    full = subprocess.run(
        as_nobody(caps, [sys.executable, "-c", ATTACH, probe]),
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert full.returncode == 0 and "attached" in full.stdout, full.stdout + full.stderr
    results = {"+".join(caps): "attached"}
    for drop in ("bpf", "perfmon"):
        fewer = [c for c in caps if c != drop]
        r = subprocess.run(
            as_nobody(fewer, [sys.executable, "-c", ATTACH, probe]),
            capture_output=True,
            text=True,
            timeout=300,
            cwd="/",
        )
        assert r.returncode == 3 and "refused" in r.stdout, (drop, r.stdout + r.stderr)
        results["+".join(fewer) or "none"] = r.stdout.strip()
    print(probe, results)


def test_without_the_capabilities_one_line_names_them() -> None:
    r = subprocess.run(
        as_nobody(
            ["bpf"], [sys.executable, "-m", "tracekit", "run", "txq-flip", "--duration", "1"]
        ),
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert r.returncode == 4, r.stderr
    assert r.stderr.strip().splitlines() == [
        "tracekit: needs root or the capabilities CAP_PERFMON: run with sudo, or grant them "
        '(README, "Capabilities")'
    ]
    c = subprocess.run(
        as_nobody(caps_of("txq-flip"), [sys.executable, "-m", "tracekit", "check", "txq-flip"]),
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert c.stdout.splitlines()[0] == (
        "ready: txq-flip loads its CO-RE object from BTF, no compile"
    ), c.stdout
    assert c.returncode == 0 and "ok   privileges: capabilities CAP_BPF, CAP_PERFMON" in c.stdout


def _traced(caps: list[str], args: list[str]) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        as_nobody(caps, [sys.executable, "-m", "tracekit", "run", *args]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert p.stderr is not None
    seen = []
    for line in p.stderr:
        seen.append(line)
        if line.startswith("tracekit: attached "):
            return p
    p.wait(timeout=60)
    raise AssertionError("".join(seen))


def _stop(p: subprocess.Popen[str]) -> str:
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode in (0, 130), err
    return out


def test_txq_flip_as_nobody_with_its_capabilities_matches_tc(nobody_dir: Path) -> None:
    trace = nobody_dir / "txq.tkt"
    with NetnsLab(txqueues=4, qdisc="fq") as lab:
        p = _traced(
            caps_of("txq-flip"),
            ["txq-flip", "--param", f"ifindex={lab.ifindex_a}", "--sink", f"msgpack={trace}"],
        )
        try:
            before = lab.queue_packets()
            server = lab.start_server(1)
            client = lab.start_client(0, 3)
            iperf = finish_client(client, timeout=120, server=server)
            server.wait(timeout=60)
            after = lab.queue_packets()
        finally:
            _stop(p)

    # What check_txq_flip_against_tc reads of a lab's result.
    result = SimpleNamespace(
        iperf_mbit=iperf.mbit,
        queue_delta={q: after.get(q, 0) - before.get(q, 0) for q in after},
    )
    check_txq_flip_against_tc(result, trace)  # type: ignore[arg-type]
    print("txq-flip as nobody:", result.queue_delta, f"{iperf.mbit:.0f} Mbit/s")


def _lo_rx() -> int:
    return int(Path("/sys/class/net/lo/statistics/rx_packets").read_text())


def test_rss_cpu_as_nobody_with_its_capabilities_matches_lo(nobody_dir: Path) -> None:
    """Every packet loopback received while traced (its own rx_packets counter) is one
    event of rss-cpu's on lo, 3000 of them our datagrams, seen by an unprivileged run.
    (softnet_stat counts every device's packets, outside the window too.)"""
    trace = nobody_dir / "rss.tkt"
    p = _traced(caps_of("rss-cpu"), ["rss-cpu", "--sink", f"msgpack={trace}"])
    try:
        before = _lo_rx()
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        ):
            rx.bind(("127.0.0.1", 0))
            port = rx.getsockname()[1]
            for _ in range(3000):
                tx.sendto(b"x" * 64, ("127.0.0.1", port))
                rx.recv(128)
        after = _lo_rx()
    finally:
        _stop(p)
    r, events = read_trace(trace)
    assert r.footer is not None and r.footer.lost_total == 0, r.footer
    on_lo = [e for e in events if e["ifname"] == "lo"]
    ours = [e for e in on_lo if e["dport"] == port]
    assert len(ours) == 3000, len(ours)
    # Loopback's own count in the window; the probe was attached a little longer.
    assert 0 <= len(on_lo) - (after - before) <= SOFTNET_TOLERANCE, (len(on_lo), after - before)
    print(f"rss-cpu as nobody: {len(on_lo)} events on lo, lo rx_packets +{after - before}")


def test_ooo_okay_needs_cap_syslog_to_name_its_stacks() -> None:
    """ooo-okay names kernel stacks from /proc/kallsyms, whose addresses the kernel
    shows nobody only with CAP_SYSLOG (Debian: perf_event_paranoid 3)."""
    # A text symbol's address (the first lines are per-CPU symbols, at 0 for everyone).
    code = (
        "print(next(ln.split()[0] for ln in open('/proc/kallsyms') if ln.split()[1] in ('T', 't')))"
    )
    base = caps_of("txq-flip")
    assert "syslog" in caps_of("ooo-okay")
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    restrict = int(Path("/proc/sys/kernel/kptr_restrict").read_text())
    without = subprocess.run(
        as_nobody(base, [sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    with_ = subprocess.run(
        as_nobody([*base, "syslog"], [sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert int(with_.stdout, 16) != 0, with_.stdout + with_.stderr
    if restrict == 0 and paranoid <= 1:
        pytest.skip("this kernel shows kallsyms' addresses to everyone")
    assert int(without.stdout, 16) == 0, without.stdout
