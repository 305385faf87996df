"""Find, build and check probes' CO-RE objects: shipped in the wheel, or built once.

A wheel carries the built-in probes' objects, built by clang when the wheel was built
(setup.py calls ``build_shipped``), as read-only package data in
``tracekit/probes/core/`` with the clang that built them (``BUILD.json``): nothing
compiles on the user's host. ``tracekit build`` compiles the objects of other probes
(a plugin's, or a source tree's without a wheel) with clang into ``CACHE_DIR``.

Each object is named by a hash of the sources and flags that went into it, with its
own SHA-256 and its manifest beside it. At run time an object is used only if it is
there under the name today's sources hash to, its bytes and manifest still hash to
what the build recorded, and nobody else can change it: a shipped object is owned by
root or by the owner of tracekit's own code, a cached one by root; neither, nor its
folder, is writable by group or others. The shipped objects are tried first. Anything
else: the BCC path, and ``tracekit check`` says why.

Build flags map the build's folders to fixed names (``-ffile-prefix-map``), so the
same sources and the same clang give the same bytes wherever they are built.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracekit.base.errors import CompileError, TracekitError

if TYPE_CHECKING:
    from hashlib import sha256

    from tracekit.plugin.registry import ProbeSpec
else:
    try:
        # CPython's own SHA-256, as the standard library's random module takes its
        # SHA-512: hashlib loads OpenSSL's libcrypto first, a few megabytes read and
        # relocated on every `tracekit run` (objects are checked before each load).
        from _sha2 import sha256  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.11
        except ImportError:
            from hashlib import sha256

CACHE_DIR = Path(os.environ.get("TRACEKIT_CACHE", "/var/cache/tracekit")) / "core"
HEADERS = ("tracekit.h", "tk_compat.h", "tk_kernel_types.h")
CFLAGS = ("-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-DTK_CORE", "-Wall", "-Werror")


def _clang() -> str:
    path = shutil.which("clang")
    if path is None:
        raise TracekitError("clang is not installed: apt-get install clang (tracekit build)")
    return path


def _sources(spec: ProbeSpec) -> list[bytes]:
    root = files("tracekit.probes")
    own = [h.read_bytes() for d in spec.include_dirs for h in _headers(d)]
    return [spec.source.read_bytes()] + [root.joinpath(h).read_bytes() for h in HEADERS] + own


def _headers(folder: Traversable) -> list[Traversable]:
    """The C headers of one of a probe's ``include_dirs``, in name order."""
    return sorted((h for h in folder.iterdir() if h.name.endswith(".h")), key=lambda h: h.name)


def key_of(sources: list[bytes]) -> str:
    """The name's hash of an object built from ``sources`` (the probe's, then HEADERS')."""
    h = sha256()
    for part in (" ".join(CFLAGS).encode(), *sources):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:20]


def object_key(spec: ProbeSpec) -> str:
    return key_of(_sources(spec))


def compiler_version() -> str:
    try:
        out = subprocess.run([_clang(), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired, TracekitError):
        return ""
    return out.stdout.splitlines()[0] if out.stdout else ""


def object_path(spec: ProbeSpec) -> Path:
    return CACHE_DIR / f"{spec.name}-{object_key(spec)}.bpf.o"


# The wheel's objects: package data beside the probes (None: the package's own folder).
SHIPPED_DIR: Path | None = None
BUILD_RECORD = "BUILD.json"


def shipped_dir() -> Path | None:
    """Where the installed package keeps the objects built with the wheel, or None
    when the probes are not a plain folder (a zip, a namespace package)."""
    if SHIPPED_DIR is not None:
        return SHIPPED_DIR
    root = files("tracekit.probes")
    return Path(str(root)) / "core" if isinstance(root, Path) else None


def shipped_path(spec: ProbeSpec) -> Path | None:
    d = shipped_dir()
    return None if d is None else d / f"{spec.name}-{object_key(spec)}.bpf.o"


def shipped_build() -> dict[str, Any] | None:
    """What built the wheel's objects (clang's version, flags, each object's hash), or
    None when this install has none (a source tree, an editable install)."""
    d = shipped_dir()
    if d is None:
        return None
    try:
        data: dict[str, Any] = json.loads((d / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data


def _write_object(tmp: Path, out: Path) -> None:
    """Record ``tmp``'s manifest, hashes and compiler beside ``out``, then move it there."""
    manifest = json.dumps(describe(tmp), sort_keys=True).encode()
    digest = sha256(tmp.read_bytes()).hexdigest()
    os.chmod(tmp, 0o644)
    Path(str(out) + ".json").write_bytes(manifest)
    os.chmod(str(out) + ".json", 0o644)
    Path(str(out) + ".sha256").write_text(
        f"{digest}  object\n{sha256(manifest).hexdigest()}  manifest\n"
    )
    Path(str(out) + ".built-by").write_text(compiler_version() + "\n")
    for suffix in (".sha256", ".built-by"):
        os.chmod(str(out) + suffix, 0o644)
    os.replace(tmp, out)


def build_shipped(probes: Path, dest: Path) -> dict[str, Any]:
    """Build every built-in probe's object from the source tree's ``probes`` folder into
    ``dest`` (the wheel's ``tracekit/probes/core``), with BUILD.json: setup.py's hook.

    A probe is a folder of ``probes`` with one ``NAME.bpf.c``; its probe name is the
    folder's with ``-`` for ``_`` (``txq_flip`` is ``txq-flip``), as the probes name
    themselves (tests/test_wheel.py checks both lists agree).
    """
    dest.mkdir(parents=True, exist_ok=True)
    headers = [(probes / h).read_bytes() for h in HEADERS]
    objects: dict[str, Any] = {}
    for src in sorted(probes.glob("*/*.bpf.c")):
        name = src.parent.name.replace("_", "-")
        out = dest / f"{name}-{key_of([src.read_bytes(), *headers])}.bpf.o"
        tmp = dest / (out.name + ".tmp")
        try:
            compile_core(src, tmp, [probes, src.parent])
        except CompileError as exc:
            raise CompileError(f"probe {name}: CO-RE build failed: {exc}") from None
        _write_object(tmp, out)
        objects[name] = {
            "object": out.name,
            "source": f"{src.parent.name}/{src.name}",
            "sha256": Path(str(out) + ".sha256").read_text().split()[0],
        }
    record = {"clang": compiler_version(), "cflags": list(CFLAGS), "objects": objects}
    (dest / BUILD_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def build(spec: ProbeSpec) -> Path:
    """Compile ``spec`` for CO-RE into the cache (a no-op when it is there already)."""
    if not spec.core:
        raise TracekitError(f"probe {spec.name} has no CO-RE build (ProbeSpec.core)")
    out = object_path(spec)
    if verified(out) is None:
        _remove_stale(spec, out)
        return out
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE_DIR, 0o755)
    with contextlib.ExitStack() as stack:
        inc = stack.enter_context(as_file(files("tracekit.probes")))
        src = stack.enter_context(as_file(spec.source))
        # The probe's include_dirs, as BCC is given them (tracekit.bpf.bcc).
        own = [Path(stack.enter_context(as_file(d))) for d in spec.include_dirs]
        fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".tmp")
        os.close(fd)
        try:
            compile_core(Path(src), Path(tmp), [Path(inc), Path(src).parent, *own])
        except CompileError as exc:
            # clang may have removed its half-written output already.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise CompileError(f"probe {spec.name}: CO-RE build failed: {exc}") from None
    _write_object(Path(tmp), out)
    _remove_stale(spec, out)
    return out


# How long an object of another source of the same probe stays in the cache. Several
# trees may share it (two clones, a CI checkout beside a developer's, a helper's
# worktree), each loading its own source's object: removing every other object at
# each build made them remove each other's, and a VM run found its object gone
# between its build and its load. Objects are small (tens of KB).
STALE_AFTER_S = 14 * 24 * 3600


def _remove_stale(spec: ProbeSpec, current: Path, now: float | None = None) -> None:
    """Remove this probe's objects of other sources not built for STALE_AFTER_S."""
    now = time.time() if now is None else now
    for old in CACHE_DIR.glob(f"{spec.name}-*.bpf.o*"):
        if old.name.startswith(current.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - old.stat().st_mtime > STALE_AFTER_S:
                old.unlink()


def compile_core(src: Path, out: Path, include: list[Path]) -> None:
    """clang ``src`` into a CO-RE object ``out`` with tracekit's flags (one place for
    the command: ``tracekit build``, the ring buffer tests and bench/drain.py)."""
    # The debug information (and so BTF's line info) names the files compiled and the
    # folder clang ran in: mapped to fixed names, the bytes do not depend on where the
    # tree is (a wheel built in a temporary folder is the same wheel).
    maps = [f"-ffile-prefix-map={Path(d).resolve()}={Path(d).resolve().name}" for d in include]
    cmd = [
        _clang(),
        *CFLAGS,
        *(f"-I{d}" for d in include),
        "-I/usr/include/x86_64-linux-gnu",
        *maps,
        f"-ffile-prefix-map={src.parent.resolve()}={src.parent.resolve().name}",
    ]
    p = subprocess.run(
        [*cmd, "-c", str(src.resolve()), "-o", str(Path(out).resolve())],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=src.parent,
    )
    if p.returncode != 0:
        first = next((ln for ln in p.stderr.splitlines() if "error" in ln), p.stderr.strip())
        raise CompileError(first[:300])


def _code_owner() -> int:
    """The owner of tracekit's own code: whoever may change the package may change
    the objects shipped in it, and nobody else may."""
    return Path(__file__).stat().st_uid


def verified(path: Path, *, shipped: bool = False) -> str | None:
    """Why ``path`` must not be loaded, or None when it may be. A cached object must
    be root's; a ``shipped`` one root's or that of the package's code."""
    try:
        st = path.stat()
        dst = path.parent.stat()
    except OSError:
        return f"no CO-RE object built ({path.name}; run 'tracekit build')"
    owners = {0, _code_owner()} if shipped else {0}
    for what, s in (("object", st), ("its folder", dst)):
        if s.st_uid not in owners:
            whose = "root or tracekit's code owner" if shipped else "root"
            return f"the CO-RE {what} is not owned by {whose} ({path})"
        if s.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"the CO-RE {what} is writable by others ({path})"
    try:
        want = Path(str(path) + ".sha256").read_text().split()
        manifest = Path(str(path) + ".json").read_bytes()
    except OSError:
        return f"the CO-RE object has no recorded hash or manifest ({path})"
    if want[0:1] != [sha256(path.read_bytes()).hexdigest()]:
        return f"the CO-RE object does not match its recorded hash: tampered? ({path})"
    if want[2:3] != [sha256(manifest).hexdigest()]:
        return f"the CO-RE object's manifest does not match its recorded hash ({path})"
    return None


def describe(obj: Path) -> dict[str, Any]:
    """What the loader needs to know of an object, read once at build time: the
    offsets of its read-only settings, and struct tk_event and tk_agg_key as clang
    laid them out (name and offset of each member, size). At run time the loader
    then reads this small manifest instead of parsing ELF and BTF (seconds under
    emulation)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    from tracekit.bpf.btf import Btf

    with open(obj, "rb") as f:
        elf = ELFFile(f)
        idx = elf.get_section_index(".rodata") if elf.get_section_by_name(".rodata") else -1
        rodata: dict[str, list[int]] = {}
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            for sym in symtab.iter_symbols():
                if sym["st_shndx"] == idx and sym.name:
                    rodata[sym.name] = [int(sym["st_value"]), int(sym["st_size"])]
        btf_sec = elf.get_section_by_name(".BTF")
        btf = Btf(btf_sec.data() if btf_sec is not None else b"")
    structs: dict[str, Any] = {}
    for name in ("tk_event", "tk_agg_key"):
        try:
            st = btf.find_struct(name)
        except TracekitError:
            continue
        structs[name] = {
            "size": st.size_or_type,
            "members": [[m.name, m.offset] for m in st.members],
        }
    return {"rodata": rodata, "structs": structs}


def manifest(obj: Path) -> dict[str, Any]:
    """The manifest ``describe`` wrote beside a verified object."""
    data: dict[str, Any] = json.loads(Path(str(obj) + ".json").read_bytes())
    return data


def find_object(spec: ProbeSpec) -> tuple[Path | None, str]:
    """(object to load, why) for this probe's CO-RE path; (None, reason) if not.

    The wheel's object first (read-only package data, nothing to build), then the
    cache ``tracekit build`` fills. When neither may be loaded, the reason is the
    shipped object's if this install has one (a tampered wheel says so), else the
    cache's.
    """
    if not spec.core:
        return None, "the probe has no CO-RE build"
    shipped = shipped_path(spec)
    shipped_why = None
    if shipped is not None and shipped.exists():
        shipped_why = verified(shipped, shipped=True)
        if shipped_why is None:
            return shipped, f"CO-RE object {shipped.name} shipped with tracekit"
    path = object_path(spec)
    why = verified(path)
    if why is None:
        return path, f"CO-RE object {path}"
    return None, shipped_why or why
