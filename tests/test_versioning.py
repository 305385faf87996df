"""One version, in one place, with its changelog section."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import tracekit

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_lives_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert version("tracekit-ebpf") == tracekit.__version__


def test_the_version_is_semver() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?", tracekit.__version__)


def test_the_changelog_has_a_section_for_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    heads = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert heads and heads[0] in (tracekit.__version__, "Unreleased")
    assert tracekit.__version__ in heads
    # Keep a Changelog's kinds of change, nothing else, under each version.
    for kind in re.findall(r"^### (.+)$", text, re.M):
        assert kind in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_every_deprecated_module_path_says_when_it_goes() -> None:
    from tracekit import _compat

    major, minor, _ = (int(x) for x in tracekit.__version__.split(".")[:3])
    rmajor, rminor, _ = (int(x) for x in _compat.REMOVED_IN.split("."))
    # At least one minor release of warnings: removed no earlier than the next minor.
    assert (rmajor, rminor) > (major, minor)
    # And gone by then: a release that reaches REMOVED_IN must delete them.
    assert (major, minor) < (rmajor, rminor), "remove tracekit._compat's old paths"
