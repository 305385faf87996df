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
    ModuleNotLoadedError,
    PermissionProblem,
    TracekitError,
)
from tracekit.plugin.registry import AttachPoint, ProbeSpec, min_kernel_version

# Suffixes GCC gives to specialised or split copies of a function. A kprobe on the
# plain name does not exist when only these do.
_CLONE_SUFFIX = re.compile(
    r"^(?P<base>[A-Za-z0-9_]+)(\.(isra|constprop|part|cold|lto_priv|llvm)(\.\d+)?)+$"
)

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


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


def check_privileges(report: Report) -> None:
    caps = _capabilities()

    def has(cap: int) -> bool:
        return bool(caps & (1 << cap))

    if os.geteuid() == 0 or has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        report.add("privileges", True, "root or CAP_BPF+CAP_PERFMON")
    else:
        report.add(
            "privileges",
            False,
            "needs root (or CAP_BPF and CAP_PERFMON): run with sudo",
            PermissionProblem,
        )


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
    check_privileges(report)
    if loader == "bcc":
        check_bcc(report)
        check_headers(report)
    else:
        check_btf(report)
    if spec.needs_btf and loader == "bcc":
        check_btf(report)
    points = usable_attach_points(spec, report)
    return report, points
