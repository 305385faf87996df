"""One list of built-ins (#27 item 4), derived by the package from its folders.

``DEFAULT_PLUGINS`` (what the bus loads) and the labs' ``SEEDS`` are read from the
installed ``tracekit.plugins`` and ``tracekit.probes``; this checks them against
the repository's plugins/ and probes/*/ folders, and pyproject.toml's package list
and entry points against both.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from tracekit.lab import SEEDS
from tracekit.plugin.bus import DEFAULT_PLUGINS, build_bus

ROOT = Path(__file__).resolve().parents[1]


def sink_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "plugins").glob("*.py") if not p.name.startswith("_"))


def probe_folders() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "probes").glob("*/__init__.py"))


def test_the_bus_loads_every_folder_and_nothing_else() -> None:
    assert sink_modules() and probe_folders()
    want = [f"tracekit.plugins.{m}" for m in sink_modules()]
    want += [f"tracekit.probes.{p}" for p in probe_folders()]
    assert list(DEFAULT_PLUGINS) == [*want, "tracekit.lab"]


def test_each_probe_folder_registers_a_probe_and_the_labs_follow_them() -> None:
    bus = build_bus(load_entry_points=False)
    builtin = {bus.probes.plugin_of(p.name) for p in bus.probes}
    assert builtin == {f"tracekit.probes.{p}" for p in probe_folders()}
    # A lab per probe that has one (tracekit/lab/<folder>.py), named like the probe.
    labs = sorted(
        p.stem for p in (ROOT / "tracekit" / "lab").glob("*.py") if p.stem in probe_folders()
    )
    assert {n.replace("_", "-"): f"tracekit.lab.{n}" for n in labs} == SEEDS
    assert set(SEEDS) <= {p.name for p in bus.probes}


def test_pyproject_packages_and_entry_points_match_the_folders() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(project["tool"]["setuptools"]["packages"])
    for p in probe_folders():
        assert f"tracekit.probes.{p}" in packages, p
    listed = {n for n in packages if n.startswith("tracekit.probes.")}
    assert listed == {f"tracekit.probes.{p}" for p in probe_folders()}
    # Built-ins are found in the package, not through entry points: an entry point
    # naming one would register it twice (a clash naming both).
    eps = project["project"].get("entry-points", {}).get("tracekit", {})
    assert not set(eps.values()) & set(DEFAULT_PLUGINS), eps
