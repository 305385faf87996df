"""The child of tests/vm/test_wheel.py: one probe from the installed wheel against its
oracle, run by the wheel's venv (which has no pytest: this module imports none)."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

from .helpers import ORACLES as oracles


def header_dirs() -> list[str]:
    """Where BCC (and any compile against this kernel) would find its headers."""
    release = os.uname().release
    dirs = [f"/lib/modules/{release}/build", *sorted(glob.glob("/usr/src/linux-headers-*"))]
    return [d for d in dirs if Path(d).exists()]


def main(probe: str, out: str) -> None:
    """In the namespace, on the venv's Python: nothing to compile with, the wheel's
    object chosen by the default loader, the probe's lab and oracle."""
    import tracekit
    from tracekit.bpf.core_build import find_object, shipped_dir
    from tracekit.live.run import RunOptions, compile_probe
    from tracekit.plugin.bus import build_bus

    assert not [d for d in header_dirs() if os.listdir(d)], "headers still visible"
    clang = shutil.which("clang")
    assert clang is None or not os.path.exists(os.path.realpath(clang)), clang
    try:
        import bcc  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("BCC importable in the wheel's venv")
    params, aggregate, oracle = oracles[probe]
    bus = build_bus()
    spec = bus.probes.get(probe)
    path, why = find_object(spec)
    shipped = shipped_dir()
    assert path is not None and shipped is not None and path.parent == shipped, why
    assert Path(tracekit.__file__).parent in shipped.parents
    compiled = compile_probe(
        spec, spec.resolve_params(params), RunOptions(quiet=True), True, aggregate
    )
    try:
        assert compiled.loader == "core", compiled.loader
        oracle(bus, compiled, Path(out))
    finally:
        compiled.probe.close()
    print(f"{probe}: installed wheel, shipped object, oracle agrees ({path.name})")
