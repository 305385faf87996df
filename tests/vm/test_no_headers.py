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

from .helpers import ORACLES, too_old

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
    # Every probe installed is checked; third-party ones that ship only BCC C (the
    # tcp-retrans example) rightly fail for want of headers, so the status is not
    # asserted: each built-in probe's own section is.
    r = without_headers("-m", "tracekit", "check", timeout=300)
    sections = _sections(r.stdout)
    for name in ORACLES:
        text = sections.get(name, "")
        if (need := too_old(name)) is not None:
            # Below its minimum (5.10: fq-throttle) the check names the minimum first;
            # its other lines (BCC's headers, the fallback there) are not the point.
            assert f"FAIL kernel version: probe {name} needs Linux {need} or later" in text, text
            continue
        assert text.startswith(f"{name}:\n  loader: core (CO-RE object"), r.stdout
        assert "FAIL" not in text and "kernel headers" not in text, text


def _sections(out: str) -> dict[str, str]:
    """`tracekit check` output, per probe (a line `NAME:` starts each)."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = found.setdefault(line[:-1], [])
        current.append(line)
    return {k: "\n".join(v) for k, v in found.items()}


@pytest.mark.parametrize("probe", sorted(ORACLES))
def test_oracle_on_btf_alone(probe: str, out_dir: Path) -> None:
    if (need := too_old(probe)) is not None:
        pytest.skip(f"{probe} needs Linux {need}: test_below_min_kernel_is_one_line covers it")
    r = without_headers("-m", "tests.vm.test_no_headers", probe, str(out_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{probe}: headers hidden, loaded by core, oracle agrees" in r.stdout, r.stdout


def test_below_min_kernel_is_one_line() -> None:
    """On a kernel older than a probe's ``min_kernel``, ``tracekit run`` stops before
    loading anything: one line naming both versions, status 15 (KernelTooOldError)."""
    old = [p for p in sorted(ORACLES) if too_old(p) is not None]
    if not old:
        pytest.skip(f"every built-in probe's min_kernel is at most {os.uname().release}")
    for probe in old:
        r = without_headers("-m", "tracekit", "run", probe, "--duration", "1", timeout=300)
        assert r.returncode == 15, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tracekit: "), r.stderr
        assert f"needs Linux {too_old(probe)} or later" in lines[0], lines[0]
        assert os.uname().release in lines[0], lines[0]


def test_every_builtin_probe_is_covered() -> None:
    """Every probe tracekit ships (not third-party plugins, which may be BCC-only)."""
    from importlib.resources import files

    from tracekit.plugin.bus import build_bus

    builtin = Path(str(files("tracekit.probes")))
    names = [s.name for s in build_bus().probes if Path(str(s.source)).is_relative_to(builtin)]
    assert sorted(names) == sorted(ORACLES)


def _child(probe: str, out: Path) -> None:
    """In the namespace: prove the headers are gone, forbid BCC, load the CO-RE
    object, run the probe's lab and its oracle check."""
    hidden = [d for d in header_dirs() if os.listdir(d)]
    assert not hidden, f"headers still visible in {hidden}"
    sys.modules["bcc"] = None  # type: ignore[assignment]  # `import bcc` now fails
    from tracekit.live.run import RunOptions, compile_probe
    from tracekit.plugin.bus import build_bus

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
