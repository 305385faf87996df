"""Checks before compiling: everything a probe needs, reported in one line each.

Compiling a probe takes seconds natively and minutes under emulation; a missing
header or function should be found before that, and named precisely: a function
that only exists as a ``.isra``/``.constprop`` copy, one that was inlined away, one
whose module is not loaded yet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.base import kernel
from tracekit.base.errors import (
    AttachPointError,
    BccMissingError,
    BtfMissingError,
    HeadersMissingError,
    KernelTooOldError,
    LibbpfMissingError,
    ModuleNotLoadedError,
    PermissionProblem,
    TracefsMissingError,
    TracekitError,
)
from tracekit.plugin.registry import AttachPoint, ProbeSpec, min_kernel_version

# Suffixes GCC gives to specialised or split copies of a function. A kprobe on the
# plain name does not exist when only these do.
_CLONE_SUFFIX = re.compile(
    r"^(?P<base>[A-Za-z0-9_]+)(\.(isra|constprop|part|cold|lto_priv|llvm)(\.\d+)?)+$"
)

# Capability numbers (linux/capability.h).
CAPS = {
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_IPC_LOCK": 14,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYSLOG": 34,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = CAPS["CAP_SYS_ADMIN"], CAPS["CAP_PERFMON"], CAPS["CAP_BPF"]
# CAP_BPF and CAP_PERFMON split BPF and tracing out of CAP_SYS_ADMIN in Linux 5.8.
CAPS_SINCE = (5, 8)
# Before 5.11 BPF maps count against RLIMIT_MEMLOCK (since: against the memory cgroup);
# libbpf raises the limit, which above its hard limit takes CAP_SYS_RESOURCE.
MEMCG_ACCOUNTING_SINCE = (5, 11)


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    error: type[TracekitError] | None = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(
        self, name: str, ok: bool, message: str, error: type[TracekitError] | None = None
    ) -> None:
        self.checks.append(Check(name, ok, message, None if ok else error))

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def blocker(self) -> Check | None:
        """The problem to fix first, or None. Checks are made in the order each depends
        on the ones before (the kernel, privileges, the loader's libraries and BTF,
        tracefs, then each attach point: without privileges tracefs cannot be read, and
        without tracefs no tracepoint can be found), so it is the first that failed."""
        return next((c for c in self.checks if not c.ok), None)

    def status(self) -> int:
        """The blocker's exit status (0 when nothing fails)."""
        c = self.blocker()
        return 0 if c is None else (c.error or TracekitError).exit_code

    def raise_first(self) -> None:
        for c in self.checks:
            if not c.ok:
                raise (c.error or TracekitError)(c.message)

    def render(self) -> str:
        return "\n".join(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.message}" for c in self.checks)


def _capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def required_capabilities(
    spec: ProbeSpec | None = None, loader: str = "core", release: str | None = None
) -> list[str]:
    """The capabilities a run of ``spec`` needs instead of root, on this kernel (5.8+):
    CAP_BPF (programs and maps) and CAP_PERFMON (kprobes, tracepoints, reading kernel
    memory); CAP_DAC_READ_SEARCH where a tracepoint's id is read from tracefs (root's
    only); CAP_SYSLOG where kernel stacks are named (kallsyms' addresses); before 5.11,
    CAP_SYS_RESOURCE for RLIMIT_MEMLOCK. Measured per probe in the VM
    (tests/vm/test_capabilities.py, README "Capabilities")."""
    need = ["CAP_BPF", "CAP_PERFMON"]
    if spec is not None and any(ap.kind == "tracepoint" for ap in spec.attach):
        need.append("CAP_DAC_READ_SEARCH")
    if spec is not None and spec.enrich is not None:
        need.append("CAP_SYSLOG")
    running = kernel.kernel_version(release or kernel.release())
    if running is not None and running < MEMCG_ACCOUNTING_SINCE:
        need.append("CAP_SYS_RESOURCE")
    return need


def missing_capabilities(
    spec: ProbeSpec | None = None, loader: str = "core", caps: int | None = None
) -> list[str] | None:
    """The capabilities this process lacks to run ``spec`` (``[]``: none), or None when
    capabilities cannot stand in for root here (a kernel before 5.8, the BCC loader)."""
    if os.geteuid() == 0:
        return []
    caps = _capabilities() if caps is None else caps
    if loader == "bcc" or not kernel.at_least(*CAPS_SINCE):
        return [] if caps & (1 << CAP_SYS_ADMIN) else None
    implied = {"CAP_DAC_READ_SEARCH": ("CAP_DAC_OVERRIDE",)}
    return [
        name
        for name in required_capabilities(spec, loader)
        if not caps & (1 << CAPS[name])
        and not any(caps & (1 << CAPS[alt]) for alt in implied.get(name, ()))
    ]


def check_privileges(report: Report, spec: ProbeSpec | None = None, loader: str = "core") -> None:
    missing = missing_capabilities(spec, loader)
    if missing == []:
        how = (
            "root"
            if os.geteuid() == 0
            else "capabilities " + ", ".join(required_capabilities(spec, loader))
        )
        report.add("privileges", True, how)
    elif missing is None:
        why = "the BCC loader" if loader == "bcc" else "Linux before 5.8"
        report.add(
            "privileges",
            False,
            f"needs root (or CAP_SYS_ADMIN, with {why}): run with sudo",
            PermissionProblem,
        )
    else:
        report.add(
            "privileges",
            False,
            f"needs root or the capabilities {', '.join(missing)}: run with sudo, or "
            'grant them (README, "Capabilities")',
            PermissionProblem,
        )


def check_libbpf(report: Report) -> None:
    from tracekit.bpf.libbpf import version

    found, problem = version()
    if problem is None:
        report.add("libbpf", True, f"libbpf {found}")
    else:
        report.add("libbpf", False, problem, LibbpfMissingError)


def check_tracefs(report: Report, spec: ProbeSpec) -> None:
    """tracefs, which attaching a (perf) tracepoint needs: mounted here where it is not
    and this process may, as bpftrace does. Probes without tracepoints do not need it
    (kprobes attach through the kprobe PMU, raw tracepoints by name)."""
    if not any(ap.kind == "tracepoint" for ap in spec.attach):
        return
    kernel.mount_tracefs()
    problem = kernel.tracefs_problem()
    if problem is None:
        report.add("tracefs", True, str(kernel.tracefs()))
    else:
        report.add("tracefs", False, problem, TracefsMissingError)


def check_bcc(report: Report) -> None:
    try:
        import bcc  # noqa: F401
    except ImportError:
        report.add(
            "bcc",
            False,
            "BCC is not importable: install python3-bpfcc and use a venv made with "
            "--system-site-packages",
            BccMissingError,
        )
    else:
        report.add("bcc", True, "python3-bpfcc importable")


def check_headers(report: Report, release: str | None = None) -> None:
    release = release or kernel.release()
    where = kernel.headers(release)
    if where is not None:
        report.add("kernel headers", True, where)
    else:
        build = Path("/lib/modules") / release / "build"
        report.add(
            "kernel headers",
            False,
            f"no kernel headers for {release} in {build}: install linux-headers-{release}",
            HeadersMissingError,
        )


def check_kernel_version(report: Report, spec: ProbeSpec, release: str | None = None) -> None:
    """The running kernel is at least ``spec.min_kernel`` (what the probe's C needs)."""
    release = release or kernel.release()
    running = kernel.kernel_version(release)
    if running is None:
        # A release string we cannot read (a custom build's name): the attach and
        # compile checks still stop a probe this kernel cannot run.
        report.add("kernel version", True, f"{release}: not a version, not checked")
    elif running < min_kernel_version(spec.min_kernel):
        report.add(
            "kernel version",
            False,
            f"probe {spec.name} needs Linux {spec.min_kernel} or later; this kernel is {release}",
            KernelTooOldError,
        )
    else:
        report.add("kernel version", True, f"{release} >= {spec.min_kernel}")


def check_btf(report: Report) -> None:
    path = kernel.vmlinux_btf_path()
    if path is not None:
        report.add("BTF", True, str(path))
    else:
        report.add("BTF", False, "the kernel has no BTF (/sys/kernel/btf/vmlinux)", BtfMissingError)


def find_clones(name: str, symbols: Iterable[str]) -> list[str]:
    out = []
    for s in symbols:
        m = _CLONE_SUFFIX.match(s)
        if m and m.group("base") == name:
            out.append(s)
    return sorted(out)


def check_kprobe_target(
    report: Report,
    label: str,
    target: str,
    *,
    pmu: Path | None = None,
    root: Path | None = None,
    blacklist: Path | None = None,
) -> bool:
    """Whether ``target`` (present in kallsyms) can really take a kprobe here."""
    root = root if root is not None else kernel.tracefs()
    blacklist = blacklist if blacklist is not None else kernel.KPROBE_BLACKLIST
    how = kernel.kprobes_supported(pmu, root)
    if how is None:
        report.add(
            label,
            False,
            "this kernel cannot attach kprobes (no kprobe PMU, no kprobe_events in tracefs: "
            "built without CONFIG_KPROBES?)",
            AttachPointError,
        )
        return False
    if target in kernel.kprobe_blacklist(blacklist):
        report.add(label, False, f"{target} is on the kernel's kprobe blacklist", AttachPointError)
        return False
    listed = kernel.traceable(root, target)
    if listed is False:
        report.add(
            label,
            False,
            f"{target} is in /proc/kallsyms but not in available_filter_functions "
            "(notrace, or not traceable in this kernel)",
            AttachPointError,
        )
        return False
    where = "kallsyms and available_filter_functions" if listed else "kallsyms"
    report.add(label, True, f"present in {where}; kprobes via {how}")
    return True


def check_attach_point(report: Report, ap: AttachPoint, syms: frozenset[str] | None = None) -> bool:
    """Check one attach point; returns whether it is usable."""
    label = ap.describe()
    if ap.kind in ("tracepoint", "raw_tracepoint"):
        problem = kernel.tracefs_problem()
        if problem is not None and ap.kind == "raw_tracepoint":
            # Attached by name, without tracefs: only its presence cannot be read.
            report.add(label, True, f"not checked: {problem}; raw tracepoints attach without it")
            return True
        if problem is not None:
            report.add(label, False, problem, TracefsMissingError)
            return False
        ok = kernel.tracepoint_exists(ap.target)
        report.add(
            label, ok, "present" if ok else "no such tracepoint in this kernel", AttachPointError
        )
        return ok
    if syms is None:
        # available_filter_functions lists every traceable function (a tenth of
        # kallsyms' size): kallsyms is read only when it cannot answer.
        if kernel.traceable(kernel.tracefs(), ap.target) or kernel.in_kallsyms(ap.target):
            return check_kprobe_target(report, label, ap.target)
        syms = kernel.kallsyms()  # the slow path, only to name what exists instead
    if ap.target in syms:
        return check_kprobe_target(report, label, ap.target)
    if ap.module and not kernel.module_loaded(ap.module):
        path = kernel.module_path(ap.module)
        if path is None:
            report.add(
                label,
                False,
                f"module {ap.module} is not available for this kernel",
                ModuleNotLoadedError,
            )
            return False
        funcs = kernel.module_functions(path)
        if ap.target in funcs:
            report.add(
                label,
                False,
                f"module {ap.module} is not loaded (the function is in {path.name}): "
                f"load it with 'modprobe {ap.module}' or configure the qdisc first",
                ModuleNotLoadedError,
            )
        else:
            clones = find_clones(ap.target, funcs)
            why = f"only as {', '.join(clones)}" if clones else "not at all (inlined or renamed)"
            report.add(label, False, f"{ap.target} exists in {path.name} {why}", AttachPointError)
        return False
    clones = find_clones(ap.target, syms)
    if clones:
        report.add(
            label,
            False,
            f"{ap.target} only exists as {', '.join(clones)} (a compiler-specialised copy; "
            "its arguments may differ, so tracekit will not attach to it)",
            AttachPointError,
        )
    else:
        report.add(
            label,
            False,
            f"{ap.target} is not in /proc/kallsyms: inlined or missing in this kernel",
            AttachPointError,
        )
    return False


def usable_attach_points(
    spec: ProbeSpec, report: Report, release: str | None = None
) -> list[AttachPoint]:
    """The points to attach: for each group the first present alternative; points
    with a ``since`` newer than the running kernel are left out (and said so)."""
    chosen: list[AttachPoint] = []
    done_groups: set[str] = set()
    pending: dict[str, list[AttachPoint]] = {}
    release = release or kernel.release()
    running = kernel.kernel_version(release)
    points = []
    for ap in spec.attach:
        # A release we cannot read is taken as new enough, as check_kernel_version does.
        if ap.since and running is not None and running < min_kernel_version(ap.since):
            report.add(ap.describe(), True, f"not attached: Linux {ap.since}+ only ({release})")
        else:
            points.append(ap)
    for ap in points:
        if ap.group:
            pending.setdefault(ap.group, []).append(ap)
    for ap in points:
        if ap.group is None:
            if check_attach_point(report, ap):
                chosen.append(ap)
            continue
        if ap.group in done_groups:
            continue
        done_groups.add(ap.group)
        sub = Report()
        picked = None
        for alt in pending[ap.group]:
            if check_attach_point(sub, alt):
                picked = alt
                break
        if picked:
            report.add(f"{ap.group}", True, f"using {picked.describe()}")
            chosen.append(picked)
        else:
            report.checks.extend(sub.checks)
    return chosen


# Modules' own BTF (/sys/kernel/btf/MODULE), which CO-RE relocates module types
# against, arrived in 5.11 (CONFIG_DEBUG_INFO_BTF_MODULES).
MODULE_BTF_SINCE = (5, 11)


def module_btf_problem(spec: ProbeSpec, release: str | None = None) -> str | None:
    """Why the CO-RE object of a probe attaching in a module cannot be relocated
    here (its module's types are in that module's BTF only), or None.

    A module not loaded yet says nothing either way: the attach point checks then
    ask for it to be loaded, and the next check knows.
    """
    modules = sorted({ap.module for ap in spec.attach if ap.module})
    if not modules:
        return None
    release = release or kernel.release()
    running = kernel.kernel_version(release)
    if running is not None and running < MODULE_BTF_SINCE:
        return (
            f"kernel {release} has no module BTF (5.11+), which relocating "
            f"{', '.join(modules)}'s types needs"
        )
    for m in modules:
        if kernel.module_loaded(m) and kernel.module_btf_path(m) is None:
            return f"module {m} has no BTF (/sys/kernel/btf/{m}: CONFIG_DEBUG_INFO_BTF_MODULES)"
    return None


def choose_loader(
    spec: ProbeSpec,
    wanted: str = "auto",
    *,
    aggregate: bool = False,
    output: str = "auto",
    found: tuple[Path | None, str] | None = None,
) -> tuple[str, str]:
    """("core" or "bcc", why): which path loads ``spec`` here.

    The CO-RE path needs the probe's object built (``tracekit build``) and intact,
    and the kernel's BTF; it streams through the ring buffer. BCC compiles per run
    against the kernel's headers. ``found`` is ``find_object(spec)`` when the
    caller has it (the object is read and hashed once).
    """
    from tracekit.bpf.core_build import find_object

    if wanted == "bcc":
        return "bcc", "asked for (--loader bcc)"
    why = None
    path, where = find_object(spec) if found is None else found
    if path is None:
        why = where
    elif kernel.vmlinux_btf_path() is None:
        why = "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    elif output == "perf" and not kernel.at_least(5, 8):
        # The object declares a ring buffer map too, which such a kernel cannot create.
        why = "the CO-RE object needs BPF ring buffers (5.8) even with --output perf"
    else:
        why = module_btf_problem(spec)
    if why is None:
        modules = sorted({ap.module for ap in spec.attach if ap.module})
        if modules:
            where += "; module types relocated against " + ", ".join(
                str(kernel.BTF_DIR / m) for m in modules
            )
        return "core", where
    if wanted == "core":
        raise TracekitError(f"probe {spec.name} cannot use the CO-RE loader: {why}")
    return "bcc", f"no CO-RE: {why}"


def preflight(spec: ProbeSpec, loader: str = "bcc") -> tuple[Report, list[AttachPoint]]:
    # Kernel lists are read afresh for each preflight: a module loaded since the last
    # one (sch_fq, loaded by configuring the qdisc) adds functions to both.
    kernel.refresh()
    report = Report()
    check_kernel_version(report, spec)
    check_privileges(report, spec, loader)
    if loader == "bcc":
        check_bcc(report)
        check_headers(report)
    else:
        check_libbpf(report)
        check_btf(report)
    if spec.needs_btf and loader == "bcc":
        check_btf(report)
    check_tracefs(report, spec)
    points = usable_attach_points(spec, report)
    return report, points


# -- tracekit check and tracekit --version ------------------------------------------------


@dataclass
class ProbeVerdict:
    """What ``tracekit check`` says of one probe."""

    name: str
    loader: str
    why: str
    report: Report

    @property
    def ready(self) -> bool:
        return self.report.ok

    def verdict(self) -> str:
        """One line: ``ready: ...`` or ``not ready: <the blocker>``."""
        c = self.report.blocker()
        fallback = self.why.startswith("no CO-RE: ")
        if c is not None and c.name in ("bcc", "kernel headers") and fallback:
            # BCC was only the fallback: what kept the CO-RE path away comes first.
            core = self.why.removeprefix("no CO-RE: ")
            return f"not ready: {self.name}: {core}, and the BCC fallback: {c.message}"
        if c is not None:
            return f"not ready: {self.name}: {c.message}"
        if self.loader == "core":
            return f"ready: {self.name} loads its CO-RE object from BTF, no compile"
        return f"ready: {self.name} compiles with BCC against the kernel's headers ({self.why})"

    def as_dict(self) -> dict[str, object]:
        c = self.report.blocker()
        return {
            "name": self.name,
            "ready": self.ready,
            "verdict": self.verdict(),
            "loader": self.loader,
            "why": self.why,
            "status": self.report.status(),
            "blocker": None if c is None else {"check": c.name, "message": c.message},
            "checks": [
                {
                    "name": k.name,
                    "ok": k.ok,
                    "message": k.message,
                    "status": 0 if k.ok else (k.error or TracekitError).exit_code,
                }
                for k in self.report.checks
            ],
        }


def check_probe(spec: ProbeSpec) -> ProbeVerdict:
    """The loader a run would use and every check of it, without raising."""
    try:
        loader, why = choose_loader(spec)
    except TracekitError as exc:
        loader, why = "none", str(exc)
    report, _ = preflight(spec, "bcc" if loader == "none" else loader)
    return ProbeVerdict(spec.name, loader, why, report)


def overall_verdict(verdicts: list[ProbeVerdict]) -> tuple[str, int]:
    """(the first line of ``tracekit check`` over several probes, its status): the
    first not-ready probe's blocker, with how many are ready."""
    bad = [v for v in verdicts if not v.ready]
    if len(verdicts) == 1:
        return verdicts[0].verdict(), verdicts[0].report.status()
    n = len(verdicts)
    if not bad:
        if all(v.loader == "core" for v in verdicts):
            return f"ready: all {n} probes load their CO-RE objects from BTF, no compile", 0
        return f"ready: all {n} probes ({sum(v.loader == 'bcc' for v in verdicts)} with BCC)", 0
    return (
        f"{bad[0].verdict()} ({n - len(bad)} of {n} probes ready)",
        bad[0].report.status(),
    )


def system_facts(specs: Iterable[ProbeSpec] = ()) -> dict[str, object]:
    """What ``tracekit --version`` lists, as ``bpftrace --info`` does: tracekit, Python,
    libbpf, BCC (without importing it: seconds under emulation), the kernel, BTF,
    tracefs, the CO-RE objects found and where. Never raises."""
    import platform
    import sys
    from importlib import metadata, util

    from tracekit import __version__
    from tracekit.bpf import libbpf
    from tracekit.bpf.core_build import CACHE_DIR, find_object, shipped_build, shipped_dir

    lib_version, lib_problem = libbpf.version()
    bcc: str | None = None
    if util.find_spec("bcc") is not None:
        try:
            bcc = metadata.version("bcc")
        except metadata.PackageNotFoundError:
            bcc = "installed"
    try:
        dist = metadata.version("tracekit-ebpf")
    except metadata.PackageNotFoundError:
        dist = None
    btf = kernel.vmlinux_btf_path()
    build = shipped_build()
    objects = {}
    for spec in specs:
        if spec.core:
            path, why = find_object(spec)
            objects[spec.name] = str(path) if path is not None else f"none: {why}"
    return {
        "tracekit": __version__,
        "distribution": dist,
        "python": f"{platform.python_version()} ({sys.executable})",
        "libbpf": lib_version,
        "libbpf_problem": lib_problem,
        "bcc": bcc,
        "kernel": kernel.release(),
        "btf": btf is not None,
        "tracefs": str(kernel.tracefs()) if kernel.tracefs() else kernel.tracefs_problem(),
        "core_shipped": str(shipped_dir()) if build else None,
        "core_built_by": build.get("clang") if build else None,
        "core_cache": str(CACHE_DIR),
        "core_objects": objects,
    }
