"""``tracekit new probe|sink NAME``: a plugin package skeleton that passes its own tests."""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from tracekit.base.errors import UsageError

if TYPE_CHECKING:
    from tracekit.plugin.bus import Bus


def names(kind: str, name: str) -> dict[str, str]:
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
        raise UsageError(f"{kind} name {name!r}: use lowercase letters, digits and '-'")
    ident = name.replace("-", "_")
    return {
        "name": name,
        "ident": ident,
        "IDENT": ident.upper(),  # C enumerators (counter slots)
        "pkg": f"tracekit_{ident}",
        "dist": f"tracekit-{name}",
    }


def _render_path(rel: str, n: dict[str, str]) -> str:
    # Template files end in .tmpl so no tool mistakes them for the project's code.
    rel = rel.removesuffix(".tmpl")
    return rel.replace("PKG", n["pkg"]).replace("PROBE", n["ident"]).replace("SINK", n["ident"])


def _walk(t: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    out = []
    for child in t.iterdir():
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            out += _walk(child, rel + "/")
        elif child.name.endswith(".tmpl"):
            out.append((rel, child))
    return out


def refuse_clash(kind: str, n: dict[str, str], bus: Bus) -> None:
    """A name already taken would make the new plugin break tracekit once installed.

    Two sinks (or probes) of one name stop every command at start (the registries
    refuse a clash), and an entry point or distribution of a name already taken
    shadows the other or replaces it on ``pip install``.
    """
    name = n["name"]
    taken = bus.sinks if kind == "sink" else bus.probes
    if name in taken:
        plugin = taken.plugin_of(name)
        raise UsageError(
            f"{kind} {name!r} exists already (from plugin {plugin}): two {kind}s of one name "
            "stop every tracekit command; choose another name"
        )
    short = {p.rsplit(".", 1)[-1] for p in bus.plugins} | set(bus.plugins)
    if n["ident"] in short:
        raise UsageError(f"a plugin named {n['ident']!r} is installed already; choose another name")
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution(n["dist"])
    except PackageNotFoundError:
        return
    raise UsageError(f"package {n['dist']} is installed already; choose another name")


def scaffold(kind: str, name: str, where: Path, bus: Bus | None = None) -> Path:
    """Write the skeleton of a ``kind`` ("probe" or "sink") plugin under ``where``.

    With ``bus``, a name that clashes with one of its probes, sinks or plugins (or an
    installed distribution) is refused first.
    """
    n = names(kind, name)
    if bus is not None:
        refuse_clash(kind, n, bus)
    root = where / n["dist"]
    if root.exists():
        raise UsageError(f"{root} exists")
    for rel, src in _walk(files("tracekit.cli.templates").joinpath(kind)):
        dest = root / _render_path(rel, n)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(Template(src.read_text()).substitute(n))
    return root
