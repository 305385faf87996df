"""Every built-in probe on BTF alone: kernel headers hidden, BCC unusable, each
probe's oracle check (its counts against the kernel's own counters) passes through
the CO-RE loader.

Each probe runs in a child process in a mount namespace of its own (``unshare -m``)
where tmpfs hides /lib/modules/$(uname -r)/build and /usr/src/linux-headers-*; the
child also makes ``import bcc`` fail, so nothing can quietly take the BCC path. The
child is this module run as a script (``python -m tests.vm.test_no_headers PROBE
OUT``): it loads the probe with ``--loader core`` and runs the probe's lab and
oracle check from helpers.ORACLES, the same ones the probe's own tests use.
"""

from __future__ import annotations

import glob
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import ORACLES

pytestmark = pytest.mark.vm


def header_dirs() -> list[str]:
    """Where BCC (and any compile against this kernel) would find its headers."""
    release = os.uname().release
    dirs = [f"/lib/modules/{release}/build", *sorted(glob.glob("/usr/src/linux-headers-*"))]
    return [d for d in dirs if Path(d).exists()]


def without_headers(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a mount namespace where every header folder is an empty tmpfs."""
    dirs = header_dirs()
    assert dirs, "no kernel headers in this VM to hide: the test would prove nothing"
    hide = " && ".join(f"mount -t tmpfs none {shlex.quote(d)}" for d in dirs)
    cmd = shlex.join([sys.executable, *args])
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{hide} && exec {cmd}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True, scope="module")
def sch_fq() -> None:
    # fq-throttle attaches in sch_fq and reads its types from the module's BTF.
    subprocess.run(["modprobe", "sch_fq"], check=True)


def test_check_says_core_and_asks_for_no_headers() -> None:
    r = without_headers("-m", "tracekit", "check", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ORACLES:
        assert f"{name}:\n  loader: core (CO-RE object" in r.stdout, r.stdout
    assert "kernel headers" not in r.stdout


@pytest.mark.parametrize("probe", sorted(ORACLES))
def test_oracle_on_btf_alone(probe: str, out_dir: Path) -> None:
    r = without_headers("-m", "tests.vm.test_no_headers", probe, str(out_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{probe}: headers hidden, loaded by core, oracle agrees" in r.stdout, r.stdout


def test_every_builtin_probe_is_covered() -> None:
    from tracekit.bus import build_bus

    assert sorted(s.name for s in build_bus().probes) == sorted(ORACLES)


def _child(probe: str, out: Path) -> None:
    """In the namespace: prove the headers are gone, forbid BCC, load the CO-RE
    object, run the probe's lab and its oracle check."""
    hidden = [d for d in header_dirs() if os.listdir(d)]
    assert not hidden, f"headers still visible in {hidden}"
    sys.modules["bcc"] = None  # type: ignore[assignment]  # `import bcc` now fails
    from tracekit.bus import build_bus
    from tracekit.run import RunOptions, compile_probe

    params, aggregate, oracle = ORACLES[probe]
    bus = build_bus()
    spec = bus.probes.get(probe)
    t0 = time.monotonic()
    compiled = compile_probe(
        spec, spec.resolve_params(params), RunOptions(quiet=True, loader="core"), True, aggregate
    )
    loaded = time.monotonic() - t0
    try:
        assert compiled.loader == "core", compiled.loader
        oracle(bus, compiled, out)
    finally:
        compiled.probe.close()
    print(f"{probe}: headers hidden, loaded by core, oracle agrees (load {loaded:.1f}s)")


if __name__ == "__main__":
    _child(sys.argv[1], Path(sys.argv[2]))
