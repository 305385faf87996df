"""Entry points of installed packages, found without importing ``importlib.metadata``.

Every ``tracekit`` command looks for third-party plugins (the ``tracekit`` entry-point
group). ``importlib.metadata`` answers that, but importing it loads the ``email``
package (about 20 modules) and it builds an object per installed distribution:
under emulation that was about a tenth of ``tracekit run``'s start-up. Finding the
entry points takes much less: the ``*.dist-info`` and ``*.egg-info`` folders on
``sys.path``, each distribution once (the first on the path, by normalized name, as
``importlib.metadata`` does), and their ``entry_points.txt``. Name and version of a
plugin's distribution are read only for the distributions that have one.
tests/test_entry_points.py holds the answers to ``importlib.metadata``'s on this
machine's packages.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_INFO_SUFFIXES = (".dist-info", ".egg-info")


def _normalize(name: str) -> str:
    """A distribution name as importlib.metadata compares them (PEP 503, ``_``)."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


@dataclass(frozen=True)
class EntryPoint:
    """One entry point: ``name = value`` in ``group`` of the distribution at ``path``."""

    name: str
    value: str
    group: str
    path: str  # the distribution's .dist-info or .egg-info folder

    def load(self) -> Any:
        """The object ``value`` names (``module`` or ``module:attr.attr``)."""
        module, _, attrs = self.value.split("[", 1)[0].strip().partition(":")
        obj: Any = importlib.import_module(module.strip())
        for attr in filter(None, attrs.strip().split(".")):
            obj = getattr(obj, attr)
        return obj

    def _metadata(self) -> dict[str, str]:
        for name in ("METADATA", "PKG-INFO"):
            try:
                with open(os.path.join(self.path, name), encoding="utf-8") as f:
                    head = f.read().split("\n\n", 1)[0]
            except OSError:
                continue
            out: dict[str, str] = {}
            for line in head.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line[:1].isspace():
                    out.setdefault(key.strip(), value.strip())
            return out
        return {}

    @property
    def dist_name(self) -> str:
        return self._metadata().get("Name", "?")

    @property
    def dist_version(self) -> str:
        return self._metadata().get("Version", "?")


def _distributions() -> Iterator[tuple[str, str]]:
    """(normalized name, info folder) of each distribution on sys.path, first wins."""
    seen: set[str] = set()
    for entry in sys.path:
        base = entry or "."
        try:
            children = os.listdir(base)
        except OSError:
            continue  # not a folder (a zip file: no plugins come from there)
        egg = base.lower().endswith(".egg")
        for child in children:
            low = child.lower()
            if low.endswith(_INFO_SUFFIXES):
                key = _normalize(low.rpartition(".")[0].partition("-")[0])
            elif egg and low == "egg-info":
                key = _normalize(os.path.basename(base).rpartition(".")[0].partition("-")[0])
            else:
                continue
            if key not in seen:
                seen.add(key)
                yield key, os.path.join(base, child)


def _section(text: str, group: str) -> Iterator[tuple[str, str]]:
    """``name = value`` pairs of ``[group]`` in an entry_points.txt."""
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            continue
        if current == group:
            name, sep, value = line.partition("=")
            if sep:
                yield name.strip(), value.strip()


def entry_points(group: str) -> list[EntryPoint]:
    """Every entry point in ``group``, in the order importlib.metadata gives them."""
    out: list[EntryPoint] = []
    for _, path in _distributions():
        try:
            with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        out.extend(EntryPoint(n, v, group, path) for n, v in _section(text, group))
    return out
