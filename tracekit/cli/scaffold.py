"""``tracekit new probe|sink NAME``: a plugin package skeleton that passes its own tests."""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from tracekit.base.errors import UsageError


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


def scaffold(kind: str, name: str, where: Path) -> Path:
    """Write the skeleton of a ``kind`` ("probe" or "sink") plugin under ``where``."""
    n = names(kind, name)
    root = where / n["dist"]
    if root.exists():
        raise UsageError(f"{root} exists")
    for rel, src in _walk(files("tracekit.cli.templates").joinpath(kind)):
        dest = root / _render_path(rel, n)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(Template(src.read_text()).substitute(n))
    return root
