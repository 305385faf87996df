"""The whole plugin contract of tracekit, hook by hook.

A plugin is a module or an object with functions decorated by ``tracekit.hookimpl``
whose names are the hooks below. Built-in probes and sinks (``tracekit.probes.*``,
``tracekit.plugins.*``) use exactly this contract; third-party plugins are found
through the ``tracekit`` entry-point group.

Two kinds of hooks:

* **Registration hooks** run once when the plugin manager is built: a plugin adds
  probes, sinks and CLI commands.
* **Session hooks** run during a run or a replay. They are called on every plugin
  that implements them: the sink objects made for this session (``--sink``) and any
  plugin module that wants to observe every session. Events arrive in batches, never
  one hook call per event: one pluggy call costs a few microseconds, more than a
  probe spends on an event. If one implementation raises, the bus reports it once
  with the plugin's name and keeps calling the others; the command then exits with
  a non-zero status.

A probe's findings are part of the contract too, but not a hook: ``ProbeSpec.findings``
returns a ``tracekit.Findings`` that the pipeline itself feeds every batch and the
summary, so its findings are computed before any ``tracekit_session_end`` (and stored
in the trace footer), the same for a live run and a replay
(tracekit/base/findings.py, docs/writing-plugins.md).

Every hook returns ``None``; return values are ignored. Each implementation is called
on its own, so pluggy hookwrappers cannot work: registering one raises
``PluginError``. What a sink object may define besides hooks (``configure``,
``check_schema``, ``fields_needed``) is ``tracekit.Sink`` (tracekit/plugin/contract.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from tracekit.base.session import EventBatch, LostReport, Session, Summary
    from tracekit.plugin.registry import PlotRegistry, ProbeRegistry, SinkRegistry

hookspec = pluggy.HookspecMarker("tracekit")


# -- registration -------------------------------------------------------------------


@hookspec
def tracekit_register_probes(registry: ProbeRegistry) -> None:
    """Add probes with ``registry.add(ProbeSpec(...))``.

    Called once per process when plugins are loaded. A name already taken by another
    plugin raises ``DuplicateError`` naming both plugins.
    """


@hookspec
def tracekit_register_sinks(registry: SinkRegistry) -> None:
    """Add sinks with ``registry.add(SinkSpec(...))``.

    Called once per process when plugins are loaded. ``SinkSpec.factory(arg)`` is
    called later, once per session that names the sink, with the text after ``=``
    in ``--sink NAME=ARG``; it raises ``UsageError`` for an argument it cannot use.
    The object it returns derives from ``tracekit.Sink``, whose ``check_schema``
    refuses a field the probe lacks, before anything compiles.
    """


@hookspec
def tracekit_register_plots(registry: PlotRegistry) -> None:
    """Add plots with ``registry.add(PlotSpec(name, probe, description, draw))``.

    Called once per process when plugins load. A probe's own plot is its
    ``ProbeSpec.plot``; this hook adds others, for any probe (a built-in's too), which
    ``tracekit plot FILE --plot NAME`` draws.
    """


@hookspec
def tracekit_counters(session: Session, counters: dict[str, dict[str, dict[int, int]]]) -> None:
    """The probe's in-kernel counters (map -> label -> per-CPU value), read while it runs.

    Called about once a second during a live run, only when a plugin implements it
    (reading the maps costs a system call per map); the final values arrive in
    ``summary.counters`` at the end, for replays too. Values are totals since the
    run started, not increments.
    """


@hookspec
def tracekit_add_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``tracekit`` command line.

    Called once, with the top-level group, when the command named is not a built-in
    one (and for ``--help``). A command finds the plugins' probes and sinks with
    ``tracekit.current_bus()``. The labs (``tracekit lab``, tracekit/lab/) are added
    through this hook, as a built-in plugin.
    """


# -- sessions -----------------------------------------------------------------------


@hookspec
def tracekit_session_start(session: Session) -> None:
    """A run or a replay starts; ``session`` describes the probe, schema and machine.

    Called before the first batch. For a live run the probe is compiled and
    attached already; for a replay the header has been read. Sinks open files and
    print headers here.
    """


@hookspec
def tracekit_events(session: Session, batch: EventBatch) -> None:
    """A batch of events from ``batch.probe``, each row a tuple in schema order.

    Called as often as the loader drains the kernel's buffer (or the replay reads a
    recorded batch). Rows must not be mutated; keep them if you need them later.
    """


@hookspec
def tracekit_lost_events(session: Session, lost: LostReport) -> None:
    """The kernel lost events: ``lost.per_cpu`` counts them per CPU for ``lost.source``.

    Called whenever new losses are seen (perf buffer overruns as they are reported,
    ring buffer and kretprobe misses when counters are read), so a live sink can warn.
    """


@hookspec
def tracekit_session_end(session: Session, summary: Summary) -> None:
    """The run or replay ended: on duration end, Ctrl-C, SIGTERM or end of file.

    ``summary`` has event totals, losses per CPU, the duration, the probe's
    in-kernel counters and its findings (``summary.findings``: what the numbers mean,
    from ``ProbeSpec.findings``, computed from the session's data before this hook,
    for a replay too). Called once, after the last batch; probes are already
    detached. Sinks print results and close files here.
    """
