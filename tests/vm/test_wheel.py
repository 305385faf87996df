"""The wheel as a user installs it: built on the host (scripts/vm-wheels.sh puts it
and its dependencies' wheels for this row's Python into .vm-out/wheels/), installed
here by pip from wheels alone into a fresh venv without system site packages, then
every built-in probe loaded from the wheel's own CO-RE object and checked against its
kernel oracle, in a mount namespace where the kernel's headers and clang are out of
reach and BCC is not installed (the venv cannot see Debian's python3-bpfcc).

The child that runs a probe is the venv's Python, in a folder outside the tree, with
the tree appended to ``sys.path`` after site-packages: ``tracekit`` is the installed
wheel's, and only the oracles (``tests.vm.helpers``) come from the tree.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ORACLES, too_old
from .test_no_headers import header_dirs

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".vm-out" / "wheels"
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


def compiler_dirs() -> list[str]:
    """Where clang and LLVM live (the compiler a CO-RE or BCC build would use)."""
    return sorted(d for d in glob.glob("/usr/lib/llvm-*") if Path(d).is_dir())


def out_of_reach(
    argv: list[str], timeout: float = 900, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` in a mount namespace where every header folder and LLVM's folders are
    empty tmpfs mounts (clang's links in /usr/bin then lead nowhere)."""
    dirs = header_dirs() + compiler_dirs()
    assert header_dirs(), "no kernel headers in this VM to hide: the test would prove nothing"
    hide = " && ".join(f"mount -t tmpfs none {shlex.quote(d)}" for d in dirs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{hide} && exec {shlex.join(argv)}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = sorted(WHEELS.glob("tracekit_ebpf-*.whl"))
    deps = WHEELS / f"py{PYVER}"
    if not wheels or not deps.is_dir():
        msg = f"no wheels for Python {PYVER} in {WHEELS}: bash scripts/vm-wheels.sh ROW on the host"
        if os.environ.get("TRACEKIT_REQUIRE_WHEELS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    # The interpreter the test's own venv was made from: the row's system Python. The
    # venv gets no pip of its own (ensurepip and byte-compiling every module of numpy
    # take many minutes under TCG): this session's pip installs into it (--python),
    # and the modules are compiled as they are first imported (PYTHONDONTWRITEBYTECODE
    # is unset for the venv's processes, as on a user's host).
    base = getattr(sys, "_base_executable", sys.executable)
    where = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True, timeout=600)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(where.parent),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    pip = [sys.executable, "-m", "pip", "--python", str(where / "bin/python")]
    p = subprocess.run(
        [
            *pip,
            "install",
            "-q",
            "--no-index",
            "--no-compile",
            "--find-links",
            str(deps),
            "--find-links",
            str(WHEELS),
            "tracekit-ebpf",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return where


def _site(venv: Path) -> Path:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return site


def test_the_venv_is_the_wheel_alone(venv: Path) -> None:
    """No system site packages (so no BCC), tracekit from the wheel, not the tree."""
    code = (
        "import importlib.util as u, tracekit; print(tracekit.__file__); print(u.find_spec('bcc'))"
    )
    p = subprocess.run(
        [str(venv / "bin/python"), "-c", code], capture_output=True, text=True, cwd="/"
    )
    assert p.returncode == 0, p.stderr
    where, bcc = p.stdout.splitlines()
    assert Path(where).is_relative_to(_site(venv)) and bcc == "None", p.stdout


def test_version_and_check_on_the_wheels_objects(venv: Path) -> None:
    tk = str(venv / "bin/tracekit")
    v = out_of_reach([tk, "--version"], cwd="/")
    assert v.returncode == 0, v.stderr
    assert "BCC: not installed" in v.stdout and "BTF: yes" in v.stdout, v.stdout
    shipped = _site(venv) / "tracekit/probes/core"
    assert f"CO-RE objects: {shipped} (built by " in v.stdout, v.stdout
    c = out_of_reach([tk, "check", "--json"], cwd="/")
    report = json.loads(c.stdout)
    for probe in report["probes"]:
        name = probe["name"]
        if (need := too_old(name)) is not None:
            assert probe["verdict"] == (
                f"not ready: {name}: probe {name} needs Linux {need} or later; "
                f"this kernel is {os.uname().release}"
            ), probe
            continue
        assert probe["verdict"] == f"ready: {name} loads its CO-RE object from BTF, no compile", (
            probe
        )
        assert probe["loader"] == "core" and "shipped with tracekit" in probe["why"], probe
    print(v.stdout)


@pytest.mark.parametrize("probe", sorted(ORACLES))
def test_oracle_from_the_installed_wheel(venv: Path, probe: str, out_dir: Path) -> None:
    if (need := too_old(probe)) is not None:
        pytest.skip(f"{probe} needs Linux {need}")
    subprocess.run(["modprobe", "sch_fq"], check=True)
    code = (
        f"import sys; sys.path.append({str(ROOT)!r}); "
        "from tests.vm.test_wheel import _child; _child(sys.argv[1], sys.argv[2])"
    )
    r = out_of_reach([str(venv / "bin/python"), "-c", code, probe, str(out_dir)], cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{probe}: installed wheel, shipped object, oracle agrees" in r.stdout, r.stdout
    print(r.stdout.strip())


def _child(probe: str, out: str) -> None:
    """In the namespace, on the venv's Python: nothing to compile with, the wheel's
    object chosen by the default loader, the probe's lab and oracle."""
    import tracekit
    from tracekit.bpf.core_build import find_object, shipped_dir
    from tracekit.live.run import RunOptions, compile_probe
    from tracekit.plugin.bus import build_bus

    from .helpers import ORACLES as oracles

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
