"""The options every ``tracekit lab SEED`` command shares, and how it prints."""

from __future__ import annotations

import sys

import click

from tracekit.errors import UsageError

duration_option = click.option(
    "--duration", type=float, default=10.0, show_default=True, help="iperf3 seconds"
)
sink_option = click.option(
    "--sink",
    "sinks",
    multiple=True,
    metavar="NAME[=ARG]",
    help="as for tracekit run (default: hist)",
)
force_option = click.option("--force", is_flag=True, help="overwrite existing trace files")
loader_option = click.option(
    "--loader",
    type=click.Choice(["auto", "core", "bcc"]),
    default="auto",
    show_default=True,
    help="as for tracekit run",
)


def check_duration(duration: float) -> None:
    if duration <= 0:
        raise UsageError("--duration must be positive")


def out(line: str) -> None:
    """A line of the lab's report, flushed at once (the sinks print around it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
