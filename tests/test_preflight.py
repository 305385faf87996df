from __future__ import annotations

import platform
from pathlib import Path

import pytest

from tracekit.errors import AttachPointError, ModuleNotLoadedError
from tracekit.lab.netns import parse_iperf, parse_tc_queue_packets
from tracekit.preflight import (
    Report,
    check_attach_point,
    find_clones,
    module_functions,
    module_path,
)
from tracekit.registry import AttachPoint


def test_clone_suffixes_are_recognised() -> None:
    syms = ["tcp_foo.isra.0", "tcp_foo.constprop.0.cold", "tcp_foo2.isra.0", "tcp_foo.part.1"]
    assert find_clones("tcp_foo", syms) == [
        "tcp_foo.constprop.0.cold",
        "tcp_foo.isra.0",
        "tcp_foo.part.1",
    ]


def test_missing_and_renamed_functions_get_precise_messages() -> None:
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
    import tracekit.preflight as pf

    monkeypatch.setattr(pf, "module_loaded", lambda m: False)
    monkeypatch.setattr(pf.platform, "release", lambda: release)
    r = Report()
    ok = check_attach_point(
        r, AttachPoint("kprobe", "fq_dequeue", "f", module="sch_fq"), frozenset()
    )
    assert not ok and r.checks[0].error is ModuleNotLoadedError
    assert "module sch_fq is not loaded" in r.checks[0].message
    assert platform.release  # the real function is restored by monkeypatch


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
