"""The options every ``tracekit lab SEED`` command shares, and how it prints."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import click

from tracekit.base.errors import UsageError
from tracekit.cli import options as cli_options

# iperf3 runs for this long: a day at most.
duration_option = click.option(
    "--duration",
    type=cli_options.Seconds(most=24 * 3600.0),
    default=10.0,
    show_default=True,
    help="iperf3 seconds",
)
# The options a lab shares with `tracekit run` are run's own (tracekit/cli/options.py);
# a lab's sinks default to hist.
sink_option = cli_options.sink_option(default="hist")
force_option = cli_options.force_option
loader_option = cli_options.loader_option


def check_duration(duration: float) -> None:
    # The option's type refuses the rest; this guards callers that pass a number.
    if not 0 < duration <= 24 * 3600.0:
        raise UsageError("--duration must be a number of seconds, above 0 and at most 86400")


def out(line: str) -> None:
    """A line of the lab's report, flushed at once (the sinks print around it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def rate_option(default: str, what: str) -> Callable[[Any], Any]:
    """``--rate RATE``: iperf3's ``-b`` for each of a lab's streams."""
    return click.option(
        "--rate",
        default=default,
        show_default=True,
        metavar="RATE",
        help=f"iperf3 -b of each {what} (a lower rate records a smaller trace)",
    )


def check_rate(rate: str) -> None:
    if not re.fullmatch(r"[1-9][0-9]*(\.[0-9]+)?[KMG]?", rate):
        raise UsageError(f"--rate {rate!r}: a rate as iperf3 -b takes it, like 500K or 5M")
