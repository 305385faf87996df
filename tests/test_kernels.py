"""What changed between the kernels of the matrix (docs/kernels.md), checked on the host."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tracekit.base.errors import BtfMissingError, ModuleNotLoadedError
from tracekit.bpf.btf import vmlinux_btf


def test_a_loaded_module_without_btf_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5.10 has vmlinux BTF but no module BTF: sch_fq loaded, /sys/kernel/btf/sch_fq absent.
    import tracekit.base.kernel as kernel
    import tracekit.bpf.btf as btf

    (tmp_path / "btf").mkdir()
    (tmp_path / "btf" / "vmlinux").write_bytes(b"")
    monkeypatch.setattr(kernel, "BTF_DIR", tmp_path / "btf")
    monkeypatch.setattr(kernel, "MODULE_DIR", tmp_path / "module")
    with pytest.raises(ModuleNotLoadedError, match="module sch_fq is not loaded"):
        btf.module_btf("sch_fq")
    (tmp_path / "module" / "sch_fq").mkdir(parents=True)
    with pytest.raises(BtfMissingError, match=r"no module BTF .*5\.11"):
        btf.module_btf("sch_fq")


@pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="kernel without BTF")
def test_enum_values_are_those_bpftool_reads_from_the_same_btf() -> None:
    """Drop reasons move between kernels (SKB_DROP_REASON_FQ_FLOW_LIMIT is 60 on
    Debian's 6.12, 70 on 6.18): fq-throttle takes them from BTF, read here two ways."""
    dump = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"],
        capture_output=True,
        text=True,
        check=True,
    )
    types = json.loads(dump.stdout)["types"]
    ours = vmlinux_btf()
    for name in ("skb_drop_reason", "sock_shutdown_cmd"):
        theirs = next(t for t in types if t["kind"] == "ENUM" and t["name"] == name)
        # bpftool 7.1 prints an unsigned 32-bit value with its sign extended to 64 bits
        # (SKB_DROP_REASON_SUBSYS_MASK 0xffff0000): compare the 32 bits BTF holds.
        assert ours.enum_values(name) == {v["name"]: v["val"] % 2**32 for v in theirs["values"]}
    assert ours.enum_values("no_such_enum_in_any_kernel") == {}


def test_drop_reason_settings_name_each_kernels_values() -> None:
    from tracekit.probes.fq_throttle import NO_REASON, PROBE, drop_reason_settings

    # Debian 6.12.117 (its BTF): reasons in skb_drop_reason; no qdisc_drop_reason.
    d612 = drop_reason_settings(
        {
            "skb_drop_reason": {
                "SKB_DROP_REASON_FQ_BAND_LIMIT": 58,
                "SKB_DROP_REASON_FQ_HORIZON_LIMIT": 59,
                "SKB_DROP_REASON_FQ_FLOW_LIMIT": 60,
            }
        }
    )
    assert d612["TK_SKB_FQ_FLOW_LIMIT"] == 60 and d612["TK_SKB_FQ_BAND_LIMIT"] == 58
    assert d612["TK_QDISC_FQ_FLOW_LIMIT"] == NO_REASON
    # Debian 7.2.13: qdisc_drop_reason (subsystem 3 in the high bits).
    d72 = drop_reason_settings({"qdisc_drop_reason": {"QDISC_DROP_FLOW_LIMIT": 196616}})
    assert d72["TK_QDISC_FQ_FLOW_LIMIT"] == 196616
    assert d72["TK_SKB_FQ_FLOW_LIMIT"] == NO_REASON
    assert len(d72) == len(d612) == 6
    # Every one is a TK_SETTING of the C: the CO-RE object gets it too (7.2's first
    # run counted no drop by reason: the CO-RE loader had dropped these values).
    variables = PROBE.setting_variables()
    assert set(d72) <= set(variables), set(d72) - set(variables)
    assert variables["TK_QDISC_FQ_FLOW_LIMIT"] == "tk_qdisc_fq_flow"
