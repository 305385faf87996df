"""CO-RE objects: built once by clang, checked before every load (host, no kernel needed)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

import tracekit.bpf.core_build as cb
from tracekit.base.errors import TracekitError
from tracekit.bpf.bcc import layout_problems
from tracekit.bpf.preflight import choose_loader, module_btf_problem
from tracekit.plugin.bus import build_bus
from tracekit.plugin.registry import ProbeSpec
from tracekit.testing import synthetic_rows

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    d = tmp_path / "core"
    monkeypatch.setattr(cb, "CACHE_DIR", d)
    return d


@pytest.fixture(scope="module")
def txq() -> ProbeSpec:
    return build_bus().probes.get("txq-flip")


def test_built_object_matches_the_schema_and_declares_every_setting(
    cache: Path, txq: ProbeSpec
) -> None:
    path = cb.build(txq)
    assert path.parent == cache and path.exists()
    desc = cb.manifest(path)
    st = desc["structs"]["tk_event"]
    # The struct clang compiled is the schema, member by member.
    assert layout_problems([(n, o) for n, o in st["members"]], st["size"], txq.schema) == []
    # Settings and the parameter are read-only globals the loader can find and set.
    for name in ("tk_cfg_stream", "tk_cfg_sample", "tk_cfg_max_events_per_sec", "tk_param_ifindex"):
        assert name in desc["rodata"], sorted(desc["rodata"])
    assert cb.find_object(txq)[0] == path
    # Built once: a second build reuses it.
    mtime = path.stat().st_mtime_ns
    assert cb.build(txq) == path and path.stat().st_mtime_ns == mtime


def test_a_tampered_or_exposed_object_is_never_loaded(cache: Path, txq: ProbeSpec) -> None:
    path = cb.build(txq)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    why = cb.verified(path)
    assert why and "does not match its recorded hash" in why
    found, reason = cb.find_object(txq)
    assert found is None and "tampered" in reason
    # Rebuilt (the hash mismatch makes build compile again); then its manifest
    # (what the loader trusts for offsets) is altered.
    path.unlink()
    path = cb.build(txq)
    m = Path(str(path) + ".json")
    m.write_bytes(m.read_bytes().replace(b'"size": ', b'"size": 1'))
    assert "manifest does not match" in (cb.verified(path) or "")
    # Rebuilt again, then exposed.
    path.unlink()
    path = cb.build(txq)
    assert cb.verified(path) is None
    os.chmod(path, 0o666)
    assert "writable by others" in (cb.verified(path) or "")
    os.chmod(path, 0o644)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        assert "not root" in (cb.verified(path) or "")


def test_the_loader_choice_says_why(cache: Path, txq: ProbeSpec) -> None:
    spec = txq
    loader, why = choose_loader(spec)
    assert loader == "bcc" and "no CO-RE object built" in why and "tracekit build" in why
    with pytest.raises(TracekitError, match="cannot use the CO-RE loader: no CO-RE object"):
        choose_loader(spec, "core")
    cb.build(spec)
    if Path("/sys/kernel/btf/vmlinux").exists():
        assert choose_loader(spec)[0] == "core"
    assert choose_loader(spec, aggregate=True)[0] == choose_loader(spec)[0]
    # --output perf: the object has a perf buffer too (read by tracekit.bpf.perfbuf).
    assert choose_loader(spec, output="perf") == choose_loader(spec)
    assert choose_loader(spec, "bcc") == ("bcc", "asked for (--loader bcc)")
    bcc_only = dataclasses.replace(spec, core=False)
    assert choose_loader(bcc_only) == ("bcc", "no CO-RE: the probe has no CO-RE build")


def test_a_probe_in_a_module_needs_the_modules_btf() -> None:
    """fq-throttle reads sch_fq's private struct: CO-RE relocates it against the
    module's own BTF, which kernels before 5.11 do not have (BCC then, and why)."""
    fq = build_bus().probes.get("fq-throttle")
    why = module_btf_problem(fq, "5.10.0-46-amd64")
    assert why and "no module BTF (5.11+)" in why and "sch_fq" in why
    # On 5.11+ only a loaded module without BTF is a problem; one not loaded yet is
    # the attach point check's to report ("modprobe sch_fq").
    assert module_btf_problem(fq, "6.1.0-56-amd64") in (None, *_no_module_btf(fq))
    assert module_btf_problem(build_bus().probes.get("ooo-okay"), "5.10.0-46-amd64") is None


def _no_module_btf(spec: ProbeSpec) -> list[str]:
    return [
        f"module {ap.module} has no BTF (/sys/kernel/btf/{ap.module}: "
        "CONFIG_DEBUG_INFO_BTF_MODULES)"
        for ap in spec.attach
        if ap.module and (Path("/sys/module") / ap.module).is_dir()
    ]


@pytest.mark.parametrize("name", sorted(s.name for s in build_bus().probes if s.core))
def test_every_core_object_loads_into_this_kernel(name: str) -> None:
    """The object as setup built it, relocated against this kernel's own BTF and
    through its verifier: the kernel types the probe declares exist here (this
    once caught sk_tx_queue_mapping, a macro, declared as a member)."""
    import os

    from tracekit.bpf.core import CoreProbe

    if os.geteuid() != 0 or not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("needs root and a kernel with BTF")
    spec = build_bus().probes.get(name)
    path, why = cb.find_object(spec)
    if path is None:
        pytest.skip(why)
    for m in {ap.module for ap in spec.attach if ap.module}:
        if not Path("/sys/kernel/btf", m).exists():
            pytest.skip(f"its types are in module {m}'s BTF, not here (the VM tests load it)")
    for kw in ({}, {"stream": False, "aggregate": True}):
        CoreProbe(spec, spec.resolve_params({}), path, **kw).close()


def test_core_decode_strips_ring_headers_in_one_step() -> None:
    """A run of ring buffer records (8-byte header, record, padding to 8) becomes a
    packed batch whose rows are the records, strings cut at NUL and decoded."""
    import os
    import struct

    from tracekit.bpf.core import CoreProbe

    if os.geteuid() != 0 or not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("needs root and a kernel with BTF")
    spec = build_bus().probes.get("txq-flip")
    path, why = cb.find_object(spec)
    if path is None:
        pytest.skip(why)
    probe = CoreProbe(spec, spec.resolve_params({}), path)
    try:
        schema = spec.schema
        rows = synthetic_rows(schema, 5, seed=7)
        # As the kernel writes struct tk_event (the schema drops any padding; txq-flip's
        # struct has none since it carries `cause`: tests/test_schema.py covers pads).
        size = schema.kernel_size
        assert size == 80
        stride = (8 + size + 7) & ~7
        run = bytearray()
        for r in rows:
            raw = struct.pack(
                schema.kernel_struct_format, *[v.encode() if isinstance(v, str) else v for v in r]
            )
            run += struct.pack("=II", size, 0) + raw + bytes(stride - 8 - size)
        batch = probe.decode_run(memoryview(bytes(run)), len(rows))
        assert batch.packed and len(batch) == 5
        assert batch.rows == rows
    finally:
        probe.close()


def test_core_stacks_name_addresses_as_bcc_does() -> None:
    """The CO-RE path's stand-in for BCC's ksym: the function an address falls in."""
    from tracekit.bpf.core_stacks import KernelSymbols

    syms = KernelSymbols(
        b"ffffffff81000000 T _stext\n"
        b"ffffffff81000100 t tcp_ack\n"
        b"ffffffff81000200 D some_data\n"
        b"ffffffff81000300 T tcp_sendmsg\t[tcp_mod]\n"
    )
    assert syms.name(0xFFFFFFFF81000150) == b"tcp_ack"  # inside tcp_ack
    assert syms.name(0xFFFFFFFF81000250) == b"tcp_ack"  # data symbols are not functions
    assert syms.name(0xFFFFFFFF81000300) == b"tcp_sendmsg"
    assert syms.name(0x1000) == b"[unknown]"
    aliases = KernelSymbols(b"ffffffff81000000 t zeta\nffffffff81000000 T alpha\n")
    assert aliases.name(0xFFFFFFFF81000004) == b"zeta"  # the greatest name, whatever its type
    hidden = KernelSymbols(b"0000000000000000 T _stext\n0000000000000000 t tcp_ack\n")
    assert hidden.name(0xFFFFFFFF81000150) == b"[unknown]"  # kptr_restrict: no addresses


def test_kernel_symbols_agree_with_a_table_by_number_on_this_kernel() -> None:
    """The table keeps kallsyms' lines as bytes (fast to build); looked up, it names
    every address as a table of (address, name) pairs parsed into numbers does."""
    import bisect
    import random
    import re

    from tracekit.bpf.core_stacks import KernelSymbols

    text = Path("/proc/kallsyms").read_bytes()
    pairs = sorted((int(a, 16), n) for a, n in re.findall(rb"^(\S+) [tT] (\S+)", text, re.M))
    if not pairs or not pairs[-1][0]:
        pytest.skip("kallsyms shows no addresses here (not root, or kptr_restrict)")
    addrs = [a for a, _ in pairs]

    def by_number(addr: int) -> bytes:
        i = bisect.bisect_right(addrs, addr) - 1
        return pairs[i][1] if i >= 0 and addrs[i] else b"[unknown]"

    syms = KernelSymbols(text)
    rng = random.Random(14)
    probes = [a + d for a in rng.sample(addrs, min(5000, len(addrs))) for d in (0, 1, 99)]
    probes += [0, addrs[0] - 1, addrs[-1] + 4096]
    assert [syms.name(a) for a in probes] == [by_number(a) for a in probes]


def test_a_failed_build_says_what_the_compiler_said(
    cache: Path, txq: ProbeSpec, tmp_path: Path
) -> None:
    # txq-flip's source with a syntax error after its struct: the cache keeps nothing,
    # and the error is clang's, not a FileNotFoundError about the half-written output.
    src = tmp_path / "txq_flip.bpf.c"
    text = txq.source.read_text()
    src.write_text(text + "\nthis is not C;\n")
    broken = dataclasses.replace(txq, source=src)
    with pytest.raises(TracekitError, match=r"CO-RE build failed: .*error"):
        cb.build(broken)
    assert not list(cache.glob("*.tmp")) and not list(cache.glob("*.bpf.o"))


def test_a_build_keeps_other_trees_recent_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trees sharing the cache each load their own source's object: a build removes
    only objects of the probe's other sources that nobody built for two weeks."""
    import os
    import types

    from tracekit.bpf import core_build

    monkeypatch.setattr(core_build, "CACHE_DIR", tmp_path)
    now = 1_800_000_000.0
    current = tmp_path / "p-aaaa.bpf.o"
    files = {
        "p-aaaa.bpf.o": now,  # this source's
        "p-aaaa.bpf.o.json": now,
        "p-bbbb.bpf.o": now - 3600,  # another tree's, built an hour ago
        "p-bbbb.bpf.o.sha256": now - 3600,
        "p-cccc.bpf.o": now - core_build.STALE_AFTER_S - 1,  # nobody's for two weeks
        "p-cccc.bpf.o.json": now - core_build.STALE_AFTER_S - 1,
        "q-dddd.bpf.o": now - core_build.STALE_AFTER_S - 1,  # another probe's
    }
    for name, mtime in files.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    spec = types.SimpleNamespace(name="p")
    core_build._remove_stale(spec, current, now=now)  # type: ignore[arg-type]
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "p-aaaa.bpf.o",
        "p-aaaa.bpf.o.json",
        "p-bbbb.bpf.o",
        "p-bbbb.bpf.o.sha256",
        "q-dddd.bpf.o",
    ]


# -- the cache attacked (#26): links, other owners, swaps after the check ----------------

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="hands files to another user")


@needs_root
def test_a_cache_reached_through_another_users_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, txq: ProbeSpec
) -> None:
    """The issue's attack: TRACEKIT_CACHE names a folder owned by nobody holding a link
    to the real cache. The object there is root's and intact, yet not loaded: nobody
    could swap the link between the check and the load."""
    real = tmp_path / "real"
    monkeypatch.setattr(cb, "CACHE_DIR", real / "core")
    path = cb.build(txq)
    assert cb.verified(path) is None
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "core").symlink_to(real / "core")
    os.chown(evil, NOBODY, NOBODY)
    monkeypatch.setattr(cb, "CACHE_DIR", evil / "core")
    found, why = cb.find_object(txq)
    assert found is None and "not to be trusted" in why and "uid 65534" in why
    with pytest.raises(TracekitError, match="uid 65534"):
        cb.read_object(cb.object_path(txq))
    # tracekit build will not write there either.
    with pytest.raises(TracekitError, match="will not build into") as exc:
        cb.build(txq)
    assert exc.value.exit_code == 2


def test_an_object_name_that_is_a_link_is_never_read(cache: Path, txq: ProbeSpec) -> None:
    path = cb.build(txq)
    elsewhere = cache.parent / "elsewhere.bpf.o"
    os.rename(path, elsewhere)
    path.symlink_to(elsewhere)  # the same, intact bytes, reached through a link
    assert "symbolic link" in (cb.verified(path) or "")
    path.unlink()
    os.rename(elsewhere, path)
    for suffix in (".sha256", ".json"):
        side = Path(str(path) + suffix)
        os.rename(side, str(side) + ".real")
        side.symlink_to(str(side) + ".real")
        assert "symbolic link" in (cb.verified(path) or ""), suffix
        side.unlink()
        os.rename(str(side) + ".real", side)
    assert cb.verified(path) is None


def test_the_object_loaded_is_the_bytes_checked(cache: Path, txq: ProbeSpec) -> None:
    """read_object reads once; libbpf opens those bytes (bpf_object__open_mem): a file
    swapped or removed after the check changes nothing of what is loaded."""
    from tracekit.bpf.libbpf import BpfObject

    path = cb.build(txq)
    obj = cb.read_object(path)
    path.write_bytes(b"swapped after the check")
    with BpfObject(str(path), obj.data) as bpf:
        assert bpf.program("tk_pick_tx_entry") and bpf.map("tk_events")
    path.unlink()
    with BpfObject(str(path), obj.data) as bpf:
        assert bpf.map("tk_events")
    # And by path, BpfObject itself reads without following a link.
    (cache / "link.bpf.o").symlink_to(cache / "nowhere")
    with pytest.raises(OSError):
        BpfObject(str(cache / "link.bpf.o"))


def test_build_writes_through_temp_files_and_never_through_a_planted_link(
    cache: Path, txq: ProbeSpec, tmp_path: Path
) -> None:
    """The predictable <probe>-<key>.bpf.o.built-by once overwrote a root 0600 file
    through a link: every file is now renamed into place, a link there is refused,
    and the file it points to is untouched."""
    path = cb.build(txq)
    victim = tmp_path / "victim"
    victim.write_text("root's 0600 file\n")
    os.chmod(victim, 0o600)
    for name in (path.name, path.name + ".built-by", path.name + ".sha256"):
        for p in cache.glob(path.name + "*"):
            p.unlink()
        (cache / name).symlink_to(victim)
        with pytest.raises(TracekitError, match="symbolic link"):
            cb.build(txq)
        assert victim.read_text() == "root's 0600 file\n"
        assert (victim.stat().st_mode & 0o777) == 0o600
        (cache / name).unlink()
    # No temporary file or build folder left behind, and the next build succeeds.
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]
    assert cb.verified(cb.build(txq)) is None
    assert {p.name[len(path.name) :] for p in cache.glob(path.name + "*")} == {
        "",
        ".json",
        ".sha256",
        ".built-by",
    }


def test_build_never_changes_an_existing_folders_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, txq: ProbeSpec
) -> None:
    """Through a planted link tracekit build once made a private root folder 0755."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(cb, "CACHE_DIR", private)
    path = cb.build(txq)
    assert (private.stat().st_mode & 0o777) == 0o700
    assert cb.verified(path) is None
    # A missing cache is made 0755 (objects are no secret; users with capabilities read them).
    old = os.umask(0o022)
    try:
        monkeypatch.setattr(cb, "CACHE_DIR", tmp_path / "new" / "core")
        cb.build(txq)
    finally:
        os.umask(old)
    assert ((tmp_path / "new" / "core").stat().st_mode & 0o777) == 0o755


def test_libbpf_opens_without_a_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening libbpf and libc starts no process: ctypes.util.find_library runs
    ``ldconfig -p`` (a fork and exec before the first event, #25)."""
    import subprocess

    from tracekit.bpf import libbpf as lb

    def no_process(*a: object, **k: object) -> None:
        raise AssertionError(f"a subprocess on the way to the first event: {a}")

    old = lb._LIB
    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(lb, "_LIB", None)
    monkeypatch.setattr(lb, "_LIBC", None)
    lib = lb.libbpf()
    assert lib.lib.bpf_object__open_file is not None
    if old is not None:
        # The new Libbpf gave libbpf its print callback; it goes when the test ends
        # (the old one is put back): give libbpf the old one's again, or its next
        # message calls freed memory (a segfault in the next test that loads).
        old.lib.libbpf_set_print(old._printer)
