"""fq-throttle's drops by the kernel's own reason, against `tc -s qdisc`'s dropped.

Which tracepoint carries fq's reasons depends on the kernel (6.1: none; 6.14 and
Debian's 6.12: skb:kfree_skb with SKB_DROP_REASON_FQ_*; 7.x: qdisc:qdisc_drop with
QDISC_DROP_*): the probe attaches the one the kernel has, and this checks its
counts on whichever row it runs.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tracekit.bpf.btf import vmlinux_btf
from tracekit.lab.fq_throttle import FqThrottleResult, lab_fq_throttle
from tracekit.live.run import Compiled
from tracekit.plugin.bus import Bus
from tracekit.probes.fq_throttle import DROP_REASONS, DROP_SLOTS

pytestmark = pytest.mark.vm


def kernel_names_fq_drops() -> bool:
    btf = vmlinux_btf()
    return any(
        prefix + slot in btf.enum_values(enum)
        for enum, prefix in DROP_REASONS.values()
        for slot in DROP_SLOTS
    )


@pytest.fixture(scope="module")
def run(bus: Bus, fq_compiled: Compiled, out_dir: Path) -> FqThrottleResult:
    with contextlib.redirect_stdout(io.StringIO()):
        return lab_fq_throttle(
            bus,
            ("hist", f"msgpack={out_dir / 'fq-drop-reasons.tkt'}"),
            4,
            compiled=fq_compiled,
            force=True,
            quiet=True,
        )


def test_drops_by_reason_are_the_drops_tc_counted(run: FqThrottleResult) -> None:
    tc_dropped = sum(v["dropped"] for v in run.fq_delta.values())
    tc_plimit = sum(v["flows_plimit"] for v in run.fq_delta.values())
    assert tc_dropped > 0 and tc_plimit > 0, run.tc_after
    by_reason = {
        slot: sum(run.counter_delta("fq_drops", slot).values())
        for slot in ("flow_limit", "band_limit", "horizon")
    }
    if not kernel_names_fq_drops():
        # 6.1: fq gives no reason; only fq's own counters (read around fq_enqueue) see them.
        assert by_reason == {"flow_limit": 0, "band_limit": 0, "horizon": 0}
        return
    # Each drop fq made is one the kernel reported with its reason, and the lab's
    # flows overrun flow_limit only (no band or horizon is configured to drop).
    assert by_reason["flow_limit"] == tc_plimit, (by_reason, run.fq_delta)
    assert sum(by_reason.values()) == tc_dropped, (by_reason, run.fq_delta)
    # The older path, fq's own counter read around fq_enqueue, agrees.
    assert sum(run.counter_delta("fq_counts", "flow_limit_drops").values()) == tc_plimit
