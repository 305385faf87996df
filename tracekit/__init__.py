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

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("tracekit")

# Public name -> module that defines it (imported when the name is first used).
_LAZY: dict[str, str] = {
    # Probes: what tracekit_register_probes adds.
    "ProbeSpec": "tracekit.registry",
    "AttachPoint": "tracekit.registry",
    "Param": "tracekit.registry",
    "CounterMap": "tracekit.registry",
    "ProbeRegistry": "tracekit.registry",
    # Sinks and plots.
    "SinkSpec": "tracekit.registry",
    "SinkRegistry": "tracekit.registry",
    "PlotSpec": "tracekit.registry",
    "PlotRegistry": "tracekit.registry",
    "Sink": "tracekit.contract",
    "SinkOptions": "tracekit.contract",
    "KernelAggregate": "tracekit.contract",
    # Events.
    "Schema": "tracekit.schema",
    "Field": "tracekit.schema",
    "HistSpec": "tracekit.schema",
    "format_value": "tracekit.schema",
    "format_row": "tracekit.schema",
    "printable": "tracekit.safe_text",
    "resolve_stack": "tracekit.stacks",
    # Kernel facts a probe's ``prepare`` chooses by.
    "tracepoint_fields": "tracekit.kernel",
    # What session hooks receive.
    "Session": "tracekit.session",
    "EventBatch": "tracekit.session",
    "LostReport": "tracekit.session",
    "Summary": "tracekit.session",
    "KernelNames": "tracekit.session",
    # Runs: planned once, then executed (the CLI, the labs and the fixtures do).
    "RunPlan": "tracekit.run",
    "RunOptions": "tracekit.run",
    "plan_run": "tracekit.run",
    "execute": "tracekit.run",
    # Errors: one line, a distinct exit status each.
    "TracekitError": "tracekit.errors",
    "UsageError": "tracekit.errors",
    "PluginError": "tracekit.errors",
    "LabError": "tracekit.errors",
    # Tests: no kernel needed for feed/synthetic_rows; the lab runs in the VM.
    "feed": "tracekit.testing",
    "synthetic_rows": "tracekit.testing",
    "Output": "tracekit.testing",
    "FeedFixture": "tracekit.testing",
    "ReplayFixture": "tracekit.testing",
    "RunProbeFixture": "tracekit.testing",
    "NetnsLab": "tracekit.lab.netns",
    "build_bus": "tracekit.bus",
    "Bus": "tracekit.bus",
    # Commands: what a command added with tracekit_add_commands runs with.
    "current_bus": "tracekit.bus",
}

# Written out (not derived from _LAZY) so linters and mypy read it; a test checks
# the two agree.
__all__ = [
    "AttachPoint",
    "Bus",
    "CounterMap",
    "EventBatch",
    "FeedFixture",
    "Field",
    "HistSpec",
    "KernelAggregate",
    "KernelNames",
    "LabError",
    "LostReport",
    "NetnsLab",
    "Output",
    "Param",
    "PlotRegistry",
    "PlotSpec",
    "PluginError",
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
    "Summary",
    "TracekitError",
    "UsageError",
    "__version__",
    "build_bus",
    "current_bus",
    "execute",
    "feed",
    "format_row",
    "format_value",
    "hookimpl",
    "plan_run",
    "printable",
    "resolve_stack",
    "synthetic_rows",
    "tracepoint_fields",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tracekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what mypy and editors see; at run time __getattr__ imports them
    from tracekit.bus import Bus, build_bus, current_bus
    from tracekit.contract import KernelAggregate, Sink, SinkOptions
    from tracekit.errors import LabError, PluginError, TracekitError, UsageError
    from tracekit.kernel import tracepoint_fields
    from tracekit.lab.netns import NetnsLab
    from tracekit.registry import (
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
    from tracekit.run import RunOptions, RunPlan, execute, plan_run
    from tracekit.safe_text import printable
    from tracekit.schema import Field, HistSpec, Schema, format_row, format_value
    from tracekit.session import EventBatch, KernelNames, LostReport, Session, Summary
    from tracekit.stacks import resolve_stack
    from tracekit.testing import (
        FeedFixture,
        Output,
        ReplayFixture,
        RunProbeFixture,
        feed,
        synthetic_rows,
    )
