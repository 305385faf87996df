"""Dependency floors exclude the releases with known advisories (#26), and the table in
docs/reliability.md ("Dependencies") says the floors pyproject.toml and setup.sh hold."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

try:
    from packaging.requirements import Requirement
except ImportError:  # the venv's pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# package -> a release with an advisory that the floor must exclude, and the first
# release without it.
VULNERABLE = {
    "setuptools": ("78.1.0", "78.1.1"),  # CVE-2025-47273 (and CVE-2024-6345 before 70.0)
    "pyarrow": ("14.0.0", "14.0.1"),  # CVE-2023-47248
    "duckdb": ("1.0.0", "1.1.0"),  # CVE-2024-41672
    "pillow": ("10.2.0", "10.3.0"),  # CVE-2024-28219 (CVE-2023-50447 before 10.2.0)
}


def _requirements() -> dict[str, Requirement]:
    lines = [
        *PYPROJECT["build-system"]["requires"],
        *PYPROJECT["project"]["dependencies"],
        *PYPROJECT["project"]["optional-dependencies"]["fleet"],
    ]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


@pytest.mark.parametrize("name", sorted(VULNERABLE))
def test_the_floor_excludes_the_vulnerable_release(name: str) -> None:
    bad, good = VULNERABLE[name]
    req = _requirements()[name]
    assert not req.specifier.contains(bad), f"{req} admits {bad}"
    assert req.specifier.contains(good), f"{req} refuses the fixed {good}"


def test_the_documented_floors_are_the_real_ones() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text()
    table = doc.split("## Dependencies", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z-]+)`[^|]*\| ([0-9.]+) \|", table, re.M))
    reqs = _requirements()
    for name, floor in rows.items():
        if name == "pip":
            setup = (ROOT / "scripts" / "setup.sh").read_text()
            assert f"PIP_FLOOR={floor}\n" in setup
            continue
        assert f">={floor}" in str(reqs[name].specifier), (name, floor, str(reqs[name]))
    assert set(VULNERABLE) <= set(rows)
