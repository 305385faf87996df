"""Command-line options that ``tracekit run``/``replay`` and the ``tracekit lab``
commands share, each declared once (a lab's ``--sink`` differs only in its default).

Only click here: the CLI and the lab plugin both import it, and it imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from tracekit.base.text import examples

__all__ = [
    "LOADERS",
    "examples",
    "force_option",
    "loader_option",
    "sink_option",
    "time_option",
]

LOADERS = ("auto", "core", "bcc")

# Bounds on numbers from the command line (tests/test_bounds.py walks every option of
# every command with values outside them): finite, and small enough for the kernel
# side and for timers.
MAX_SECONDS = 366 * 24 * 3600.0  # a year
U32_MAX = (1 << 32) - 1
# Perf buffer pages per CPU: root locks them in memory, and the ring buffer gets 16 x
# as many in one map whose size the kernel takes as a u32. 4096 pages are 16 MiB per
# CPU, and a ring buffer of 256 MiB.
MAX_BUFFER_PAGES = 4096


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
    """A number of seconds above 0 and at most ``most``: not nan, not inf.

    click's ``float`` and ``FloatRange`` take ``nan`` (which compares false with
    every bound) and ``inf``.
    """

    name = "seconds"

    def __init__(self, most: float = MAX_SECONDS) -> None:
        self.most = most

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) and math.isfinite(value) and 0 < value <= self.most:
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not (math.isfinite(v) and 0 < v <= self.most):
            self.fail(
                f"{value!r}: must be a number of seconds, above 0 and at most {self.most:.0f}",
                param,
                ctx,
            )
        return v


def sink_option(default: str | None = None) -> Callable[[Any], Any]:
    """``--sink NAME[=ARG]``, repeatable; ``default`` names what runs without one."""
    help_ = "where events go; repeat for several (console, hist, msgpack=PATH, ...)"
    if default is not None:
        help_ += f"; default: {default}"
    return click.option("--sink", "sinks", multiple=True, metavar="NAME[=ARG]", help=help_)


force_option = click.option("--force", is_flag=True, help="overwrite existing trace files")

loader_option = click.option(
    "--loader",
    type=click.Choice(LOADERS),
    default="auto",
    show_default=True,
    help="core: the probe's CO-RE object (built once, needs BTF); bcc: compile now",
)

time_option = click.option(
    "--time",
    "time_",
    type=click.Choice(["rel", "wall"]),
    default="rel",
    show_default=True,
    help="event times on the console: seconds since the first event, or wall-clock (UTC)",
)

findings_option = click.option(
    "--findings",
    type=click.Choice(["text", "json", "off"]),
    default="text",
    show_default=True,
    help="what the numbers mean, on stderr after the summary: text, one JSON line, or off",
)
