"""vm/run and vm/guest-root on bad input and their listings: no VM is booted, nothing built."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["TRACEKIT_VM_CACHE"] = str(cache)
    return subprocess.run(
        ["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize(
    "args",
    [
        ("vm/run", "--kernel", "9.9", "--", "true"),
        ("vm/run", "--kernel"),
        ("vm/run", "--bogus", "--", "true"),
        ("vm/run",),
        ("vm/guest-root", "build", "9.9"),
        ("vm/guest-root", "bogus"),
    ],
)
def test_bad_input_gets_one_line_and_status_2(args: tuple[str, ...]) -> None:
    r = run(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr


def test_unknown_kernel_names_the_known_ones() -> None:
    r = run("vm/run", "--kernel", "9.9", "--", "true")
    assert "unknown kernel '9.9'" in r.stderr
    for name in ("6.1", "6.12", "7.2"):
        assert name in r.stderr


def test_every_row_maps_to_a_release() -> None:
    rows = dict(line.split() for line in run("vm/guest-root", "names").stdout.splitlines())
    assert rows["6.1"] == "bookworm"
    assert rows["6.12"] == "trixie"
    assert rows["7.2"] == "sid"
    # The top of the matrix is the newest kernel Debian ships (backports' 7.3), and
    # CI runs the whole suite there.
    names = [line.split()[0] for line in run("vm/guest-root", "names").stdout.splitlines()]
    assert names[-1] == "7.3" and rows["7.3"] == "trixie-backports"
    script = (ROOT / "scripts/test.sh").read_text()
    assert f'full="${{TRACEKIT_CI_FULL-{names[-1]}}}"' in script


def test_root_path_is_in_the_cache_and_keyed_by_its_recipe(tmp_path: Path) -> None:
    a = run("vm/guest-root", "path", "6.12", cache=tmp_path).stdout.strip()
    b = run("vm/guest-root", "path", "7.2", cache=tmp_path).stdout.strip()
    assert a.startswith(f"{tmp_path}/trixie-") and b.startswith(f"{tmp_path}/sid-")
    assert a == run("vm/guest-root", "path", "6.12", cache=tmp_path).stdout.strip()


def test_list_kernels_shows_every_row_without_building(tmp_path: Path) -> None:
    r = run("vm/run", "--list-kernels", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "RELEASE", "KERNEL"]
    assert {line.split()[0] for line in lines[1:]} >= {"6.1", "6.12", "7.2"}
    assert "not built" in r.stdout
    assert list(tmp_path.iterdir()) == []
