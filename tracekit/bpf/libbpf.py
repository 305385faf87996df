"""The few libbpf calls tracekit makes, through ctypes over Debian's ``libbpf1``.

libbpf loads a compiled CO-RE object: it relocates every kernel type access against
the running kernel's BTF (``/sys/kernel/btf/vmlinux`` and the modules'), creates
the maps, loads the programs and attaches them. Nothing is compiled at run time,
and ``import bcc`` (10-27 s under emulation) is never paid on this path.

Every failing call raises ``TracekitError`` with what libbpf itself printed (its
log goes to a buffer, not to the terminal) folded into one line.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tracekit.base import kernel
from tracekit.base.errors import LibbpfMissingError, TracekitError

_PRINT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, ct.c_void_p)
# Every print callback handed to libbpf_set_print, kept for the life of the process:
# libbpf keeps the last one as a global, and a Libbpf instance dropped after another
# was made (a test resetting the module's instance) left it calling freed memory.
_PRINTERS: list[object] = []


class LibbpfError(TracekitError):
    """A libbpf call failed; the message carries libbpf's own words."""

    exit_code = 11


def _open_library(soname: str, name: str) -> ct.CDLL | None:
    """A shared library by its soname, as the dynamic loader finds it (its cache and
    default paths: no subprocess); ``ctypes.util.find_library`` only where that fails,
    since it runs ``ldconfig -p`` (a fork and exec: tens of milliseconds before the
    first event, hundreds on a loaded machine)."""
    try:
        return ct.CDLL(soname, use_errno=True)
    except OSError:
        pass
    found = ctypes.util.find_library(name)
    if found is None:
        return None
    try:
        return ct.CDLL(found, use_errno=True)
    except OSError:
        return None


_LIBC: ct.CDLL | None = None


def libc() -> ct.CDLL:
    """The C library, opened once (glibc's soname, else as the loader finds it)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = _open_library("libc.so.6", "c") or ct.CDLL(None, use_errno=True)
    return _LIBC


# The oldest libbpf the loader works with: 1.0 made errors negative return codes and
# dropped the deprecated API (its soname is libbpf.so.1).
MIN_VERSION = (1, 0)


def missing_message(found: str | None = None) -> str:
    """The one line for a missing or too old libbpf, naming this distribution's package."""
    hint = kernel.install_hint("libbpf1", "libbpf")
    if found:
        return f"libbpf {found} is too old (the CO-RE loader needs 1.0 or later): {hint}"
    return f"libbpf is not installed (the CO-RE loader needs libbpf 1.0 or later): {hint}"


def _open() -> ct.CDLL:
    """libbpf.so.1 (1.x), else whatever libbpf the linker finds (checked for its version)."""
    lib = _open_library("libbpf.so.1", "bpf")
    if lib is None:
        raise LibbpfMissingError(missing_message())
    return lib


def _version_of(lib: ct.CDLL) -> tuple[int, int] | None:
    """(major, minor) of a loaded libbpf; None for one older than 0.6 (no such calls)."""
    try:
        major, minor = lib.libbpf_major_version, lib.libbpf_minor_version
    except AttributeError:
        return None
    major.restype = minor.restype = ct.c_uint32
    major.argtypes = minor.argtypes = []
    return int(major()), int(minor())


def version() -> tuple[str | None, str | None]:
    """(libbpf's version, why the CO-RE loader cannot use it or None), without raising:
    for ``tracekit check`` and ``tracekit --version``."""
    try:
        lib = _open()
    except LibbpfMissingError as exc:
        return None, str(exc)
    v = _version_of(lib)
    text = "older than 0.6" if v is None else f"{v[0]}.{v[1]}"
    if v is None or v < MIN_VERSION:
        return text, missing_message(text)
    return text, None


class Libbpf:
    """libbpf.so.1, with argument types declared once."""

    def __init__(self) -> None:
        self.lib = _open()
        v = _version_of(self.lib)
        if v is None or v < MIN_VERSION:
            raise LibbpfMissingError(
                missing_message("older than 0.6" if v is None else f"{v[0]}.{v[1]}")
            )
        self._libc = libc()
        self._libc.vsnprintf.argtypes = [ct.c_char_p, ct.c_size_t, ct.c_char_p, ct.c_void_p]
        self.log: list[str] = []
        self._printer = _PRINT_FN(self._print)
        # libbpf's print callback is process-wide: every one ever registered stays
        # alive, so a Libbpf dropped while libbpf still points at its callback (a test
        # that made a second one) cannot leave libbpf calling freed memory.
        _PRINTERS.append(self._printer)
        L = self.lib
        vp, cp, i, u32 = ct.c_void_p, ct.c_char_p, ct.c_int, ct.c_uint32
        for fn, res, args in (
            ("libbpf_set_print", vp, [_PRINT_FN]),
            ("bpf_object__open_file", vp, [cp, vp]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__find_map_by_name", vp, [vp, cp]),
            ("bpf_object__find_program_by_name", vp, [vp, cp]),
            ("bpf_map__fd", i, [vp]),
            ("bpf_map__set_max_entries", i, [vp, u32]),
            ("bpf_map__initial_value", vp, [vp, ct.POINTER(ct.c_size_t)]),
            ("bpf_map__value_size", u32, [vp]),
            ("bpf_map__key_size", u32, [vp]),
            ("bpf_program__attach_kprobe", vp, [vp, ct.c_bool, cp]),
            ("bpf_program__attach_tracepoint", vp, [vp, cp, cp]),
            ("bpf_program__attach_raw_tracepoint", vp, [vp, cp]),
            ("bpf_link__destroy", i, [vp]),
            ("bpf_map_lookup_elem", i, [i, vp, vp]),
            ("bpf_map_update_elem", i, [i, vp, vp, ct.c_uint64]),
            ("bpf_map_delete_elem", i, [i, vp]),
            ("bpf_map_get_next_key", i, [i, vp, vp]),
            ("libbpf_num_possible_cpus", i, []),
            ("bpf_program__fd", i, [vp]),
            ("bpf_prog_test_run_opts", i, [i, vp]),
        ):
            f = getattr(L, fn)
            f.restype = res
            f.argtypes = args
        L.libbpf_set_print(self._printer)

    def _print(self, _level: int, fmt: bytes, args: int) -> int:
        # A verifier log arrives as one message of many lines (tens of KB).
        buf = ct.create_string_buffer(1 << 20)
        self._libc.vsnprintf(buf, len(buf), fmt, args)
        for line in buf.value.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.log.append(line.strip())
        return 0

    def reason(self) -> str:
        """The lines of libbpf's log that say why: the verifier's last words, if any."""
        log = self.log
        for i, line in enumerate(log):
            if "-- END PROG LOAD LOG --" in line:
                # The verifier's own words come last, before its statistics line;
                # instructions are numbered ("12: (79) ...") or source (";").
                words = [
                    ln
                    for ln in log[:i]
                    if not re.search(r"^(\d+:|;|processed \d+ insns)|BEGIN PROG LOAD LOG", ln)
                ]
                return " | ".join([*words[-2:], *log[i + 1 :][-1:]])
        return " | ".join(log[-3:])

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Collect libbpf's log for one step; on failure, raise it as one line."""
        self.log.clear()
        try:
            yield
        except LibbpfError as exc:
            # The last lines say why (the verifier's log is long: keep its end).
            said = self.reason()
            raise LibbpfError(f"{what}: {exc}" + (f" ({said})" if said else "")) from None

    def check_ptr(self, ptr: int | None, call: str) -> int:
        if not ptr:
            e = ct.get_errno()
            raise LibbpfError(f"{call}: {os.strerror(e) if e else 'failed'}")
        return ptr

    def check_rc(self, rc: int, call: str) -> int:
        if rc < 0:
            e = -rc if rc != -1 else ct.get_errno()
            raise LibbpfError(f"{call}: {os.strerror(e)}")
        return rc

    def possible_cpus(self) -> int:
        return int(self.check_rc(self.lib.libbpf_num_possible_cpus(), "possible CPUs"))


class TestRunOpts(ct.Structure):
    """struct bpf_test_run_opts (libbpf 1.x), for BPF_PROG_TEST_RUN."""

    _fields_ = (
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    )


def rodata_bytes(name: str, off: int, width: int, size: int, value: int) -> bytes:
    """The bytes of ``value`` for a global of ``width`` bytes at ``off`` in a .rodata
    of ``size`` bytes; ``LibbpfError`` (one line) if it would not fit there.

    The offset comes from the object's manifest: a negative one would write before
    the map's initial value, so it is refused with the rest.
    """
    if width not in (1, 2, 4, 8) or not 0 <= off <= size - width:
        raise LibbpfError(f"setting {name} does not fit .rodata")
    lo = -(1 << (8 * width - 1)) if value < 0 else 0
    hi = (1 << (8 * width)) - 1
    if not lo <= value <= hi:
        raise LibbpfError(f"setting {name}: {value} does not fit its {width} bytes")
    return value.to_bytes(width, "little", signed=value < 0)


class BpfObject:
    """One compiled object: opened, configured, loaded, closed (``with`` closes it).

    Maps of a tracekit probe are named ``NAME__map`` in the object (tk_compat.h);
    ``map("NAME")`` finds either spelling.
    """

    def __init__(self, path: str) -> None:
        self.lib = libbpf()
        self.path = path
        with self.lib.call(f"opening {path}"):
            self.obj: int | None = self.lib.check_ptr(
                self.lib.lib.bpf_object__open_file(path.encode(), None), "open"
            )

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, name: str) -> int:
        L = self.lib.lib
        m = L.bpf_object__find_map_by_name(self.obj, f"{name}__map".encode()) or (
            L.bpf_object__find_map_by_name(self.obj, name.encode())
        )
        if not m:
            raise LibbpfError(f"no map {name} in {self.path}")
        return int(m)

    def map_fd(self, name: str) -> int:
        return int(self.lib.check_rc(self.lib.lib.bpf_map__fd(self.map(name)), f"map {name}"))

    def set_max_entries(self, name: str, n: int) -> None:
        self.lib.check_rc(self.lib.lib.bpf_map__set_max_entries(self.map(name), n), name)

    def set_rodata(self, offsets: dict[str, tuple[int, int]], values: dict[str, int]) -> None:
        """Write integer globals of .rodata (name -> (offset, size)) before load."""
        rodata = self.lib.lib.bpf_object__find_map_by_name(self.obj, b".rodata")
        if not rodata:
            raise LibbpfError(f"{self.path} has no .rodata")
        size = ct.c_size_t()
        ptr = self.lib.check_ptr(
            self.lib.lib.bpf_map__initial_value(rodata, ct.byref(size)), "rodata"
        )
        for name, value in values.items():
            off, width = offsets[name]
            ct.memmove(ptr + off, rodata_bytes(name, off, width, size.value, value), width)

    def load(self) -> None:
        with self.lib.call(f"loading {self.path} into the kernel"):
            self.lib.check_rc(self.lib.lib.bpf_object__load(self.obj), "load")

    def program(self, name: str) -> int:
        p = self.lib.lib.bpf_object__find_program_by_name(self.obj, name.encode())
        if not p:
            raise LibbpfError(f"no program {name} in {self.path}")
        return int(p)

    def test_run(self, prog: str, repeat: int, data: bytes = bytes(64)) -> None:
        """Run a program ``repeat`` times in the kernel (BPF_PROG_TEST_RUN), no attach."""
        buf = ct.create_string_buffer(data, len(data))
        opts = TestRunOpts(
            sz=ct.sizeof(TestRunOpts),
            data_in=ct.cast(buf, ct.c_void_p),
            data_size_in=len(data),
            repeat=repeat,
        )
        fd = self.lib.lib.bpf_program__fd(self.program(prog))
        self.lib.check_rc(self.lib.lib.bpf_prog_test_run_opts(fd, ct.byref(opts)), "test run")

    def close(self) -> None:
        if self.obj:
            self.lib.lib.bpf_object__close(self.obj)
            self.obj = None


_LIB: Libbpf | None = None


def libbpf() -> Libbpf:
    global _LIB
    if _LIB is None:
        _LIB = Libbpf()
    return _LIB


def map_items(
    lib: Libbpf, fd: int, key_size: int, value_size: int
) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map, as raw bytes."""
    key = ct.create_string_buffer(key_size)
    nxt = ct.create_string_buffer(key_size)
    val = ct.create_string_buffer(value_size)
    first = True
    while True:
        rc = lib.lib.bpf_map_get_next_key(fd, None if first else key, nxt)
        if rc < 0:
            e = ct.get_errno()
            if e == errno.ENOENT or rc == -errno.ENOENT:
                return
            raise LibbpfError(f"reading a map: {os.strerror(e)}")
        first = False
        ct.memmove(key, nxt, key_size)
        if lib.lib.bpf_map_lookup_elem(fd, key, val) == 0:
            yield key.raw, val.raw


def as_buffer(data: Any) -> Any:
    return (ct.c_char * len(data)).from_buffer_copy(data)
