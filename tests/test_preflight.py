from __future__ import annotations

from pathlib import Path

import pytest
from fake_tracefs import fake_kprobe_tracefs

from tracekit.base.errors import AttachPointError, ModuleNotLoadedError
from tracekit.base.kernel import module_functions, module_path
from tracekit.bpf.preflight import (
    Report,
    check_attach_point,
    find_clones,
)
from tracekit.lab.netns import parse_iperf, parse_tc_queue_packets
from tracekit.plugin.registry import AttachPoint


def test_clone_suffixes_are_recognised() -> None:
    syms = ["tcp_foo.isra.0", "tcp_foo.constprop.0.cold", "tcp_foo2.isra.0", "tcp_foo.part.1"]
    assert find_clones("tcp_foo", syms) == [
        "tcp_foo.constprop.0.cold",
        "tcp_foo.isra.0",
        "tcp_foo.part.1",
    ]


@pytest.fixture
def kprobe_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A tracefs of a kernel with kprobes (kprobe_events) and two traceable functions."""
    return fake_kprobe_tracefs(
        monkeypatch,
        tmp_path,
        "netdev_pick_tx\nfq_enqueue\t[sch_fq]\nfq_dequeue [sch_fq]\n",
        "0xffffffff81000000-0xffffffff81000010\tdo_int3\n",
    )


def test_missing_and_renamed_functions_get_precise_messages(kprobe_kernel: Path) -> None:
    syms = frozenset({"netdev_pick_tx", "fq_dequeue.isra.0"})
    r = Report()
    assert check_attach_point(r, AttachPoint("kprobe", "netdev_pick_tx", "f"), syms)
    assert not check_attach_point(r, AttachPoint("kprobe", "fq_dequeue", "f"), syms)
    assert not check_attach_point(r, AttachPoint("kretprobe", "gone_fn", "f"), syms)
    assert [c.ok for c in r.checks] == [True, False, False]
    assert "only exists as fq_dequeue.isra.0" in r.checks[1].message
    assert r.checks[1].error is AttachPointError
    assert "inlined or missing" in r.checks[2].message
    with pytest.raises(AttachPointError, match="fq_dequeue only exists as"):
        r.raise_first()


def test_kallsyms_is_not_enough_for_a_kprobe(kprobe_kernel: Path) -> None:
    """In kallsyms but notrace, blacklisted, or on a kernel without kprobes: refused."""
    import tracekit.base.kernel as kernel

    syms = frozenset({"netdev_pick_tx", "fq_enqueue", "some_notrace_fn", "do_int3"})
    r = Report()
    assert check_attach_point(r, AttachPoint("kprobe", "netdev_pick_tx", "f"), syms)
    # Module functions: "name\t[module]" on 6.1 (a VM run once refused fq_enqueue).
    assert check_attach_point(r, AttachPoint("kprobe", "fq_enqueue", "f"), syms)
    assert not check_attach_point(r, AttachPoint("kprobe", "some_notrace_fn", "f"), syms)
    assert not check_attach_point(r, AttachPoint("kretprobe", "do_int3", "f"), syms)
    assert "via " + str(kprobe_kernel) in r.checks[0].message
    assert "not in available_filter_functions" in r.checks[2].message
    assert "kprobe blacklist" in r.checks[3].message
    assert r.checks[2].error is AttachPointError
    # The same kernel without kprobe_events (and no kprobe PMU): nothing can attach.
    (kprobe_kernel / "kprobe_events").unlink()
    r = Report()
    assert not check_attach_point(r, AttachPoint("kprobe", "netdev_pick_tx", "f"), syms)
    assert "cannot attach kprobes" in r.checks[0].message
    kernel.refresh()


def test_check_on_this_machines_own_kernel() -> None:
    """``tracekit check txq-flip`` here, on the host: a kernel without kprobes says so."""
    import subprocess
    import sys

    import tracekit.base.kernel as kernel

    if kernel.kprobes_supported() is not None:
        pytest.skip("this kernel has kprobes: the unit test above covers the refusal")
    p = subprocess.run(
        [sys.executable, "-m", "tracekit", "check", "txq-flip"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in p.stdout.splitlines() if "netdev_pick_tx" in ln]
    assert lines, p.stdout + p.stderr
    assert all(ln.strip().startswith("FAIL") for ln in lines), lines
    assert "cannot attach kprobes" in p.stdout
    assert p.returncode != 0
    assert "Traceback" not in p.stderr


def _a_debian_kernel() -> str | None:
    mods = Path("/lib/modules")
    for d in sorted(mods.iterdir()) if mods.exists() else []:
        if (d / "modules.dep").exists():
            return d.name
    return None


def test_module_elf_symbols_with_pyelftools() -> None:
    release = _a_debian_kernel()
    if release is None:
        pytest.skip("no Debian kernel modules installed (scripts/setup.sh installs them)")
    path = module_path("sch_fq", release)
    assert path is not None and path.name.startswith("sch_fq.ko")
    funcs = module_functions(path)
    assert {"fq_enqueue", "fq_dequeue"} <= funcs


def test_not_loaded_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    release = _a_debian_kernel()
    if release is None:
        pytest.skip("no Debian kernel modules installed")
    import tracekit.base.kernel as kernel

    monkeypatch.setattr(kernel, "module_loaded", lambda m: False)
    monkeypatch.setattr(kernel, "release", lambda: release)
    r = Report()
    ok = check_attach_point(
        r, AttachPoint("kprobe", "fq_dequeue", "f", module="sch_fq"), frozenset()
    )
    assert not ok and r.checks[0].error is ModuleNotLoadedError
    assert "module sch_fq is not loaded" in r.checks[0].message


TC = """\
qdisc mq 1: root
 Sent 1000 bytes 10 pkt (dropped 0, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
qdisc fq 8001: parent 1:4 limit 10000p flow_limit 100p buckets 1024
 Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0)
qdisc fq 8002: parent 1:3 limit 10000p
 Sent 5 bytes 1 pkt (dropped 0, overlimits 0 requeues 0)
qdisc fq 8003: parent 1:2 limit 10000p
 Sent 300 bytes 3 pkt (dropped 0, overlimits 0 requeues 0)
qdisc fq 8004: parent 1:1 limit 10000p
 Sent 700 bytes 6 pkt (dropped 0, overlimits 0 requeues 0)
  flows 1 (inactive 1 throttled 0)
"""


def test_parse_tc_queue_packets() -> None:
    assert parse_tc_queue_packets(TC) == {3: 0, 2: 1, 1: 3, 0: 6}


def test_parse_iperf() -> None:
    out = '{"end": {"sum_sent": {"bits_per_second": 3.5e8, "retransmits": 4, "seconds": 10}}}'
    res = parse_iperf(out)
    assert res.mbit == 350 and res.retransmits == 4


def test_btf_offsets_and_layout_mismatch_refused() -> None:
    from tracekit.base.errors import TracekitError
    from tracekit.base.kernel import vmlinux_btf_path
    from tracekit.bpf.btf import Btf, struct_offsets

    vmlinux = vmlinux_btf_path()
    if vmlinux is None:
        pytest.skip("this kernel has no BTF")
    btf = Btf(vmlinux.read_bytes())
    # sk_buff.hash sits inside an anonymous union/struct group: found all the same.
    off = struct_offsets(btf, "sk_buff", {"hash": 4, "len": 4})
    assert off["len"] < off["hash"] < 256
    with pytest.raises(TracekitError, match="is 4 bytes in this kernel, the probe reads 8"):
        struct_offsets(btf, "sk_buff", {"hash": 8})
    with pytest.raises(TracekitError, match="has no member nope"):
        struct_offsets(btf, "sk_buff", {"nope": 4})
    with pytest.raises(TracekitError, match="not in the kernel's BTF"):
        btf.find_struct("no_such_struct_anywhere")


FQ_TC = """\
qdisc mq 1: root
 Sent 10 bytes 1 pkt (dropped 9, overlimits 0 requeues 0)
qdisc fq 8002: parent 1:2 limit 10000p flow_limit 10p buckets 1024 maxrate 50Mbit
 Sent 5 bytes 1 pkt (dropped 3, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
  flows 3 (inactive 1 throttled 2)
  gc 0 highprio 0 throttled 77 latency 3us flows_plimit 3
qdisc fq 8001: parent 1:1 limit 10000p flow_limit 10p buckets 1024
 Sent 5 bytes 1 pkt (dropped 0, overlimits 0 requeues 0)
  flows 0 (inactive 0 throttled 0)
  gc 0 highprio 0 throttled 5
"""


def test_parse_fq_stats_reads_cumulative_throttled_not_current() -> None:
    from tracekit.lab.oracles import parse_fq_stats

    assert parse_fq_stats(FQ_TC) == {
        1: {"throttled": 77, "flows_plimit": 3, "dropped": 3},
        0: {"throttled": 5, "flows_plimit": 0, "dropped": 0},
    }


def test_imbalance() -> None:
    from tracekit.base.stats import imbalance

    assert imbalance({0: 90, 1: 10}, 2) == (0, 0.9, 1.8)
    assert imbalance({0: 50, 1: 50}, 2)[2] == 1.0
    assert imbalance({}, 2) == (-1, 0.0, 0.0)


def test_stack_paths_of_the_seed() -> None:
    from tracekit.probes.ooo_okay import path_of

    softirq = [
        "__ip_queue_xmit",
        "__tcp_transmit_skb",
        "tcp_write_xmit",
        "tcp_rcv_established",
        "tcp_v4_do_rcv",
        "tcp_v4_rcv",
        "ip_local_deliver",
        "__napi_poll",
        "net_rx_action",
    ]
    backlog = [
        "__tcp_transmit_skb",
        "tcp_write_xmit",
        "tcp_rcv_established",
        "tcp_v4_do_rcv",
        "__release_sock",
        "release_sock",
        "tcp_sendmsg",
        "sock_write_iter",
    ]
    send = [
        "__tcp_transmit_skb",
        "tcp_write_xmit",
        "__tcp_push_pending_frames",
        "tcp_sendmsg_locked",
        "tcp_sendmsg",
    ]
    assert [path_of(s) for s in (softirq, backlog, send, ["x"])] == [
        "ack-softirq",
        "ack-backlog",
        "sendmsg",
        "other",
    ]


def test_missing_headers_and_btf_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tracekit.base.kernel as kernel
    import tracekit.bpf.btf as btf
    import tracekit.bpf.preflight as pf
    from tracekit.base.errors import BtfMissingError, HeadersMissingError

    r = Report()
    pf.check_headers(r, release="0.0.0-nonexistent")
    assert r.checks[0].error is HeadersMissingError
    assert "install linux-headers-0.0.0-nonexistent" in r.checks[0].message
    monkeypatch.setattr(kernel, "BTF_DIR", tmp_path)
    monkeypatch.setattr(kernel, "MODULE_DIR", tmp_path / "module")
    with pytest.raises(BtfMissingError, match="no BTF"):
        btf.module_btf("sch_fq")
    (tmp_path / "vmlinux").write_bytes(b"")
    with pytest.raises(ModuleNotLoadedError, match="module sch_fq is not loaded"):
        btf.module_btf("sch_fq")


def test_each_preflight_reads_the_kernels_lists_afresh(kprobe_kernel: Path) -> None:
    """A module loaded between two runs in one process (the VM suite loads sch_fq after
    other probes ran) must be seen: the function lists are not cached across runs."""
    import tracekit.base.kernel as kernel
    import tracekit.bpf.preflight as pf
    from tracekit.base.schema import Field, Schema
    from tracekit.plugin.registry import ProbeSpec

    spec = ProbeSpec(
        name="x",
        description="x",
        source=kprobe_kernel,
        schema=Schema((Field("a", "u8"),)),
        attach=(AttachPoint("kprobe", "late_fn", "f"),),
    )
    pf.preflight(spec, "core")  # reads the lists: late_fn is in neither yet
    funcs = kprobe_kernel / "available_filter_functions"
    funcs.write_text(funcs.read_text() + "late_fn\t[late_mod]\n")
    assert kernel.traceable(kprobe_kernel, "late_fn") is False  # within one preflight: cached
    report, points = pf.preflight(spec, "core")
    assert [p.target for p in points] == ["late_fn"], report.render()
