"""One way into the kernel: ``load(spec, params, opts)`` picks BCC or CO-RE.

``choose`` decides, once and before anything is compiled, which loader serves a
probe here and why, which CO-RE object it loads (its path and recorded SHA-256,
checked once, by ``tracekit.bpf.core_build.find_object``) and which attach points
are used (each group's first present alternative). A run plan keeps that choice
(``tracekit.RunPlan.load``); ``load`` then raises the first problem preflight found
and builds the ``LoadedProbe``: a ``BccProbe`` or a ``CoreProbe``, given the same
``LoadOptions``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tracekit.bpf.preflight import Report, choose_loader, preflight
from tracekit.bpf.probe_base import LoadedProbe, LoadOptions
from tracekit.plugin.registry import AttachPoint, ProbeSpec


@dataclass(frozen=True)
class LoadChoice:
    """How a probe will be loaded here, decided once (``choose``).

    ``loader`` is ``bcc`` or ``core`` and ``why`` says why; ``object_path`` is the CO-RE
    object's path and ``object_sha256`` its hash (checked against the object's
    bytes when chosen; None for BCC); ``points`` the attach points used;
    ``report`` what preflight found (``load`` raises its first problem).
    """

    loader: str
    why: str
    points: tuple[AttachPoint, ...]
    report: Report
    object_path: Path | None = None
    object_sha256: str | None = None

    def describe(self) -> dict[str, object]:
        """The choice as plain data (``tracekit check --json``, tests)."""
        return {
            "loader": self.loader,
            "why": self.why,
            "object": str(self.object_path) if self.object_path else None,
            "object_sha256": self.object_sha256,
            "attach": [ap.describe() for ap in self.points],
        }


def choose(spec: ProbeSpec, opts: LoadOptions) -> LoadChoice:
    """Which loader, object and attach points serve ``spec`` on this machine.

    Raises only when a loader was asked for that cannot serve (``--loader core``
    without a usable object); anything else preflight finds is kept in the report.
    """
    from tracekit.bpf.core_build import find_object

    found = find_object(spec) if opts.loader != "bcc" else (None, "")
    loader, why = choose_loader(
        spec, opts.loader, aggregate=opts.aggregate, output=opts.output, found=found
    )
    report, points = preflight(spec, loader)
    obj = digest = None
    if loader == "core":
        obj = found[0]
        assert obj is not None  # choose_loader said so
        digest = _recorded_sha256(obj)
    return LoadChoice(loader, why, tuple(points), report, obj, digest)


def _recorded_sha256(obj: Path) -> str | None:
    """The object's SHA-256 as ``tracekit build`` recorded it (``find_object``
    has just compared it with the object's bytes)."""
    try:
        return Path(str(obj) + ".sha256").read_text().split()[0]
    except (OSError, IndexError):
        return None


def load(
    spec: ProbeSpec,
    params: Mapping[str, int],
    opts: LoadOptions,
    *,
    choice: LoadChoice | None = None,
) -> LoadedProbe:
    """Load ``spec`` with ``params`` into the kernel by the loader ``choice`` names
    (``choose(spec, opts)`` when not given); raises the first preflight problem.

    The probe is loaded, not attached: ``attach(list(choice.points))`` does that.
    """
    spec = spec.resolved()
    if choice is None:
        choice = choose(spec, opts)
    choice.report.raise_first()
    values = dict(params)
    # Kprobe events of BCC and libbpf processes that died (SIGKILL) go first.
    from tracekit.bpf.bcc import remove_stale_kprobe_events

    remove_stale_kprobe_events()
    if choice.loader == "core":
        from tracekit.bpf.core import CoreProbe

        assert choice.object_path is not None
        _say(opts, f"loading {spec.name} ({choice.why})")
        return CoreProbe(
            spec,
            values,
            choice.object_path,
            output=opts.output,
            stream=opts.stream,
            aggregate=opts.aggregate,
            sample=opts.sample,
            max_events_per_sec=opts.max_events_per_sec,
            page_cnt=opts.page_cnt,
        )
    from tracekit.bpf.bcc import BccProbe

    _say(opts, f"compiling {spec.name} ...")
    return BccProbe(
        spec,
        values,
        output=opts.output,
        stream=opts.stream,
        max_events_per_sec=opts.max_events_per_sec,
        page_cnt=opts.page_cnt,
        aggregate=opts.aggregate,
        sample=opts.sample,
    )


def _say(opts: LoadOptions, msg: str) -> None:
    if not opts.quiet:
        print(f"tracekit: {msg}", file=sys.stderr, flush=True)
