"""`tracekit check` and `tracekit --version` tell the truth: a verdict first, the
blocker's status, --json; tracefs missing named as such; capabilities named; libbpf's
package named for the distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tracekit.base.kernel as kernel
import tracekit.bpf.libbpf as libbpf_mod
from tracekit.base.errors import (
    AttachPointError,
    BccMissingError,
    LibbpfMissingError,
    PermissionProblem,
    TracefsMissingError,
)
from tracekit.bpf import preflight
from tracekit.bpf.preflight import ProbeVerdict, Report, check_attach_point
from tracekit.plugin.bus import build_bus
from tracekit.plugin.registry import AttachPoint

TRACEKIT = [sys.executable, "-m", "tracekit"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRACEKIT, *args], capture_output=True, text=True, timeout=120)


def test_the_verdict_comes_first_and_the_status_is_the_blockers() -> None:
    r = _run("check", "txq-flip")
    first = r.stdout.splitlines()[0]
    assert "Traceback" not in r.stderr
    if r.returncode == 0:
        assert first == "ready: txq-flip loads its CO-RE object from BTF, no compile"
        return
    assert first.startswith("not ready: txq-flip: "), r.stdout
    fails = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("FAIL")]
    # The verdict names the first failed check, the one the others depend on.
    # (Where no CO-RE object is found, the verdict says so before the BCC fallback's
    # first failure.)
    assert fails[0].split(": ", 1)[1] in first.removeprefix("not ready: txq-flip: ")
    j = json.loads(_run("check", "txq-flip", "--json").stdout)
    assert j["verdict"] == first and j["status"] == r.returncode and not j["ready"]
    (probe,) = j["probes"]
    assert probe["blocker"]["message"] in first
    assert [c["ok"] for c in probe["checks"]].count(False) == len(fails)
    failed = [c for c in probe["checks"] if not c["ok"]]
    assert failed[0]["status"] == r.returncode


def test_the_blocker_is_the_problem_the_others_follow_from() -> None:
    r = Report()
    r.add("kernel version", True, "6.1")
    r.add("privileges", False, "needs root", PermissionProblem)
    r.add("kprobe:x", False, "missing", AttachPointError)
    v = ProbeVerdict("p", "core", "CO-RE object", r)
    assert v.verdict() == "not ready: p: needs root" and r.status() == 4
    ok = Report()
    ok.add("BTF", True, "yes")
    assert ProbeVerdict("p", "core", "", ok).verdict() == (
        "ready: p loads its CO-RE object from BTF, no compile"
    )
    nobcc = Report()
    nobcc.add("bcc", False, "BCC is not importable", BccMissingError)
    fallback = ProbeVerdict("p", "bcc", "no CO-RE: the kernel has no BTF", nobcc)
    assert fallback.verdict() == (
        "not ready: p: the kernel has no BTF, and the BCC fallback: BCC is not importable"
    )
    line, status = preflight.overall_verdict([ProbeVerdict("q", "core", "", ok), v])
    assert line == "not ready: p: needs root (1 of 2 probes ready)" and status == 4


@pytest.fixture
def no_tracefs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n")
    monkeypatch.setattr(kernel, "MOUNTS", mounts)
    monkeypatch.setattr(kernel, "TRACEFS_ROOTS", (str(tmp_path / "tracing"),))
    return mounts


def test_tracefs_not_mounted_is_said_so_not_no_such_tracepoint(no_tracefs: Path) -> None:
    r = Report()
    assert not check_attach_point(r, AttachPoint("tracepoint", "tcp:tcp_probe", "f"))
    assert r.checks[0].message.startswith("tracefs is not mounted")
    assert r.checks[0].error is TracefsMissingError and r.status() == 17
    # A raw tracepoint attaches by name: not a failure, only not checked.
    r2 = Report()
    assert check_attach_point(r2, AttachPoint("raw_tracepoint", "net:netif_receive_skb", "f"))
    assert r2.ok and "not checked: tracefs is not mounted" in r2.checks[0].message


def test_tracefs_mounted_but_unreadable_is_not_called_unmounted(
    no_tracefs: Path, tmp_path: Path
) -> None:
    no_tracefs.write_text(f"tracefs {tmp_path / 'tracing'} tracefs rw 0 0\n")
    problem = kernel.tracefs_problem()
    assert problem and "is not readable by this user" in problem


def test_tracekit_mounts_tracefs_only_where_allowed(no_tracefs: Path) -> None:
    # The host tests forbid it (conftest): nothing is mounted, and it says so.
    assert os.environ["TRACEKIT_MOUNT_TRACEFS"] == "0"
    assert kernel.mount_tracefs() is False
    assert "tracefs" not in no_tracefs.read_text()


def test_capabilities_instead_of_root(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = build_bus(load_entry_points=False)
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(kernel, "release", lambda: "6.1.0-18-amd64")
    bpf_perfmon = (1 << 39) | (1 << 38)
    txq, ooo = bus.probes.get("txq-flip"), bus.probes.get("ooo-okay")
    assert preflight.missing_capabilities(txq, "core", caps=bpf_perfmon) == []
    assert preflight.missing_capabilities(txq, "core", caps=1 << 39) == ["CAP_PERFMON"]
    # ooo-okay names kernel stacks: kallsyms' addresses need CAP_SYSLOG.
    assert preflight.missing_capabilities(ooo, "core", caps=bpf_perfmon) == ["CAP_SYSLOG"]
    # BCC, or a kernel before 5.8: no capabilities stand in for root but CAP_SYS_ADMIN.
    assert preflight.missing_capabilities(txq, "bcc", caps=bpf_perfmon) is None
    monkeypatch.setattr(kernel, "release", lambda: "5.4.0-1-amd64")
    assert preflight.missing_capabilities(txq, "core", caps=bpf_perfmon) is None
    monkeypatch.setattr(kernel, "release", lambda: "5.10.0-30-amd64")
    assert "CAP_SYS_RESOURCE" in preflight.required_capabilities(txq)
    r = Report()
    monkeypatch.setattr(kernel, "release", lambda: "6.1.0-18-amd64")
    monkeypatch.setattr(preflight, "_capabilities", lambda: 1 << 39)
    preflight.check_privileges(r, txq, "core")
    assert r.checks[0].message.startswith("needs root or the capabilities CAP_PERFMON: ")
    assert r.status() == 4


@pytest.mark.parametrize(
    ("os_release", "hint"),
    [
        ('ID=debian\nVERSION_ID="12"\n', "apt-get install libbpf1"),
        ("ID=ubuntu\nID_LIKE=debian\n", "apt-get install libbpf1"),
        ("ID=fedora\nVERSION_ID=41\n", "dnf install libbpf"),
        ("ID=arch\n", "install libbpf1 (Debian, Ubuntu) or libbpf (Fedora)"),
    ],
)
def test_a_missing_libbpf_names_the_distributions_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, os_release: str, hint: str
) -> None:
    (tmp_path / "os-release").write_text(os_release)
    monkeypatch.setattr(kernel, "OS_RELEASE", tmp_path / "os-release")

    def no_library(name: str, **_: object) -> object:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(libbpf_mod.ct, "CDLL", no_library)
    with pytest.raises(LibbpfMissingError) as e:
        libbpf_mod.Libbpf()
    assert str(e.value) == (
        f"libbpf is not installed (the CO-RE loader needs libbpf 1.0 or later): {hint}"
    )
    assert e.value.exit_code == 16
    assert libbpf_mod.version() == (None, str(e.value))


def test_version_lists_what_bpftrace_info_would() -> None:
    r = _run("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == _run("version").stdout
    keys = [ln.split(":", 1)[0] for ln in r.stdout.splitlines() if not ln.startswith("  ")]
    assert keys[0].startswith("tracekit 0.")
    assert keys[1:] == ["Python", "libbpf", "BCC", "kernel", "BTF", "tracefs", "CO-RE objects"]
    assert f"kernel: {os.uname().release}\n" in r.stdout
    btf = "yes" if Path("/sys/kernel/btf/vmlinux").exists() else "no"
    assert f"BTF: {btf}\n" in r.stdout
    j = json.loads(_run("version", "--json").stdout)
    assert set(j["core_objects"]) >= {"txq-flip", "rss-cpu", "ooo-okay", "fq-throttle"}
    for name, where in j["core_objects"].items():
        assert f"  {name}: {where}" in r.stdout
