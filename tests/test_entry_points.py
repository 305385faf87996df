"""tracekit.plugin.entry_points: the same answers as importlib.metadata, without importing it."""

from __future__ import annotations

import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

from tracekit.plugin.entry_points import entry_points


def _groups() -> set[str]:
    return {ep.group for d in metadata.distributions() for ep in d.entry_points}


def test_agrees_with_importlib_metadata_on_this_machine() -> None:
    groups = _groups()
    assert {"tracekit", "console_scripts"} <= groups  # the example plugin, pip's scripts
    for group in sorted(groups):
        want = [(ep.name, ep.value) for ep in metadata.entry_points(group=group)]
        assert [(ep.name, ep.value) for ep in entry_points(group)] == want, group
    names = {
        ep.name: (ep.dist.metadata["Name"], ep.dist.version)
        for ep in metadata.entry_points(group="tracekit")
        if ep.dist is not None
    }
    assert {ep.name: (ep.dist_name, ep.dist_version) for ep in entry_points("tracekit")} == names


def _dist(site: Path, folder: str, entry_points_txt: str, name: str, version: str) -> None:
    d = site / folder
    d.mkdir(parents=True)
    (d / "entry_points.txt").write_text(entry_points_txt)
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nText\n"
    (d / "METADATA").write_text(meta)


def test_first_distribution_on_the_path_wins_and_sections_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    text = "# a note\n[console_scripts]\nx = y:z\n\n[tracekit]\n# another\nmine = tkmine:plugin\n"
    _dist(first, "tk_Mine-1.0.dist-info", text, "tk-mine", "1.0")
    # The same distribution further down the path (an older copy): hidden, as in pip.
    _dist(second, "tk.mine-0.9.dist-info", "[tracekit]\nold = tkold\n", "tk-mine", "0.9")
    _dist(second, "other-2.egg-info", "[tracekit]\nother = tkother\n", "other", "2")
    mod = types.ModuleType("tkmine")
    mod.plugin = types.SimpleNamespace(answer=42)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tkmine", mod)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(first), str(second)])
    eps = entry_points("tracekit")
    assert [(e.name, e.value) for e in eps] == [("mine", "tkmine:plugin"), ("other", "tkother")]
    assert (eps[0].dist_name, eps[0].dist_version) == ("tk-mine", "1.0")
    assert eps[0].load().answer == 42
    assert [(e.name, e.value) for e in metadata.entry_points(group="tracekit")] == [
        (e.name, e.value) for e in eps
    ]
