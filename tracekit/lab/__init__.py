"""Namespace labs that rebuild the seeds' situations: ``tracekit lab SEED``.

A built-in plugin (``tracekit.plugin.bus.DEFAULT_PLUGINS``; ``TRACEKIT_DISABLE_PLUGINS=lab``
leaves it out) adding its command through ``tracekit_add_commands``, as a
third-party plugin adds its own. It loads on every start, so this module imports
nothing but click (which the CLI has loaded already). Each seed has its own module
(``txq_flip``, ``ooo_okay``, ``fq_throttle``, ``rss_cpu``: scenario, result type,
command), which loads with tracekit.live.run behind it only when its command runs or
``tracekit lab --help`` lists it.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from tracekit import hookimpl
from tracekit.base.text import examples


def _seeds() -> dict[str, str]:
    """Seed lab -> the module defining its ``command`` (and its scenario and result
    type): each module of this package named like a built-in probe's folder."""
    from tracekit.plugin.bus import DEFAULT_PLUGINS

    probes = {name.rsplit(".", 1)[-1] for name in DEFAULT_PLUGINS if ".probes." in name}
    return {
        m.name.replace("_", "-"): f"{__name__}.{m.name}"
        for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
        if m.name in probes and not m.ispkg
    }


SEEDS: dict[str, str] = _seeds()


class LabGroup(click.Group):
    """``tracekit lab``: its seed commands imported when first named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SEEDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and name in SEEDS:
            cmd = importlib.import_module(SEEDS[name]).command
            assert isinstance(cmd, click.Command), name
            self.add_command(cmd, name)
        return cmd


@click.group(
    "lab",
    cls=LabGroup,
    epilog=examples(
        "sudo tracekit lab txq-flip --duration 5             # inside vm/run, or as root",
        "sudo tracekit lab rss-cpu --spread none --sink hist --sink msgpack=rss.tkt",
        "tracekit lab SEED --help                             # each lab's options",
    ),
)
def lab() -> None:
    """Rebuild a seed's situation in network namespaces and trace it."""


@hookimpl
def tracekit_add_commands(cli: click.Group) -> None:
    cli.add_command(lab)
