"""0.1.0's module paths keep working until 0.3.0, each with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tracekit import _compat


@pytest.mark.parametrize("old", sorted(_compat.MOVED_MODULES))
def test_an_old_module_path_is_the_new_module_with_a_warning(old: str) -> None:
    new = _compat.MOVED_MODULES[old]
    code = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({new!r})\n"
        "assert old is new, (old, new)\n"
        "assert [str(x.message) for x in w if x.category is DeprecationWarning], w\n"
        "print(w[0].message); print(w[0].filename)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    message, filename = out.splitlines()[:2]
    assert new in message and _compat.REMOVED_IN in message
    assert filename == "<string>"  # the warning points at the importer, not importlib


def test_from_tracekit_import_an_old_module_warns() -> None:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        from tracekit import bus  # type: ignore[attr-defined]
    assert bus is importlib.import_module("tracekit.plugin.bus")
    assert any("tracekit.plugin.bus" in str(x.message) for x in w)


def test_old_cli_names_forward_with_a_warning() -> None:
    import tracekit.cli

    with pytest.warns(DeprecationWarning, match=r"tracekit\.cli\.main\.cli"):
        group = tracekit.cli.cli
    assert group is importlib.import_module("tracekit.cli.main").cli


def test_the_new_paths_do_not_warn() -> None:
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        + "".join(f"import {new}\n" for new in sorted(set(_compat.MOVED_MODULES.values())))
        + "import tracekit.cli; tracekit.cli.main\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_old_fleet_names_forward_with_a_warning() -> None:
    import tracekit.fleet

    with pytest.warns(DeprecationWarning, match=r"tracekit\.fleet\.extras\.need"):
        f = tracekit.fleet.need
    assert f is importlib.import_module("tracekit.fleet.extras").need


def test_the_deprecated_pytest11_shim_loads_no_tracekit(tmp_path: Path) -> None:
    """0.1.0's automatic fixtures: a pytest run that uses none of them imports
    nothing of tracekit but the package's light top (as ``import tracekit``); one
    that uses them gets them, with a DeprecationWarning."""
    (tmp_path / "test_plain.py").write_text(
        "import sys\n"
        "def test_plain():\n"
        "    assert not [m for m in sys.modules if m.startswith('tracekit.') and\n"
        "                m not in ('tracekit._pytest_compat', 'tracekit._compat')]\n"
    )
    (tmp_path / "test_uses.py").write_text(
        "def test_uses(tracekit_bus):\n    assert 'hist' in [s.name for s in tracekit_bus.sinks]\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "always::DeprecationWarning",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout and "opting in to tracekit's pytest plugin" in run.stdout
