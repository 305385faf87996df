"""vm/run and vm/guest-root on bad input and their listings: no VM is booted, nothing built."""

from __future__ import annotations

import os
import subprocess
import sys
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
    # The top of the matrix is the newest kernel Debian ships (backports' 7.3), and CI
    # runs its wheel tests there; the whole suite on the row below it (7.2), whose BCC
    # builds against its headers.
    names = [line.split()[0] for line in run("vm/guest-root", "names").stdout.splitlines()]
    assert names[-1] == "7.3" and rows["7.3"] == "trixie-backports"
    script = (ROOT / "scripts/test.sh").read_text()
    assert f'full="${{TRACEKIT_CI_FULL-{names[-2]}}}"' in script
    assert names[-1] in script.split('rows="${TRACEKIT_CI_ROWS-', 1)[1].split('"', 1)[0]


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


# -- trust: guest roots are chrooted into as root (#26) ---------------------------------

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="hands files to another user: needs root")


def _fake_root(cache: Path, row: str = "7.2") -> Path:
    """An existing root at the path vm/guest-root computes (nothing is built)."""
    root = Path(run("vm/guest-root", "path", row, cache=cache).stdout.strip())
    assert root.parent == cache
    root.mkdir(parents=True)
    os.chmod(cache, 0o755)
    os.chmod(root, 0o755)
    return root


@as_root
def test_a_root_of_another_owner_or_writable_by_others_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    root = _fake_root(cache)
    r = run("vm/guest-root", "build", "7.2", cache=cache)
    assert r.returncode == 0 and r.stdout.strip() == str(root), r.stderr  # root's: used
    os.chown(root, NOBODY, NOBODY)
    r = run("vm/guest-root", "build", "7.2", cache=cache)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "refusing the guest root" in r.stderr and "uid 65534" in r.stderr
    os.chown(root, 0, 0)
    os.chmod(root, 0o777)
    r = run("vm/guest-root", "chroot", "7.2", "true", cache=cache)
    assert r.returncode == 2 and "writable by others" in r.stderr
    os.chmod(root, 0o755)
    # The cache above it another user's (it could rename the root away and plant its own).
    os.chown(cache, NOBODY, NOBODY)
    r = run("vm/guest-root", "build", "7.2", cache=cache)
    assert r.returncode == 2 and f"{cache} is owned by uid 65534" in r.stderr
    # A link in the cache to a root elsewhere: resolved, then the target is checked.
    os.chown(cache, 0, 0)
    os.rmdir(root)
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    os.chown(elsewhere, NOBODY, NOBODY)
    root.symlink_to(elsewhere)
    r = run("vm/guest-root", "build", "7.2", cache=cache)
    assert r.returncode == 2 and "uid 65534" in r.stderr


def test_the_vm_cache_variable_is_ignored_under_sudo(tmp_path: Path) -> None:
    env = {**os.environ, "TRACEKIT_VM_CACHE": str(tmp_path), "SUDO_USER": "mallory"}
    r = subprocess.run(
        ["bash", "vm/guest-root", "path", "7.2"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert r.stdout.startswith("/var/cache/tracekit/vm/sid-"), r.stderr
    env.pop("SUDO_USER")
    r = subprocess.run(
        ["bash", "vm/guest-root", "path", "7.2"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert r.stdout.startswith(f"{tmp_path}/sid-"), r.stderr


# -- any clone path (#26): under /tmp, with a space, with quotes ------------------------


def _built_root(row: str) -> Path | None:
    r = run("vm/guest-root", "path", row)
    p = Path(r.stdout.strip())
    return p if r.returncode == 0 and (p / "usr/bin").is_dir() else None


def _fake_clone(parent: Path, root: Path, release: str) -> Path:
    """A clone holding what vm/guest-root chroot reads (the script, the pyproject
    files, a venv marked current for ``root``), at a path under /tmp with a space
    and a quote in it. The command run needs no venv."""
    clone = parent / 'a clone\'s "dir"' / "main"
    (clone / "vm").mkdir(parents=True)
    (clone / "examples" / "tracekit-tcp-retrans").mkdir(parents=True)
    for rel in ("vm/guest-root", "pyproject.toml", "examples/tracekit-tcp-retrans/pyproject.toml"):
        (clone / rel).write_bytes((ROOT / rel).read_bytes())
    key = subprocess.run(
        [
            "bash",
            "-c",
            'printf "%s\\n" "$1" | cat - "$2" "$3" | sha256sum | cut -c1-16',
            "k",
            str(root),
            str(clone / "pyproject.toml"),
            str(clone / "examples/tracekit-tcp-retrans/pyproject.toml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv = clone / ".venv-vm" / release
    venv.mkdir(parents=True)
    (venv / ".tracekit-key").write_text(key + "\n")
    (clone / "marker").write_text("the clone, seen from inside the root\n")
    return clone


@pytest.mark.parametrize("row", ["7.2", "6.12"])
def test_chroot_works_from_a_clone_under_tmp_with_a_space(tmp_path: Path, row: str) -> None:
    """The clone is bound at its own path inside the root: once hidden by the tmpfs
    mounted over the root's /tmp (``sh: 1: cd: can't cd to /tmp/x/main``)."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = _built_root(row)
    if root is None:
        pytest.skip(f"the {row} guest root is not built (vm/guest-root build {row})")
    release = run("vm/guest-root", "release", row).stdout.strip()
    clone = _fake_clone(tmp_path, root, release)
    assert str(clone).startswith("/tmp/") and " " in str(clone)
    r = subprocess.run(
        [
            "bash",
            str(clone / "vm/guest-root"),
            "chroot",
            row,
            "sh",
            "-c",
            'pwd; cat marker; printf "[%s]" "$@"',
            "sh",
            "two words",
            "$HOME",
            "'q'",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(clone)
    assert lines[1] == "the clone, seen from inside the root"
    assert lines[2] == "[two words][$HOME]['q']"  # arguments arrive as given, unexpanded


def _vm_run_tree(parent: Path) -> Path:
    """A tree holding vm/run, a set-up that does nothing, and a stand-in ``vng`` in
    its venv that runs the guest's command line here instead of booting a guest."""
    tree = parent / "main"
    (tree / "vm").mkdir(parents=True)
    (tree / "scripts").mkdir()
    (tree / ".venv" / "bin").mkdir(parents=True)
    for rel in ("vm/run", "vm/guest-root"):
        (tree / rel).write_bytes((ROOT / rel).read_bytes())
    (tree / "scripts" / "setup.sh").write_text("exit 0\n")
    vng = tree / ".venv" / "bin" / "vng"
    vng.write_text(
        "#!/bin/bash\n"
        'while [ $# -gt 0 ]; do [ "$1" = --exec ] && exec sh -c "$2"; shift; done\n'
        "exit 1\n"
    )
    os.chmod(vng, 0o755)
    (tree / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return tree


def test_vm_run_hands_the_guest_a_quoted_command_from_a_clone_under_tmp(tmp_path: Path) -> None:
    tree = _vm_run_tree(tmp_path)
    if not any(Path("/boot").glob("vmlinuz-*")):
        pytest.skip("no kernel in /boot")
    env = {**os.environ, "TRACEKIT_VM_NICS": "0"}
    r = subprocess.run(
        [
            "bash",
            str(tree / "vm" / "run"),
            "--",
            "sh",
            "-c",
            'pwd; command -v python; printf "[%s]" "$@"',
            "sh",
            "a b",
            "$PATH",
            "'q'",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if "no kernel with headers" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-3:] == [str(tree), str(tree / ".venv" / "bin" / "python"), "[a b][$PATH]['q']"]
    assert not list((tree / ".vm-out").glob(".started-*"))


@pytest.mark.parametrize("name", ["with space", "quote's", "dollar$x"])
def test_vm_run_refuses_a_path_virtme_ng_cannot_share_in_one_line(
    tmp_path: Path, name: str
) -> None:
    tree = _vm_run_tree(tmp_path / name)
    r = subprocess.run(
        ["bash", str(tree / "vm" / "run"), "--", "true"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "virtme-ng cannot share" in r.stderr
