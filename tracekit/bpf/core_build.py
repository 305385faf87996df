"""Build a probe's CO-RE object once, keep it in one place, refuse a tampered one.

``tracekit build`` (run by scripts/setup.sh) compiles each probe whose source
supports it (``ProbeSpec.core``) with clang into ``CACHE_DIR``, named by a hash of
the sources and flags that went into it, with the object's own SHA-256 beside it
(and the compiler that built it, for the record). Running needs no compiler. At
run time an object is used only if it is there under the name today's sources hash
to, owned by root, writable by nobody else, in a folder whose every component from
``/`` is so too (tracekit.base.trust), and its bytes still hash to what the build
recorded. The object is read once, without following a link, and libbpf loads those
same bytes (``bpf_object__open_mem``): the file is never opened again by its path.
Anything else: the BCC path, and `tracekit check` says why.

``tracekit build`` writes into a folder it checks the same way (made 0755 where
missing, an existing one never changed), each file through a temporary one with an
unpredictable name renamed into place: no name in the cache is ever opened for
writing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracekit.base import trust
from tracekit.base.errors import CompileError, TracekitError
from tracekit.plugin.registry import ProbeSpec

if TYPE_CHECKING:
    from hashlib import sha256
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

# TRACEKIT_CACHE is ignored under sudo or set-uid (tracekit.base.trust.env).
CACHE_DIR = Path(trust.env("TRACEKIT_CACHE") or "/var/cache/tracekit") / "core"
HEADERS = ("tracekit.h", "tk_compat.h", "tk_kernel_types.h")
CFLAGS = ("-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-DTK_CORE", "-Wall", "-Werror")


def _clang() -> str:
    path = shutil.which("clang")
    if path is None:
        raise TracekitError("clang is not installed: apt-get install clang (tracekit build)")
    return path


def _sources(spec: ProbeSpec) -> list[bytes]:
    root = files("tracekit.probes")
    return [spec.source.read_bytes()] + [root.joinpath(h).read_bytes() for h in HEADERS]


def object_key(spec: ProbeSpec) -> str:
    h = sha256()
    for part in (" ".join(CFLAGS).encode(), *_sources(spec)):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:20]


def compiler_version() -> str:
    try:
        out = subprocess.run([_clang(), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired, TracekitError):
        return ""
    return out.stdout.splitlines()[0] if out.stdout else ""


def object_path(spec: ProbeSpec) -> Path:
    return CACHE_DIR / f"{spec.name}-{object_key(spec)}.bpf.o"


def build(spec: ProbeSpec) -> Path:
    """Compile ``spec`` for CO-RE into the cache (a no-op when it is there already)."""
    if not spec.core:
        raise TracekitError(f"probe {spec.name} has no CO-RE build (ProbeSpec.core)")
    out = object_path(spec)
    if verified(out) is None:
        _remove_stale(spec, out)
        return out
    try:
        # Made where missing (root's umask aside: 0755, objects are no secret); an
        # existing folder is checked, never changed (no chmod through a link).
        with trust.trusted_dir(CACHE_DIR, create=0o755) as dir_fd:
            _build_into(spec, out, dir_fd)
    except trust.UntrustedPathError as exc:
        raise trust.UntrustedPathError(f"will not build into {CACHE_DIR}: {exc}") from None
    except OSError as exc:
        raise TracekitError(f"cannot build into {CACHE_DIR}: {exc.strerror or exc}") from None
    _remove_stale(spec, out)
    return out


def _build_into(spec: ProbeSpec, out: Path, dir_fd: int) -> None:
    """clang into a private folder (0700, of an unpredictable name, in the checked
    cache folder), then each file of the object renamed into place, the object last."""
    with (
        as_file(files("tracekit.probes")) as inc,
        as_file(spec.source) as src,
        tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix=".build-") as work,
    ):
        here, checked = os.stat(Path(work).parent), os.fstat(dir_fd)
        if (here.st_dev, here.st_ino) != (checked.st_dev, checked.st_ino):
            raise TracekitError(f"tracekit build: {CACHE_DIR} changed while building")
        tmp = Path(work) / "object.bpf.o"
        try:
            compile_core(Path(src), tmp, [Path(inc), Path(src).parent])
        except CompileError as exc:
            raise CompileError(f"probe {spec.name}: CO-RE build failed: {exc}") from None
        data = tmp.read_bytes()
    manifest = json.dumps(describe(data), sort_keys=True).encode()
    digest = sha256(data).hexdigest()
    record = f"{digest}  object\n{sha256(manifest).hexdigest()}  manifest\n".encode()

    def put(name: str, content: bytes) -> None:
        trust.write_output(name, content, mode=0o644, replace=True, dir_fd=dir_fd)

    put(out.name + ".json", manifest)
    put(out.name + ".sha256", record)
    put(out.name + ".built-by", (compiler_version() + "\n").encode())
    put(out.name, data)


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
    cmd = [_clang(), *CFLAGS, *(f"-I{d}" for d in include), "-I/usr/include/x86_64-linux-gnu"]
    p = subprocess.run(
        [*cmd, "-c", str(src), "-o", str(out)], capture_output=True, text=True, timeout=600
    )
    if p.returncode != 0:
        first = next((ln for ln in p.stderr.splitlines() if "error" in ln), p.stderr.strip())
        raise CompileError(first[:300])


@dataclass(frozen=True)
class CoreObject:
    """A verified CO-RE object: its bytes (what libbpf loads) and its manifest."""

    path: Path
    data: bytes
    manifest: dict[str, Any]


def read_object(path: Path) -> CoreObject:
    """The object at ``path``, read once and checked (TracekitError says why not).

    Its folder is checked from ``/`` (tracekit.base.trust); the object, its recorded
    hashes and its manifest are each opened once with ``O_NOFOLLOW`` in that same
    folder, must be owned by root (or the user) and writable by nobody else, and
    the bytes read must hash to what the build recorded.
    """
    try:
        with trust.trusted_dir(path.parent) as dir_fd:
            try:
                data = trust.read_at(dir_fd, path.name, str(path))
            except FileNotFoundError:
                raise TracekitError(
                    f"no CO-RE object built ({path.name}; run 'tracekit build')"
                ) from None
            try:
                want = trust.read_at(dir_fd, path.name + ".sha256", f"{path}.sha256").split()
                manifest = trust.read_at(dir_fd, path.name + ".json", f"{path}.json")
            except FileNotFoundError:
                raise TracekitError(
                    f"the CO-RE object has no recorded hash or manifest ({path})"
                ) from None
    except FileNotFoundError:
        raise TracekitError(f"no CO-RE object built ({path.name}; run 'tracekit build')") from None
    except trust.UntrustedPathError as exc:
        raise TracekitError(f"the CO-RE object is not to be trusted: {exc}") from None
    except OSError as exc:
        raise TracekitError(f"the CO-RE object cannot be read ({path}: {exc.strerror})") from None
    if want[0:1] != [sha256(data).hexdigest().encode()]:
        raise TracekitError(
            f"the CO-RE object does not match its recorded hash: tampered? ({path})"
        )
    if want[2:3] != [sha256(manifest).hexdigest().encode()]:
        raise TracekitError(
            f"the CO-RE object's manifest does not match its recorded hash ({path})"
        )
    try:
        desc = json.loads(manifest)
    except ValueError:
        raise TracekitError(f"the CO-RE object's manifest is not JSON ({path})") from None
    return CoreObject(path, data, desc)


def verified(path: Path) -> str | None:
    """Why ``path`` must not be loaded, or None when it may be."""
    try:
        read_object(path)
    except TracekitError as exc:
        return str(exc)
    return None


def describe(obj: Path | bytes) -> dict[str, Any]:
    """What the loader needs to know of an object, read once at build time: the
    offsets of its read-only settings, and struct tk_event and tk_agg_key as clang
    laid them out (name and offset of each member, size). At run time the loader
    then reads this small manifest instead of parsing ELF and BTF (seconds under
    emulation)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    from tracekit.bpf.btf import Btf

    with io.BytesIO(obj) if isinstance(obj, bytes) else open(obj, "rb") as f:
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
    """The manifest ``describe`` wrote beside a verified object (read as
    ``read_object`` reads it: TracekitError if the object is not to be trusted)."""
    return read_object(obj).manifest


def find_object(spec: ProbeSpec) -> tuple[Path | None, str]:
    """(object to load, why) for this probe's CO-RE path; (None, reason) if not."""
    if not spec.core:
        return None, "the probe has no CO-RE build"
    path = object_path(spec)
    why = verified(path)
    return (None, why) if why else (path, f"CO-RE object {path}")
