"""What changed between the kernels of the matrix (docs/kernels.md), checked on the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.errors import BtfMissingError, ModuleNotLoadedError
from tracekit.lab.nics import parse_rx_queue_packets

# virtio_net's `ethtool -S` on 6.12 and 7.2 (made up from the modules' formats rx%u_%s and
# rx%u_hw_%s): rxN_hw_* are the device's own counters, not the driver's RX packets.
ETHTOOL_S_612 = """\
NIC statistics:
     rx_packets: 24148
     rx0_packets: 9076
     rx0_bytes: 9434128
     rx0_hw_packets: 1
     rx1_packets: 15036
     rx1_bytes: 15623001
     tx0_packets: 14
"""


def test_rx_queue_packets_from_612_and_later_virtio_net() -> None:
    assert parse_rx_queue_packets(ETHTOOL_S_612) == {0: 9076, 1: 15036}


def test_a_loaded_module_without_btf_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5.10 has vmlinux BTF but no module BTF: sch_fq loaded, /sys/kernel/btf/sch_fq absent.
    import tracekit.btf as btf

    (tmp_path / "btf").mkdir()
    (tmp_path / "btf" / "vmlinux").write_bytes(b"")
    monkeypatch.setattr(btf, "BTF_DIR", tmp_path / "btf")
    monkeypatch.setattr(btf, "MODULE_DIR", tmp_path / "module")
    with pytest.raises(ModuleNotLoadedError, match="module sch_fq is not loaded"):
        btf.module_btf("sch_fq")
    (tmp_path / "module" / "sch_fq").mkdir(parents=True)
    with pytest.raises(BtfMissingError, match=r"no module BTF .*5\.11"):
        btf.module_btf("sch_fq")
