"""Every program the project runs comes from a package ``scripts/setup.sh`` installs.

A package installed by hand on a developer's (or CI's) machine hides a missing install
step: the suite passes there and fails on a fresh machine. So this asks dpkg, not the
machine's PATH, where each program comes from.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"
SCANNED = ("tracekit", "plugins", "probes", "tests", "bench", "examples")
# Programs that come from the project's venv (pyproject's dependencies), not Debian.
FROM_PYPI = {"vng", "tracekit"}
SBIN = "/usr/sbin:/sbin"


def _bash_array(name: str, script: Path = SETUP) -> list[str]:
    text = script.read_text()
    # name=(a b c) on one line, or one word or comment a line up to a lone ")".
    m = re.search(rf"^{name}=\(([^)\n]*)\)$", text, re.M) or re.search(
        rf"^{name}=\((.*?)^\)", text, re.S | re.M
    )
    assert m, f"no {name}=( ... ) in {script}"
    words = []
    for line in m.group(1).splitlines():
        words += line.split("#", 1)[0].split()
    return words


def programs_in_code(scanned: tuple[str, ...] = SCANNED) -> dict[str, str]:
    """Program name -> where it is run, for every command the Python code spells out.

    Forms: ``subprocess.run(["prog", ...])`` and the like, the labs' ``_run([...])``,
    ``lab.ns(NS, "prog", ...)`` / ``popen(NS, "prog", ...)``, ``shutil.which("prog")``,
    and the wrappers ``ip netns exec NS prog`` and ``taskset -c CPUS prog``.
    """
    found: dict[str, str] = {}

    def add(name: object, where: str) -> None:
        if isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_.+-]*", name):
            found.setdefault(name, where)

    def words(node: ast.AST) -> list[object]:
        if isinstance(node, ast.List | ast.Tuple):
            return [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
        return []

    def command(ws: list[object], where: str) -> None:
        if not ws:
            return
        add(ws[0], where)
        if ws[:3] == ["ip", "netns", "exec"] and len(ws) > 4:
            command(ws[4:], where)
        if ws[:2] == ["taskset", "-c"] and len(ws) > 3:
            command(ws[3:], where)

    for top in scanned:
        for path in (ROOT / top).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                args = node.args
                if name in ("run", "Popen", "check_output", "check_call", "call", "_run") and args:
                    command(words(args[0]), where)
                elif name in ("ns", "popen") and len(args) >= 2:
                    command(
                        [a.value if isinstance(a, ast.Constant) else None for a in args[1:]], where
                    )
                elif name == "which" and args and isinstance(args[0], ast.Constant):
                    add(args[0].value, where)
    return found


@cache
def _owners() -> dict[str, str]:
    """Program -> the package dpkg says owns it (one dpkg call for all of them)."""
    spellings: dict[str, str] = {}
    for program in _bash_array("PROGRAMS"):
        path = shutil.which(program) or shutil.which(program, path=SBIN)
        if not path:
            continue
        real = str(Path(path).resolve())
        # /bin and /usr/bin are one on merged-/usr systems; dpkg knows one spelling.
        for f in (path, real):
            for p in (f.removeprefix("/usr"), "/usr" + f.removeprefix("/usr")):
                spellings[p] = program
    p = subprocess.run(["dpkg", "-S", *spellings], capture_output=True, text=True)
    out: dict[str, str] = {}
    for line in p.stdout.splitlines():
        pkgs, _, file = line.partition(": ")
        if file in spellings and not pkgs.startswith("diversion by"):
            out.setdefault(spellings[file], pkgs.split(",")[0].split(":")[0].strip())
    return out


def _owner(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path=SBIN)
    assert path, f"{program} is not installed: run scripts/setup.sh"
    owner = _owners().get(program)
    assert owner, f"no package owns {path}: installed by hand?"
    return owner


def _required(package: str) -> bool:
    """Debian's Essential or Priority: required packages are on every Debian machine."""
    p = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential} ${Priority}", package],
        capture_output=True,
        text=True,
    )
    return p.returncode == 0 and ("yes" in p.stdout.split() or "required" in p.stdout.split())


pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian machine")


def test_the_code_runs_no_program_missing_from_setup() -> None:
    declared = set(_bash_array("PROGRAMS")) | FROM_PYPI
    found = programs_in_code()
    # Sanity: the scan sees the commands it must (an empty scan would pass anything).
    assert {"ip", "tc", "iperf3", "ethtool", "bpftrace", "modprobe"} <= set(found), found
    missing = {p: w for p, w in found.items() if p not in declared}
    assert not missing, f"programs run but not in setup.sh's PROGRAMS: {missing}"


@pytest.mark.skipif(
    "TRACEKIT_GUEST_ROOT" in os.environ,
    reason="in a guest root (vm/guest-root chroot): setup.sh installs on the host machine",
)
@pytest.mark.parametrize("program", _bash_array("PROGRAMS"))
def test_each_program_comes_from_a_package_setup_installs(program: str) -> None:
    packages = set(_bash_array("APT_PACKAGES"))
    owner = _owner(program)
    assert owner in packages or _required(owner), (
        f"{program} comes from {owner}, which scripts/setup.sh does not install"
    )


def test_the_vm_needs_a_static_busybox() -> None:
    """virtme-ng builds the guest's initramfs from a static busybox (issue #11)."""
    assert "busybox-static" in _bash_array("APT_PACKAGES")
    assert _owner("busybox") == "busybox-static"


# What runs inside the VM: the package, the VM tests, the example's, the benches.
GUEST_SCANNED = (
    "tracekit",
    "plugins",
    "probes",
    "tests/vm",
    "examples/tracekit-tcp-retrans/tests",
    "bench",
)
# Run by that code, but only ever on the host: `tracekit build` and bench/drain.py's C
# consumer compile on the host (the guest gets the objects read-only).
HOST_ONLY = {"clang", "gcc"}


def test_every_rows_root_has_what_the_vm_runs() -> None:
    """The other kernels' guest roots (vm/guest-root) hold each program the code run
    in the VM needs: 7.2's first whole suite found no prometheus there (8 errors),
    since the default row uses this machine's root, where setup.sh installs it."""
    guest_root = ROOT / "vm" / "guest-root"
    packages = set(_bash_array("PACKAGES", guest_root)) | set(
        _bash_array("KERNEL_PACKAGES", guest_root)
    )
    run = programs_in_code(GUEST_SCANNED)
    missing = {}
    for program, where in run.items():
        if program in HOST_ONLY | FROM_PYPI:
            continue
        owner = _owner(program)
        if owner not in packages and not _required(owner):
            missing[program] = f"{owner} (run at {where})"
    assert not missing, f"vm/guest-root's PACKAGES lack: {missing}"
