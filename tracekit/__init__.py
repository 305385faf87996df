"""tracekit: eBPF tracing for Linux network-stack performance work.

Plugin authors need one import; every name a plugin uses is here::

    from tracekit import AttachPoint, Field, ProbeSpec, Schema, SinkSpec, hookimpl

``docs/writing-plugins.md`` documents each of them (a test checks it). Only
``hookimpl`` is made on import: the other names are loaded on first use, so
``import tracekit`` (every plugin's first line, every CLI start) stays as light as
pluggy itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

from tracekit import _compat

__version__ = "0.2.0"

hookimpl = pluggy.HookimplMarker("tracekit")

# Module paths of 0.1.0 (``tracekit.bus``, ...) keep working until 0.3.0, with a warning.
_compat.install()

# Public name -> module that defines it (imported when the name is first used).
_LAZY: dict[str, str] = {
    # Probes: what tracekit_register_probes adds.
    "ProbeSpec": "tracekit.plugin.registry",
    "AttachPoint": "tracekit.plugin.registry",
    "Param": "tracekit.plugin.registry",
    "CounterMap": "tracekit.plugin.registry",
    "ProbeRegistry": "tracekit.plugin.registry",
    # Sinks and plots.
    "SinkSpec": "tracekit.plugin.registry",
    "SinkRegistry": "tracekit.plugin.registry",
    "PlotSpec": "tracekit.plugin.registry",
    "PlotRegistry": "tracekit.plugin.registry",
    "Sink": "tracekit.plugin.contract",
    "SinkOptions": "tracekit.plugin.contract",
    "KernelAggregate": "tracekit.plugin.contract",
    # Events.
    "Schema": "tracekit.base.schema",
    "Field": "tracekit.base.schema",
    "HistSpec": "tracekit.base.schema",
    "format_value": "tracekit.base.schema",
    "format_row": "tracekit.base.schema",
    "printable": "tracekit.base.text",
    # The metric model metrics sinks share (the prometheus sink serves it).
    "MetricSpec": "tracekit.base.metrics",
    "RUN_METRICS": "tracekit.base.metrics",
    "probe_metrics": "tracekit.base.metrics",
    "bucket_bounds": "tracekit.base.metrics",
    "resolve_stack": "tracekit.bpf.stacks",
    # Kernel facts a probe's ``prepare`` chooses by.
    "tracepoint_fields": "tracekit.base.kernel",
    # What session hooks receive.
    "Session": "tracekit.base.session",
    "EventBatch": "tracekit.base.session",
    "LostReport": "tracekit.base.session",
    "Summary": "tracekit.base.session",
    "KernelNames": "tracekit.base.session",
    # What a probe's numbers mean (ProbeSpec.findings).
    "Finding": "tracekit.base.findings",
    "Findings": "tracekit.base.findings",
    # Runs: planned once, then executed (the CLI, the labs and the fixtures do).
    "RunPlan": "tracekit.live.run",
    "RunOptions": "tracekit.live.run",
    "plan_run": "tracekit.live.run",
    "execute": "tracekit.live.run",
    # The seam between a run and a loaded probe.
    "LoadedProbe": "tracekit.bpf.probe_base",
    "LoadOptions": "tracekit.bpf.probe_base",
    "ProbeContext": "tracekit.bpf.probe_base",
    "LoadChoice": "tracekit.bpf.load",
    "load": "tracekit.bpf.load",
    # Errors: one line, a distinct exit status each.
    "TracekitError": "tracekit.base.errors",
    "UsageError": "tracekit.base.errors",
    "PluginError": "tracekit.base.errors",
    "LabError": "tracekit.base.errors",
    # Tests: no kernel needed for feed/synthetic_rows; the lab runs in the VM.
    "feed": "tracekit.testing",
    "synthetic_rows": "tracekit.testing",
    "StandInProbe": "tracekit.testing",
    "aggregate_from_keys": "tracekit.testing",
    "Output": "tracekit.testing",
    "FeedFixture": "tracekit.testing",
    "ReplayFixture": "tracekit.testing",
    "RunProbeFixture": "tracekit.testing",
    "NetnsLab": "tracekit.lab.netns",
    "build_bus": "tracekit.plugin.bus",
    "Bus": "tracekit.plugin.bus",
    # Commands: what a command added with tracekit_add_commands runs with.
    "current_bus": "tracekit.plugin.bus",
}

# Written out (not derived from _LAZY) so linters and mypy read it; a test checks
# the two agree.
__all__ = [
    "RUN_METRICS",
    "AttachPoint",
    "Bus",
    "CounterMap",
    "EventBatch",
    "FeedFixture",
    "Field",
    "Finding",
    "Findings",
    "HistSpec",
    "KernelAggregate",
    "KernelNames",
    "LabError",
    "LoadChoice",
    "LoadOptions",
    "LoadedProbe",
    "LostReport",
    "MetricSpec",
    "NetnsLab",
    "Output",
    "Param",
    "PlotRegistry",
    "PlotSpec",
    "PluginError",
    "ProbeContext",
    "ProbeRegistry",
    "ProbeSpec",
    "ReplayFixture",
    "RunOptions",
    "RunPlan",
    "RunProbeFixture",
    "Schema",
    "Session",
    "Sink",
    "SinkOptions",
    "SinkRegistry",
    "SinkSpec",
    "StandInProbe",
    "Summary",
    "TracekitError",
    "UsageError",
    "__version__",
    "aggregate_from_keys",
    "bucket_bounds",
    "build_bus",
    "current_bus",
    "execute",
    "feed",
    "format_row",
    "format_value",
    "hookimpl",
    "load",
    "plan_run",
    "printable",
    "probe_metrics",
    "resolve_stack",
    "synthetic_rows",
    "tracepoint_fields",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None and f"tracekit.{name}" in _compat.MOVED_MODULES:
        return importlib.import_module(f"tracekit.{name}")  # warns, names the new path
    if module is None:
        raise AttributeError(f"module 'tracekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what mypy and editors see; at run time __getattr__ imports them
    from tracekit.base.errors import LabError, PluginError, TracekitError, UsageError
    from tracekit.base.findings import Finding, Findings
    from tracekit.base.kernel import tracepoint_fields
    from tracekit.base.metrics import RUN_METRICS, MetricSpec, bucket_bounds, probe_metrics
    from tracekit.base.schema import Field, HistSpec, Schema, format_row, format_value
    from tracekit.base.session import EventBatch, KernelNames, LostReport, Session, Summary
    from tracekit.base.text import printable
    from tracekit.bpf.load import LoadChoice, load
    from tracekit.bpf.probe_base import LoadedProbe, LoadOptions, ProbeContext
    from tracekit.bpf.stacks import resolve_stack
    from tracekit.lab.netns import NetnsLab
    from tracekit.live.run import RunOptions, RunPlan, execute, plan_run
    from tracekit.plugin.bus import Bus, build_bus, current_bus
    from tracekit.plugin.contract import KernelAggregate, Sink, SinkOptions
    from tracekit.plugin.registry import (
        AttachPoint,
        CounterMap,
        Param,
        PlotRegistry,
        PlotSpec,
        ProbeRegistry,
        ProbeSpec,
        SinkRegistry,
        SinkSpec,
    )
    from tracekit.testing import (
        FeedFixture,
        Output,
        ReplayFixture,
        RunProbeFixture,
        StandInProbe,
        aggregate_from_keys,
        feed,
        synthetic_rows,
    )
