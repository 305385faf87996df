"""Facts about the running kernel, read in one place.

Its release and version, tracefs, /proc/kallsyms and available_filter_functions,
kprobe support, modules (loaded, their .ko files and functions, their BTF), BTF,
headers and CPUs. Preflight, both loaders, the BTF reader, stacks and the labs ask
here; tests point a fact at a fixture by patching this module's names (the callers
look them up here at each use, never copy them).

Reading these is cheap but not free (kallsyms is megabytes, read in seconds under
emulation), so the large files are read once and kept until ``refresh()``: a module
loaded meanwhile (sch_fq, loaded by configuring the qdisc) adds functions to them.
"""

from __future__ import annotations

import os
import platform
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
BTF_DIR = Path("/sys/kernel/btf")
MODULE_DIR = Path("/sys/module")
KALLSYMS = "/proc/kallsyms"
ONLINE_CPUS = Path("/sys/devices/system/cpu/online")
# The perf PMU BCC opens kprobes through (4.17+); older kernels and BCC fall back
# to writing tracefs's kprobe_events. A kernel built without CONFIG_KPROBES has
# neither, though its functions are all still listed in /proc/kallsyms.
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
KPROBE_BLACKLIST = Path("/sys/kernel/debug/kprobes/blacklist")


# -- release and version ----------------------------------------------------------------


def release() -> str:
    """The running kernel's release (``6.1.0-18-amd64``)."""
    return platform.release()


def kernel_version(text: str) -> tuple[int, ...] | None:
    """``(6, 1, 0)`` from a release such as ``6.1.0-18-amd64``; None if it has none."""
    parts = text.split("-", 1)[0].split("+", 1)[0].split(".")
    if len(parts) >= 2 and all(p.isdigit() for p in parts[:3]):
        return tuple(int(p) for p in parts[:3])
    return None


def version() -> tuple[int, ...] | None:
    """The running kernel's version, None for a release that names none."""
    return kernel_version(release())


def at_least(*wanted: int) -> bool:
    """Whether the running kernel is at least ``wanted`` (False if its release names
    no version: a feature is not assumed)."""
    v = version()
    return v is not None and v >= wanted


# -- CPUs ---------------------------------------------------------------------------------


def ncpus() -> int:
    """CPUs the kernel has (``os.cpu_count``, at least 1)."""
    return os.cpu_count() or 1


def online_cpus() -> list[int]:
    """The online CPUs' numbers, from /sys/devices/system/cpu/online."""
    try:
        text = ONLINE_CPUS.read_text().strip()
    except OSError:
        return list(range(ncpus()))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


# -- tracefs, kallsyms, kprobes -----------------------------------------------------------


def tracefs() -> Path | None:
    """Where tracefs is mounted (its ``events`` directory present), or None."""
    for root in TRACEFS_ROOTS:
        if Path(root, "events").is_dir():
            return Path(root)
    return None


MOUNTS = Path("/proc/self/mounts")


def tracefs_mount() -> Path | None:
    """Where tracefs is mounted according to /proc/self/mounts (readable by anyone),
    whether or not this user may read it; None when it is not mounted at all."""
    try:
        text = MOUNTS.read_text()
    except OSError:
        return None
    points = [ln.split()[1] for ln in text.splitlines() if len(ln.split()) > 2]
    fstypes = [ln.split()[2] for ln in text.splitlines() if len(ln.split()) > 2]
    found = [Path(m) for m, t in zip(points, fstypes, strict=True) if t == "tracefs"]
    for root in TRACEFS_ROOTS:
        if Path(root) in found:
            return Path(root)
    return found[0] if found else None


def tracefs_problem() -> str | None:
    """Why tracefs cannot be read here, in words (None when ``tracefs()`` finds it)."""
    if tracefs() is not None:
        return None
    where = tracefs_mount()
    if where is None:
        return "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"
    return (
        f"tracefs at {where} is not readable by this user "
        "(root, CAP_DAC_READ_SEARCH, or tracefs mounted with gid= and mode=)"
    )


def mount_tracefs() -> bool:
    """Mount tracefs at /sys/kernel/tracing where it is not mounted and this process
    may (root or CAP_SYS_ADMIN), as bpftrace does; whether it is readable afterwards.

    ``TRACEKIT_MOUNT_TRACEFS=0`` leaves the mounts alone (the host tests set it).
    """
    if tracefs() is not None:
        return True
    if os.environ.get("TRACEKIT_MOUNT_TRACEFS", "1") == "0" or tracefs_mount() is not None:
        return False
    target = Path(TRACEFS_ROOTS[0])
    if not target.is_dir():
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 4 + [ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(b"tracefs", str(target).encode(), b"tracefs", 0, None) != 0:
        return False
    _text.cache_clear()
    return tracefs() is not None


def _event_dir(target: str) -> Path | None:
    """tracefs's folder of tracepoint ``category:name`` (whether it exists or not)."""
    root = tracefs()
    cat, _, name = target.partition(":")
    return None if root is None else Path(root, "events", cat, name)


def tracepoint_exists(target: str) -> bool:
    """Whether tracefs lists the tracepoint ``category:name``."""
    d = _event_dir(target)
    return d is not None and d.is_dir()


def tracepoint_fields(target: str) -> frozenset[str] | None:
    """The field names of tracepoint ``category:name`` (its tracefs ``format``), or
    None where tracefs or the tracepoint is missing.

    A tracepoint's arguments change between kernels (6.17 gave tcp_retransmit_skb
    an ``err`` and made it fire for attempts that fail): a probe reads them here to
    choose what it compiles.
    """
    d = _event_dir(target)
    if d is None:
        return None
    try:
        text = (d / "format").read_text()
    except OSError:
        return None
    # "field:const void * skbaddr;\toffset:8;..." and "field:__u8 saddr[4];": the
    # name is the last word before the ';', without its array size.
    return frozenset(m.group(1) for m in re.finditer(r"field:[^;]*?(\w+)(?:\[[^\]]*\])?;", text))


@lru_cache(maxsize=8)
def _text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@lru_cache(maxsize=1)
def kallsyms() -> frozenset[str]:
    """Function names in /proc/kallsyms (text symbols only), module suffix stripped."""
    names: set[str] = set()
    for line in (_text(KALLSYMS) or "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in ("t", "T"):
            names.add(parts[2])
    return frozenset(names)


def kallsyms_bytes() -> bytes:
    """/proc/kallsyms as it is now (addresses included: the caller needs root)."""
    with open(KALLSYMS, "rb") as f:
        return f.read()


def in_kallsyms(name: str) -> bool:
    """Whether /proc/kallsyms has ``name`` as a text symbol (module or not)."""
    text = _text(KALLSYMS) or ""
    pattern = rf"^\S+ [tT] {re.escape(name)}(?:[ \t]+\[[^\]\n]*\])?[ \t]*$"
    return re.search(pattern, text, re.M) is not None


def traceable(root: Path | None, name: str) -> bool | None:
    """Whether ``name`` is in tracefs's available_filter_functions (``name`` or
    ``name [module]`` lines); None where the file cannot be read (tracefs not
    mounted, no CONFIG_DYNAMIC_FTRACE): a missing file says nothing about a function.

    One regular-expression search over the file's text: building a set of its tens
    of thousands of names costs seconds under emulation, on every run.
    """
    if root is None:
        return None
    text = _text(str(root / "available_filter_functions"))
    if text is None:
        return None
    # A module's functions are listed as "name\t[module]" (a tab on 6.1, a space in
    # older kernels): any blank run before the bracket.
    return re.search(rf"^{re.escape(name)}(?:[ \t]+\[[^\]\n]*\])?[ \t]*$", text, re.M) is not None


def kprobes_supported(pmu: Path | None = None, root: Path | None = None) -> str | None:
    """How this kernel takes kprobes (a phrase for the report), or None if it cannot."""
    pmu = pmu if pmu is not None else KPROBE_PMU
    if (pmu / "type").exists():
        return f"kprobe PMU ({pmu})"
    root = root if root is not None else tracefs()
    if root is not None and (root / "kprobe_events").exists():
        return f"{root}/kprobe_events"
    return None


@lru_cache(maxsize=2)
def kprobe_blacklist(path: Path) -> frozenset[str]:
    """Functions the kernel refuses to kprobe (NOKPROBE_SYMBOL; readable with debugfs)."""
    try:
        with open(path) as f:
            return frozenset(ln.split()[-1] for ln in f if ln.split())
    except OSError:
        return frozenset()


def refresh() -> None:
    """Forget the lists read so far: a module loaded since adds functions to them."""
    _text.cache_clear()
    kallsyms.cache_clear()


# -- the distribution --------------------------------------------------------------------

OS_RELEASE = Path("/etc/os-release")


def os_release() -> dict[str, str]:
    """/etc/os-release's fields (``ID``, ``ID_LIKE``, ``PRETTY_NAME``...), {} if unread."""
    out: dict[str, str] = {}
    try:
        text = OS_RELEASE.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip():
            out[k.strip()] = v.strip().strip("'\"")
    return out


def install_hint(debian: str, fedora: str) -> str:
    """How to install a package on this distribution, in a few words: ``apt-get install
    DEBIAN`` on Debian and Ubuntu (and their kin), ``dnf install FEDORA`` on Fedora (and
    RHEL's kin), both elsewhere."""
    rel = os_release()
    ids = {rel.get("ID", ""), *rel.get("ID_LIKE", "").split()}
    if ids & {"debian", "ubuntu"}:
        return f"apt-get install {debian}"
    if ids & {"fedora", "rhel", "centos"}:
        return f"dnf install {fedora}"
    return f"install {debian} (Debian, Ubuntu) or {fedora} (Fedora)"


# -- modules, BTF, headers ----------------------------------------------------------------


def module_loaded(module: str) -> bool:
    return (MODULE_DIR / module).is_dir()


def module_path(module: str, release_: str | None = None) -> Path | None:
    """The .ko file of a module, from modules.dep."""
    base = Path("/lib/modules") / (release_ or release())
    try:
        dep = (base / "modules.dep").read_text()
    except OSError:
        return None
    wanted = {module, module.replace("_", "-")}
    for line in dep.splitlines():
        path = line.split(":", 1)[0]
        stem = Path(path).name.split(".ko", 1)[0]
        if stem in wanted or stem.replace("-", "_") == module:
            return base / path
    return None


def module_functions(path: Path) -> frozenset[str]:
    """Function names in a module's ELF symbol table (read with pyelftools)."""
    import io

    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    opener = open
    if path.suffix == ".xz":
        import lzma

        opener = lzma.open  # type: ignore[assignment]
    elif path.suffix == ".zst":
        return frozenset()  # no zstd in the standard library; the caller says so
    with opener(path, "rb") as raw:
        data = io.BytesIO(raw.read())
    symtab = ELFFile(data).get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        return frozenset()
    return frozenset(
        s.name for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_FUNC" and s.name
    )


def vmlinux_btf_path() -> Path | None:
    """The kernel's own BTF, or None for a kernel without it."""
    path = BTF_DIR / "vmlinux"
    return path if path.exists() else None


def module_btf_path(module: str) -> Path | None:
    """A loaded module's own BTF (5.11+, CONFIG_DEBUG_INFO_BTF_MODULES), or None."""
    path = BTF_DIR / module
    return path if path.exists() else None


def headers(release_: str | None = None) -> str | None:
    """Where the kernel's headers are (the build tree or CONFIG_IKHEADERS), or None."""
    build = Path("/lib/modules") / (release_ or release()) / "build"
    if (build / "include").is_dir() or (build / "Makefile").exists():
        return str(build.resolve())
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return "/sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS)"
    return None


# -- network queues: XPS, RPS, RFS --------------------------------------------------------

NET_CLASS = "/sys/class/net"
# The queue files the findings read (Documentation/networking/scaling.rst).
QUEUE_FILES = {"xps_cpus": "tx", "rps_cpus": "rx", "rps_flow_cnt": "rx"}
RPS_SOCK_FLOW_ENTRIES = "/proc/sys/net/core/rps_sock_flow_entries"
# The command a lab runs inside a network namespace for the same facts (its sysfs is
# the namespace's): one ``PATH:VALUE`` line per file, what ``parse_queue_lines`` reads.
QUEUE_FILES_COMMAND = (
    "grep -H . /sys/class/net/*/ifindex /sys/class/net/*/queues/tx-*/xps_cpus "
    "/sys/class/net/*/queues/rx-*/rps_cpus "
    f"/sys/class/net/*/queues/rx-*/rps_flow_cnt {RPS_SOCK_FLOW_ENTRIES} 2>/dev/null; true"
)

_QUEUE_PATH = re.compile(r"^/sys/class/net/([^/]+)/queues/(tx|rx)-(\d+)/(\w+)$")
_IFINDEX_PATH = re.compile(r"^/sys/class/net/([^/]+)/ifindex$")


def parse_queue_lines(text: str) -> dict[str, object]:
    """``PATH:VALUE`` lines (``QUEUE_FILES_COMMAND``) as ``net_queues()`` returns them."""
    devices: dict[str, dict[str, Any]] = {}
    out: dict[str, object] = {"devices": devices}
    for line in text.splitlines():
        path, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if path == RPS_SOCK_FLOW_ENTRIES:
            if value.isdigit():
                out["rps_sock_flow_entries"] = int(value)
            continue
        mi = _IFINDEX_PATH.match(path)
        if mi is not None:
            if value.isdigit():
                devices.setdefault(mi.group(1), {})["ifindex"] = int(value)
            continue
        m = _QUEUE_PATH.match(path)
        if m is None or m.group(4) not in QUEUE_FILES:
            continue
        dev, _, queue, name = m.groups()
        devices.setdefault(dev, {}).setdefault(name, {})[queue] = value
    return out


def net_queues(root: str = NET_CLASS) -> dict[str, object]:
    """This network namespace's XPS map (``xps_cpus`` per TX queue), RPS map
    (``rps_cpus``) and RFS flow counts (``rps_flow_cnt``) per RX queue, by device,
    and RFS's ``rps_sock_flow_entries``: plain values for ``Session.metadata``.
    Files the kernel refuses to read (a single-queue device's ``xps_cpus``) are left
    out."""
    lines = []
    try:
        devs = sorted(os.listdir(root))
    except OSError:
        devs = []
    for dev in devs:
        ifindex = _text(os.path.join(root, dev, "ifindex"))
        if ifindex is not None:
            lines.append(f"{NET_CLASS}/{dev}/ifindex:{ifindex.strip()}")
        qdir = os.path.join(root, dev, "queues")
        try:
            queues = sorted(os.listdir(qdir))
        except OSError:
            continue
        for q in queues:
            for name, side in QUEUE_FILES.items():
                if not q.startswith(side + "-"):
                    continue
                text = _text(os.path.join(qdir, q, name))
                if text is not None:
                    lines.append(f"{NET_CLASS}/{dev}/queues/{q}/{name}:{text.strip()}")
    entries = _text(RPS_SOCK_FLOW_ENTRIES)
    if entries is not None:
        lines.append(f"{RPS_SOCK_FLOW_ENTRIES}:{entries.strip()}")
    return parse_queue_lines("\n".join(lines))
