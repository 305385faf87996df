"""The options every ``tracekit lab SEED`` command shares, and how it prints."""

from __future__ import annotations

import sys

import click

from tracekit.base.errors import UsageError
from tracekit.cli import options as cli_options

duration_option = click.option(
    "--duration", type=float, default=10.0, show_default=True, help="iperf3 seconds"
)
# The options a lab shares with `tracekit run` are run's own (tracekit/cli/options.py);
# a lab's sinks default to hist.
sink_option = cli_options.sink_option(default="hist")
force_option = cli_options.force_option
loader_option = cli_options.loader_option


def check_duration(duration: float) -> None:
    if duration <= 0:
        raise UsageError("--duration must be positive")


def out(line: str) -> None:
    """A line of the lab's report, flushed at once (the sinks print around it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
