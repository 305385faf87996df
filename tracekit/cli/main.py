"""The ``tracekit`` command line (click).

Every user error ends in one line ``tracekit: ...`` and a non-zero exit status, never
a traceback; click's own usage errors are folded into the same one-line form.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tracekit.base.errors import TracekitError, UsageError
from tracekit.base.text import printable
from tracekit.cli.options import (
    MAX_BUFFER_PAGES,
    MAX_SECONDS,
    U32_MAX,
    Seconds,
    examples,
    findings_option,
    force_option,
    loader_option,
    mode_option,
    sink_option,
    time_option,
)
from tracekit.plugin.bus import Bus, current_bus
from tracekit.plugin.pipeline import SinkOptions

# Bounds on numbers from the command line (tracekit/cli/options.py): finite, and
# small enough for the kernel side (a u32 rate) and for timers (a year).
MAX_DURATION = MAX_SECONDS
MAX_EVENTS_PER_SEC = U32_MAX


def _bus(ctx: click.Context) -> Bus:
    return current_bus(ctx)


def _parse_params(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"bad --param {item!r}: expected KEY=VALUE")
        out[k.strip()] = v.strip()
    return out


class OutputClosed(TracekitError):
    """Standard output was closed by its reader: stop quietly, status 0."""

    exit_code = 0
    reported = True


# Built-in commands whose modules load only when the command runs: `tracekit run`
# starts in about a second only if it does not import export and plot (under
# emulation every imported module costs tens of milliseconds). The labs are a
# plugin (tracekit/lab/): they add `lab` through tracekit_add_commands.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("tracekit.fleet.export", "export_cmd"),
    "plot": ("tracekit.fleet.plot", "plot_cmd"),
}


class TracekitGroup(click.Group):
    """Adds plugin commands lazily, so ``--help`` lists them."""

    def _lazy(self, name: str) -> click.Command | None:
        if name not in LAZY_COMMANDS or name in self.commands:
            return None
        import importlib

        module, attr = LAZY_COMMANDS[name]
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        self.add_command(cmd, name)
        return cmd

    def _load(self, ctx: click.Context) -> None:
        if getattr(self, "_plugins_added", False):
            return
        self._plugins_added = True
        try:
            bus = _bus(ctx)
        except TracekitError as exc:
            # --help still lists the built-in commands; a plugin's command (`lab`)
            # named on the command line reports why plugins could not load.
            self._plugins_error: TracekitError | None = exc
            return
        bus.pm.hook.tracekit_add_commands(cli=self)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # Caught here, before click turns it into status 1: the reader of our
            # output went away (``| head``), which is how a pipeline ends, not an error.
            _quiet_after_broken_pipe()
            raise OutputClosed() from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load(ctx)
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name) or self._lazy(name)
        if cmd is None:
            self._load(ctx)
            cmd = super().get_command(ctx, name)
            error = getattr(self, "_plugins_error", None)
            if cmd is None and error is not None:
                raise error
        return cmd


def _version_callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    ctx.ensure_object(dict)
    _print_version(ctx)
    ctx.exit(0)


@click.group(
    cls=TracekitGroup,
    epilog=examples(
        "tracekit list                                  # probes and sinks",
        "tracekit check txq-flip                        # can this machine run it?",
        "sudo tracekit run txq-flip --sink hist --duration 10",
        "tracekit replay examples/traces/txq-flip.tkt --sink hist",
        "tracekit COMMAND --help                        # each command's options",
    ),
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version_callback,
    help="tracekit, Python, libbpf, BCC, the kernel, BTF and the CO-RE objects found",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """eBPF tracing for Linux network-stack performance work."""
    ctx.ensure_object(dict)


@cli.command("list", epilog=examples("tracekit list", "tracekit list --json"))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List probes and sinks, with the plugin each comes from."""
    bus = _bus(ctx)

    def version(plugin: str) -> str:
        info = bus.plugins.get(plugin)
        return info.version if info else "?"

    probes = [
        {
            "name": p.name,
            "plugin": bus.probes.plugin_of(p.name),
            "version": version(bus.probes.plugin_of(p.name)),
            "description": p.description,
        }
        for p in bus.probes
    ]
    sinks = [
        {
            "name": s.name,
            "plugin": bus.sinks.plugin_of(s.name),
            "version": version(bus.sinks.plugin_of(s.name)),
            "description": s.description,
        }
        for s in bus.sinks
    ]
    if as_json:
        plugins = [vars(p) for p in bus.plugins.values()]
        click.echo(json.dumps({"probes": probes, "sinks": sinks, "plugins": plugins}, indent=2))
        return
    for title, rows in (("probes", probes), ("sinks", sinks)):
        click.echo(f"{title}:")
        w = max((len(r["name"]) for r in rows), default=0)
        pw = max((len(f"{r['plugin']} {r['version']}") for r in rows), default=0)
        for r in rows:
            origin = f"{r['plugin']} {r['version']}"
            flag = "  [deprecated API]" if _deprecated_api(bus, r["plugin"]) else ""
            click.echo(f"  {r['name']:<{w}}  {origin:<{pw}}  {r['description']}{flag}")
    flagged = [p for p in bus.plugins.values() if p.deprecated]
    if flagged:
        click.echo("plugins using deprecated API (docs/writing-plugins.md, Deprecations):")
        for p in flagged:
            click.echo(f"  {printable(p.name)} {printable(p.version)}:")
            for text in p.deprecated:
                click.echo(f"    {printable(text)}")


def _deprecated_api(bus: Bus, plugin: str) -> bool:
    info = bus.plugins.get(plugin)
    return bool(info and info.deprecated)


@cli.command(
    "run",
    epilog=examples(
        "sudo tracekit run txq-flip --duration 10                # one line per event",
        "sudo tracekit run txq-flip --sink hist --duration 10    # histograms at the end",
        "sudo tracekit run rss-cpu --sink hist --sink msgpack=rss.tkt --duration 30",
        "sudo tracekit run fq-throttle --sink console=json | jq .",
    ),
)
@click.argument("probe")
@sink_option()
@click.option(
    "--duration", type=Seconds(), default=None, help="stop after SECONDS (default: Ctrl-C)"
)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="probe parameter")
@click.option(
    "--output",
    type=click.Choice(["auto", "ringbuf", "perf"]),
    default="auto",
    help="kernel-to-user buffer (auto: ring buffer where the kernel has it)",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1, max=U32_MAX),
    default=1,
    metavar="N",
    help="stream 1 in N events (counters and in-kernel histograms stay exact)",
)
@click.option(
    "--max-events-per-sec",
    type=click.IntRange(min=0, max=MAX_EVENTS_PER_SEC),
    default=0,
    help="drop events above this rate in the kernel, counted as lost (0: no limit)",
)
@click.option(
    "--buffer-pages",
    type=click.IntRange(min=1, max=MAX_BUFFER_PAGES),
    default=64,
    show_default=True,
    metavar="N",
    help="perf buffer pages per CPU, a power of two up to 4096 "
    "(the shared ring buffer gets 16 x N)",
)
@loader_option
@time_option
@findings_option
@force_option
@click.option(
    "--exit-with-parent",
    is_flag=True,
    help="end the run (as SIGTERM does) when the process that started tracekit dies",
)
@mode_option
@click.pass_context
def run_cmd(
    ctx: click.Context,
    probe: str,
    sinks: tuple[str, ...],
    duration: float | None,
    params: tuple[str, ...],
    output: str,
    sample: int,
    max_events_per_sec: int,
    buffer_pages: int,
    loader: str,
    time_: str,
    findings: str,
    force: bool,
    exit_with_parent: bool,
    mode: int,
) -> None:
    """Compile PROBE, attach it and send its events to sinks until Ctrl-C or --duration."""
    from tracekit.live.run import RunOptions, execute, plan_run

    bus = _bus(ctx)
    spec = bus.probes.get(probe)
    values = spec.resolve_params(_parse_params(params))
    sinks = sinks or ("console",)
    if buffer_pages & (buffer_pages - 1):
        raise UsageError(f"--buffer-pages must be a power of two, not {buffer_pages}")
    # One plan: sinks built and checked once, before the (slow) compile.
    plan = plan_run(
        bus,
        spec,
        values,
        sinks,
        RunOptions(
            duration=duration,
            output=output,
            max_events_per_sec=max_events_per_sec,
            force=force,
            mode=mode,
            sample=sample,
            page_cnt=buffer_pages,
            loader=loader,
            exit_with_parent=exit_with_parent,
            time=time_,
            findings=findings,
        ),
    )
    execute(bus, plan)


@cli.command(
    "replay",
    epilog=examples(
        "tracekit replay examples/traces/txq-flip.tkt                 # every event",
        "tracekit replay examples/traces/txq-flip.tkt --sink hist     # its histograms",
        "tracekit replay examples/traces/rss-cpu.tkt --sink hist=count,by=cpu",
        "tracekit replay examples/traces/fq-throttle.tkt --sink console=json",
    ),
)
@click.argument("file", type=click.Path(dir_okay=False))
@sink_option()
@time_option
@findings_option
@force_option
@mode_option
@click.pass_context
def replay_cmd(
    ctx: click.Context,
    file: str,
    sinks: tuple[str, ...],
    time_: str,
    findings: str,
    force: bool,
    mode: int,
) -> None:
    """Feed a recorded trace FILE through sinks, on any machine."""
    from tracekit.traces.replay import replay

    replay(
        _bus(ctx),
        file,
        sinks or ("console",),
        SinkOptions(force=force, time=time_, mode=mode),
        findings=findings,
    )


@cli.command("info", epilog=examples("tracekit info examples/traces/txq-flip.tkt"))
@click.argument("file", type=click.Path(dir_okay=False))
def info_cmd(file: str) -> None:
    """Describe a trace FILE: its header and footer in words."""
    from tracekit.traces.info import describe

    for line in describe(file):
        click.echo(line)


@cli.command(
    "check",
    epilog=examples("tracekit check", "tracekit check fq-throttle", "tracekit check --json"),
)
@click.argument("probe", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def check_cmd(ctx: click.Context, probe: str | None, as_json: bool) -> None:
    """Whether this machine can run PROBE (or every probe): a verdict, then every check.

    The first line is the verdict (``ready: ...`` or ``not ready: <the blocker>``); the
    exit status is the blocker's (0 when ready).
    """
    from tracekit.bpf.preflight import check_probe, overall_verdict

    bus = _bus(ctx)
    specs = [bus.probes.get(probe)] if probe else list(bus.probes)
    verdicts = [check_probe(spec) for spec in specs]
    line, status = overall_verdict(verdicts)
    if as_json:
        out = {
            "ready": status == 0,
            "verdict": line,
            "status": status,
            "probes": [v.as_dict() for v in verdicts],
        }
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(printable(line))
        for v in verdicts:
            click.echo(f"{v.name}:")
            click.echo(f"  loader: {v.loader} ({printable(v.why)})")
            for row in v.report.render().splitlines():
                click.echo(f"  {printable(row)}")
    if status:
        ctx.exit(status)


@cli.command("version")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def version_cmd(ctx: click.Context, as_json: bool) -> None:
    """tracekit, Python, libbpf, BCC, the kernel, BTF and the CO-RE objects found."""
    _print_version(ctx, as_json)


def _print_version(ctx: click.Context, as_json: bool = False) -> None:
    from tracekit.bpf.preflight import system_facts

    try:
        specs = list(_bus(ctx).probes)
    except TracekitError:
        specs = []
    f = system_facts(specs)
    if as_json:
        click.echo(json.dumps(f, indent=2))
        return
    dist = f" (distribution tracekit-ebpf {f['distribution']})" if f["distribution"] else ""
    libbpf_line = f["libbpf"] or "not installed"
    if f["libbpf_problem"]:
        libbpf_line = f"{f['libbpf_problem']}"
    shipped = (
        f"{f['core_shipped']} (built by {f['core_built_by']})"
        if f["core_shipped"]
        else "none shipped (a source tree: tracekit build fills the cache)"
    )
    lines = [
        f"tracekit {f['tracekit']}{dist}",
        f"Python: {f['python']}",
        f"libbpf: {libbpf_line}",
        f"BCC: {f['bcc'] or 'not installed (optional: BCC-only plugins, kernels without BTF)'}",
        f"kernel: {f['kernel']}",
        f"BTF: {'yes' if f['btf'] else 'no'}",
        f"tracefs: {f['tracefs']}",
        f"CO-RE objects: {shipped}; cache {f['core_cache']}",
    ]
    objects = f["core_objects"]
    assert isinstance(objects, dict)
    lines += [f"  {name}: {where}" for name, where in objects.items()]
    for ln in lines:
        click.echo(printable(ln))


@cli.command("build", epilog=examples("tracekit build", "tracekit build txq-flip"))
@click.argument("probes", nargs=-1)
@click.pass_context
def build_cmd(ctx: click.Context, probes: tuple[str, ...]) -> None:
    """Build the CO-RE objects of PROBES (default: every probe that has one) with clang."""
    from tracekit.bpf.core_build import CACHE_DIR, build

    bus = _bus(ctx)
    specs = [bus.probes.get(p) for p in probes] if probes else [s for s in bus.probes if s.core]
    for spec in specs:
        click.echo(f"{spec.name}: {build(spec)}")
    if not specs:
        click.echo(f"no probe has a CO-RE build; objects would go to {CACHE_DIR}")


@cli.command(
    "new",
    no_args_is_help=True,
    epilog=examples(
        "tracekit new probe tcp-rtt          # writes ./tracekit-tcp-rtt/",
        "tracekit new sink statsd --dir ~/src",
        "pip install ./tracekit-tcp-rtt && python -m pytest ./tracekit-tcp-rtt",
    ),
)
@click.argument("kind", type=click.Choice(["probe", "sink"]))
@click.argument("name")
@click.option(
    "--dir",
    "where",
    type=click.Path(file_okay=False),
    default=".",
    help="where to create the package (default: here)",
)
@click.pass_context
def new_cmd(ctx: click.Context, kind: str, name: str, where: str) -> None:
    """Write a plugin package skeleton for a new probe or sink, with passing tests.

    NAME must not be taken by a built-in or installed probe, sink or plugin.
    """
    import os
    from pathlib import Path

    from tracekit.cli.scaffold import scaffold

    root = scaffold(kind, name, Path(where), _bus(ctx))
    # A path pip reads as a folder: "tracekit-NAME" alone is a name on the index.
    shown = str(root) if os.path.isabs(root) or str(root).startswith(".") else f"./{root}"
    click.echo(
        f"created {printable(shown)}: pip install {printable(shown)}, "
        f"then python -m pytest {printable(shown)}"
    )


# click 8.2 raises NoArgsIsHelpError for a bare group; click 8.1 (Debian's, in the
# rows' roots) prints the help itself and exits 0, so there is nothing to catch.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> Any:
    try:
        rv = cli.main(args=argv, prog_name="tracekit", standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return None
    except TracekitError as exc:
        # Messages quote paths, arguments and values read from trace files: escaped.
        if not exc.reported:
            click.echo(f"tracekit: {printable(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except _NO_ARGS_IS_HELP as exc:
        # A bare group (``tracekit``, ``tracekit lab``, ``tracekit new``): its help,
        # as --help prints it, not one escaped line. Asked for, so status 0.
        assert exc.ctx is not None
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.Abort:
        click.echo("tracekit: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # click's messages may span lines ("Choose from:\n\tprobe,\n\tsink"): one line.
        click.echo(f"tracekit: {printable(' '.join(exc.format_message().split()))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("tracekit: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        _quiet_after_broken_pipe()
        sys.exit(0)


def _quiet_after_broken_pipe() -> None:
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do.

    Python would flush stdout again at exit and print "Exception ignored ... Broken
    pipe"; pointing the descriptor at /dev/null makes that flush harmless.
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
