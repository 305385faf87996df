"""Command-line options that ``tracekit run``/``replay`` and the ``tracekit lab``
commands share, each declared once (a lab's ``--sink`` differs only in its default).

Only click here: the CLI and the lab plugin both import it, and it imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

LOADERS = ("auto", "core", "bcc")


def sink_option(default: str | None = None) -> Callable[[Any], Any]:
    """``--sink NAME[=ARG]``, repeatable; ``default`` names what runs without one."""
    help_ = "where events go; repeat for several (console, hist, msgpack=PATH, ...)"
    if default is not None:
        help_ += f"; default: {default}"
    return click.option("--sink", "sinks", multiple=True, metavar="NAME[=ARG]", help=help_)


force_option = click.option("--force", is_flag=True, help="overwrite existing trace files")


def _mode(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int:
    from tracekit.base.trust import DEFAULT_MODE, parse_mode

    return DEFAULT_MODE if value is None else parse_mode(value)


mode_option = click.option(
    "--mode",
    metavar="OCTAL",
    default=None,
    callback=_mode,
    help="permission bits of the files written (default 0600: owner only; 0640 shares "
    "them with the group)",
)

loader_option = click.option(
    "--loader",
    type=click.Choice(LOADERS),
    default="auto",
    show_default=True,
    help="core: the probe's CO-RE object (built once, needs BTF); bcc: compile now",
)
