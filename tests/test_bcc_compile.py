"""Every probe compiles with BCC on the host, against the Debian kernel headers that
scripts/setup.sh installs for the VM, and passes this kernel's verifier.

A C mistake in a probe is then a host test failure in seconds, not a VM failure in
minutes. (Attaching needs the VM: this machine's kernel has no kprobes.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tracekit.base.errors import ModuleNotLoadedError
from tracekit.bpf.bcc import BccProbe
from tracekit.plugin.bus import build_bus


def _headers() -> tuple[Path, Path] | None:
    """(common, arch) header trees of the newest installed Debian kernel headers."""
    arch = sorted(Path("/usr/src").glob("linux-headers-*-amd64"))
    for a in reversed(arch):
        common = Path(str(a).removesuffix("-amd64") + "-common")
        if common.is_dir():
            return common, a
    return None


@pytest.fixture(scope="module")
def kernel_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    found = _headers()
    if os.geteuid() != 0 or found is None:
        pytest.skip("needs root and Debian's linux-headers (scripts/setup.sh)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("BCC is not importable")
    # BCC takes one source tree: Debian splits it in two (common + generated), so
    # join them with symbolic links.
    tree = tmp_path_factory.mktemp("ksrc") / "linux"
    subprocess.run(["cp", "-as", str(found[0]), str(tree)], check=True)
    subprocess.run(["cp", "-asf", f"{found[1]}/.", str(tree)], check=True)
    return str(tree)


PROBES = sorted(p.name for p in build_bus().probes)


@pytest.mark.parametrize("name", PROBES)
@pytest.mark.parametrize("mode", ["ringbuf", "perf", "aggregate"])
def test_probe_compiles_with_bcc(
    name: str, mode: str, kernel_source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", kernel_source)
    spec = build_bus().probes.get(name)
    kw: dict[str, object] = {"output": "perf"} if mode == "perf" else {"output": "ringbuf"}
    if mode == "aggregate":
        if not spec.agg_fields:
            pytest.skip("no in-kernel aggregate")
        kw.update(stream=False, aggregate=True)
    try:
        probe = BccProbe(spec, spec.resolve_params({}), **kw)  # type: ignore[arg-type]
    except ModuleNotLoadedError as exc:
        pytest.skip(f"needs a module this kernel lacks: {exc}")
    probe.close()


def test_the_headers_tree_is_real(kernel_source: str) -> None:
    assert (Path(kernel_source) / "include" / "linux" / "skbuff.h").exists()
