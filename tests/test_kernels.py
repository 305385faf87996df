"""What changed between the kernels of the matrix (docs/kernels.md), checked on the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.errors import BtfMissingError, ModuleNotLoadedError


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
