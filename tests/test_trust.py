"""What root trusts and what it writes (tracekit.base.trust), attacked as sudo's and
OpenSSH's StrictModes checks are: folders and links of another owner, group- and
world-writable components, links swapped in after a check, planted temp names,
devices and links where an output goes. Another user is uid 65534 (nobody): the
tests that hand files to it need root, as the attacks they repeat do."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.base import trust
from tracekit.base.errors import UsageError

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="hands files to another user: needs root")


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A folder every component of which is trusted (pytest's own, under sticky /tmp)."""
    d = tmp_path / "base"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    assert trust.check_dir(d) is None, trust.check_dir(d)
    return d


# -- folders and links -------------------------------------------------------------


def test_system_folders_and_root_links_are_trusted() -> None:
    assert trust.check_dir("/") is None
    assert trust.check_dir("/usr/lib") is None
    # /tmp: world-writable, but sticky and root's: its entries are checked in turn.
    assert trust.check_dir("/tmp") is None
    if os.path.islink("/bin"):  # merged /usr: a root link in a root folder
        assert trust.check_dir("/bin") is None


@as_root
def test_a_component_of_another_owner_is_refused_and_named(base: Path) -> None:
    theirs = base / "theirs"
    (theirs / "cache").mkdir(parents=True)
    os.chown(theirs, NOBODY, NOBODY)
    why = trust.check_dir(theirs / "cache")
    assert why and str(theirs) in why and "uid 65534" in why and "not root" in why


@pytest.mark.parametrize(
    ("mode", "said"), [(0o775, "writable by its group"), (0o777, "writable by others")]
)
def test_a_group_or_world_writable_component_is_refused(base: Path, mode: int, said: str) -> None:
    open_ = base / "open"
    (open_ / "core").mkdir(parents=True)
    os.chmod(open_, mode)
    why = trust.check_dir(open_ / "core")
    assert why and said in why and str(open_) in why


@as_root
def test_sticky_counts_only_for_roots_folder_with_trusted_entries(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "mine").mkdir()
    assert trust.check_dir(shared / "mine") is None
    # An entry another user made in the sticky folder (it could also rename it away).
    (shared / "planted").mkdir()
    os.chown(shared / "planted", NOBODY, NOBODY)
    assert "uid 65534" in (trust.check_dir(shared / "planted") or "")
    # A sticky folder another user owns: it may remove anyone's entries.
    os.chown(shared, NOBODY, NOBODY)
    assert "uid 65534" in (trust.check_dir(shared / "mine") or "")


@as_root
def test_links_are_followed_only_when_their_owner_and_folder_are_trusted(base: Path) -> None:
    real = base / "real"
    real.mkdir()
    (base / "ok").symlink_to(real)
    assert trust.check_dir(base / "ok") is None
    # A link owned by another user in a trusted folder.
    (base / "theirs").symlink_to(real)
    os.lchown(base / "theirs", NOBODY, NOBODY)
    why = trust.check_dir(base / "theirs")
    assert why and "link" in why and "uid 65534" in why
    # The attack: a folder owned by nobody holding a link to the real cache.
    evil = base / "evil"
    evil.mkdir()
    (evil / "core").symlink_to(real)
    os.chown(evil, NOBODY, NOBODY)
    assert "uid 65534" in (trust.check_dir(evil / "core") or "")
    # A trusted link into an untrusted place: the target's components are checked.
    (base / "to-evil").symlink_to(evil / "core")
    assert "uid 65534" in (trust.check_dir(base / "to-evil") or "")
    # Relative targets and .. resolve physically, each folder checked.
    (real / "sub").mkdir()
    (base / "rel").symlink_to("real/sub/..")
    assert trust.check_dir(base / "rel") is None


def test_link_loops_and_non_folders_end_with_a_reason(base: Path) -> None:
    (base / "a").symlink_to("b")
    (base / "b").symlink_to("a")
    assert "too many levels" in (trust.check_dir(base / "a") or "")
    (base / "file").write_text("x")
    assert "not a folder" in (trust.check_dir(base / "file") or "")
    assert "No such file" in (trust.check_dir(base / "missing") or "")


def test_missing_folders_are_made_0755_and_existing_ones_never_changed(base: Path) -> None:
    old = os.umask(0o077)
    try:
        with trust.trusted_dir(base / "x" / "y", create=0o755):
            pass
    finally:
        os.umask(old)
    # The umask is the caller's business here: 0755 at most, 0700 with umask 077.
    assert _mode(base / "x" / "y") in (0o700, 0o755)
    private = base / "private"
    private.mkdir(mode=0o700)
    with trust.trusted_dir(private, create=0o755):
        pass
    assert _mode(private) == 0o700


# -- reading once, without links ------------------------------------------------------


def test_read_trusted_refuses_links_foreign_and_writable_files(base: Path) -> None:
    f = base / "obj"
    f.write_bytes(b"payload")
    os.chmod(f, 0o644)
    assert trust.read_trusted(f) == b"payload"
    (base / "link").symlink_to(f)
    with pytest.raises(trust.UntrustedPathError, match="symbolic link"):
        trust.read_trusted(base / "link")
    os.chmod(f, 0o666)
    with pytest.raises(trust.UntrustedPathError, match="writable by others"):
        trust.read_trusted(f)
    os.chmod(f, 0o644)
    if os.geteuid() == 0:
        os.chown(f, NOBODY, NOBODY)
        with pytest.raises(trust.UntrustedPathError, match="uid 65534"):
            trust.read_trusted(f)
    fifo = base / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(trust.UntrustedPathError, match="not a regular file"):
        trust.read_trusted(fifo)  # never blocks: O_NONBLOCK


# -- the environment under sudo and set-uid -----------------------------------------


def test_tracekit_variables_are_ignored_under_sudo_but_the_safe_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACEKIT_CACHE", "/tmp/evil")
    monkeypatch.setenv("TRACEKIT_DISABLE_PLUGINS", "lab")
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.delenv("SUDO_UID", raising=False)
    if os.geteuid() == os.getuid() and os.getegid() == os.getgid():
        assert trust.env("TRACEKIT_CACHE") == "/tmp/evil"
    monkeypatch.setenv("SUDO_USER", "mallory")
    assert trust.elevated()
    assert trust.env("TRACEKIT_CACHE") is None
    assert trust.env("TRACEKIT_CACHE", "/var/cache/tracekit") == "/var/cache/tracekit"
    assert trust.env("TRACEKIT_DISABLE_PLUGINS") == "lab"  # documented safe: loads less


def test_the_core_cache_ignores_tracekit_cache_under_sudo(tmp_path: Path) -> None:
    code = "import tracekit.bpf.core_build as cb; print(cb.CACHE_DIR)"
    env = {**os.environ, "TRACEKIT_CACHE": str(tmp_path)}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert plain.stdout.strip() == str(tmp_path / "core")
    env["SUDO_USER"] = "mallory"
    sudo = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert sudo.stdout.strip() == "/var/cache/tracekit/core", sudo.stderr


def test_every_tracekit_variable_is_documented_in_reliability_md() -> None:
    root = Path(__file__).resolve().parents[1]
    import re

    names: set[str] = set()
    for sub in ("tracekit", "plugins", "probes", "vm", "scripts", "tests", "bench", "examples"):
        for p in (root / sub).rglob("*"):
            if p.is_file() and p.suffix in ("", ".py", ".sh", ".md", ".toml"):
                text = p.read_text("utf-8", "replace")
                names |= set(re.findall(r"\bTRACEKIT_[A-Z][A-Z_]*[A-Z]\b", text))
    names -= {"TRACEKIT_H"}  # the C header's include guard, not a variable
    doc = (root / "docs" / "reliability.md").read_text()
    section = doc.split("## Environment", 1)[1].split("\n## ", 1)[0]
    missing = sorted(n for n in names if f"`{n}`" not in section)
    assert not missing, f"docs/reliability.md's Environment section lacks {missing}"
    for n in trust.SAFE_ENV:
        assert n in section


# -- outputs -----------------------------------------------------------------------


def test_outputs_are_0600_whatever_the_umask_and_mode_shares_them(base: Path) -> None:
    old = os.umask(0)
    try:
        trust.write_output(base / "a", b"x")
        trust.write_output(base / "b", b"x", mode=trust.parse_mode("0640"))
        os.close(trust.create_output(str(base / "c")))
    finally:
        os.umask(old)
    assert (_mode(base / "a"), _mode(base / "b"), _mode(base / "c")) == (0o600, 0o640, 0o600)
    for bad in ("abc", "0777", "4600", "0044", "-1"):
        with pytest.raises(UsageError, match="--mode"):
            trust.parse_mode(bad)


@pytest.mark.parametrize("maker", ["write_output", "create_output"])
def test_no_output_follows_a_link_at_its_name(base: Path, maker: str) -> None:
    victim = base / "victim"
    victim.write_bytes(b"root's secret")
    os.chmod(victim, 0o600)
    (base / "live").symlink_to(victim)
    (base / "dangling").symlink_to(base / "created-through-the-link")

    def make(p: Path, replace: bool) -> None:
        if maker == "write_output":
            trust.write_output(p, b"attacker", replace=replace)
        else:
            os.close(trust.create_output(str(p), replace=replace))

    for name in ("live", "dangling"):
        for replace in (False, True):
            with pytest.raises(UsageError, match="symbolic link"):
                make(base / name, replace)
    assert victim.read_bytes() == b"root's secret" and _mode(victim) == 0o600
    assert not (base / "created-through-the-link").exists()
    assert (base / "live").is_symlink() and (base / "dangling").is_symlink()
    assert sorted(p.name for p in base.iterdir()) == ["dangling", "live", "victim"]


def test_no_output_replaces_a_device_a_fifo_or_a_folder(base: Path) -> None:
    os.mkfifo(base / "fifo")
    (base / "dir").mkdir()
    for target, said in (
        ("/dev/null", "not a regular file"),
        (str(base / "fifo"), "not a regular file"),
        (str(base / "dir"), "is a directory"),
    ):
        with pytest.raises(UsageError, match=said):
            trust.write_output(target, b"x", replace=True)
        with pytest.raises(UsageError, match=said):
            os.close(trust.create_output(target, replace=True))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_replacing_renames_a_new_file_over_the_old_one(base: Path) -> None:
    """--force replaces the file's name, never its contents: a hard link another
    user made to it (or any open reader) keeps the old bytes."""
    out = base / "trace"
    out.write_bytes(b"old")
    os.link(out, base / "hardlink")
    with pytest.raises(UsageError, match="exists; pass --force"):
        trust.write_output(out, b"new")
    fd = trust.create_output(str(out), replace=True)
    os.write(fd, b"new")
    os.close(fd)
    assert out.read_bytes() == b"new" and (base / "hardlink").read_bytes() == b"old"
    trust.write_output(out, b"newer", replace=True)
    assert out.read_bytes() == b"newer" and (base / "hardlink").read_bytes() == b"old"


def test_temp_files_are_unpredictable_and_never_left_behind(base: Path) -> None:
    out = base / "export.parquet"
    # A link planted at the old predictable temp name is never written through.
    (base / "export.parquet.part").symlink_to(base / "victim")
    w = trust.OutputFile(out)
    tmp = Path(base, w.tmp)
    assert tmp.name.startswith(".export.parquet.") and len(tmp.name) > len(out.name) + 16
    assert _mode(tmp) == 0o600 and not tmp.is_symlink()
    w2 = trust.OutputFile(out)
    assert w2.tmp != w.tmp
    w2.abort()
    with pytest.raises(RuntimeError), w as f:
        f.write(b"half")
        raise RuntimeError("export failed midway")
    assert sorted(p.name for p in base.iterdir()) == ["export.parquet.part"]
    assert not (base / "victim").exists()


def test_an_output_made_meanwhile_by_someone_else_is_never_replaced(base: Path) -> None:
    out = base / "plot.png"
    w = trust.OutputFile(out)
    w.file.write(b"ours")  # type: ignore[union-attr]
    out.write_bytes(b"theirs")  # created between the check and the rename
    with pytest.raises(UsageError, match="exists"):
        w.commit()
    assert out.read_bytes() == b"theirs"
    assert sorted(p.name for p in base.iterdir()) == ["plot.png"]
