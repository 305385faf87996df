"""The wheel: one file with the probes' CO-RE objects, their sources, LICENSE and
complete metadata; the objects' bytes depend on the sources and clang only."""

from __future__ import annotations

import json
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import tracekit.bpf.core_build as cb
from tests.wheelhouse import ROOT, project_wheel, wheelhouse
from tracekit.plugin.bus import build_bus


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return zipfile.ZipFile(project_wheel(wheelhouse(tmp_path_factory)))


def _builtin_core_probes() -> set[str]:
    bus = build_bus(load_entry_points=False)
    return {
        s.name
        for s in bus.probes
        if s.core and bus.probes.plugin_of(s.name).startswith("tracekit.probes.")
    }


def test_the_wheel_carries_every_built_in_probes_object_and_source(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    build = json.loads(wheel.read("tracekit/probes/core/BUILD.json"))
    assert build["clang"].startswith(("Debian clang version", "clang version", "Ubuntu clang"))
    assert build["cflags"] == list(cb.CFLAGS)
    assert (
        set(build["objects"])
        == _builtin_core_probes()
        == {"txq-flip", "rss-cpu", "ooo-okay", "fq-throttle"}
    )
    bus = build_bus(load_entry_points=False)
    for name, entry in build["objects"].items():
        spec = bus.probes.get(name)
        # Named by the hash of the sources the installed package will carry: the loader
        # finds it by today's sources.
        assert entry["object"] == f"{name}-{cb.object_key(spec)}.bpf.o"
        for suffix in ("", ".json", ".sha256", ".built-by"):
            assert f"tracekit/probes/core/{entry['object']}{suffix}" in names
        assert f"tracekit/probes/{entry['source']}" in names
        digest = wheel.read(f"tracekit/probes/core/{entry['object']}.sha256").split()[0]
        assert digest.decode() == entry["sha256"]
    for h in cb.HEADERS:
        assert f"tracekit/probes/{h}" in names


def test_the_objects_bytes_depend_on_the_sources_and_clang_only(
    wheel: zipfile.ZipFile, tmp_path: Path
) -> None:
    """Built again from the tree at another path: byte for byte the wheel's."""
    build = cb.build_shipped(ROOT / "probes", tmp_path / "elsewhere" / "core")
    for entry in build["objects"].values():
        ours = (tmp_path / "elsewhere" / "core" / entry["object"]).read_bytes()
        assert ours == wheel.read(f"tracekit/probes/core/{entry['object']}")


def test_metadata_license_and_no_pytest_entry_point(wheel: zipfile.ZipFile) -> None:
    (meta_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    meta = Parser().parsestr(wheel.read(meta_name).decode())
    assert meta["Name"] == "tracekit-ebpf"
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License"] == "Apache-2.0"
    classifiers = meta.get_all("Classifier") or []
    assert "License :: OSI Approved :: Apache Software License" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    assert "ebpf" in (meta["Keywords"] or "")
    requires = meta.get_all("Requires-Dist") or []
    # pyarrow before 14.0.1: CVE-2023-47248 (code execution from a file's metadata).
    assert any(r.startswith("pyarrow>=14.0.1;") and "fleet" in r for r in requires), requires
    # Every run-time and fleet dependency has a floor.
    runtime = [r for r in requires if "extra ==" not in r or "fleet" in r]
    assert len(runtime) >= 10 and all(">=" in r for r in runtime), runtime
    license_text = wheel.read(next(n for n in wheel.namelist() if n.endswith("/LICENSE")))
    assert b"Apache License" in license_text and b"Version 2.0" in license_text
    (eps,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(eps).decode()
    assert "[console_scripts]" in text and "tracekit = tracekit.cli.main:main" in text
    # The pytest plugin is opt-in: the only pytest11 entry point is 0.1.0's, deprecated,
    # a shim that loads nothing of tracekit until one of its fixtures is used.
    pytest11 = (
        text.split("[pytest11]", 1)[1].split("[", 1)[0].split() if "[pytest11]" in text else []
    )
    assert pytest11 in ([], ["tracekit", "=", "tracekit._pytest_compat"]), text
    assert "tracekit.testing" not in text


def test_setup_py_builds_the_probes_the_package_has() -> None:
    """build_shipped names a probe by its folder: the names agree with the specs'."""
    folders = {p.parent.name.replace("_", "-") for p in (ROOT / "probes").glob("*/*.bpf.c")}
    assert folders == _builtin_core_probes()
