"""The project's wheel and its dependencies' wheels, built once per test session.

``pip wheel .`` builds tracekit-ebpf's wheel (setup.py's hook compiles the probes'
CO-RE objects with clang) and puts every dependency's wheel beside it, from pip's
cache or the index: the tests that install from it then run offline (``--no-index
--find-links``), as a host without network would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def _build(where: str) -> tuple[Path, str]:
    out = Path(where)
    # A copy of the tree: a build in place would leave build/ and an egg-info in it.
    src = out / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", ".vm-out", "build", "dist", "*.egg-info", "__pycache__", ".*cache"
        ),
    )
    wheels = out / "wheels"
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return wheels, p.stderr if p.returncode else ""


def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of wheels (tracekit-ebpf's and its dependencies'); fails the test
    with pip's words if the build fails."""
    if shutil.which("clang") is None:
        pytest.skip("clang not installed: the wheel's CO-RE objects cannot be built")
    wheels, error = _build(str(tmp_path_factory.getbasetemp() / "wheelhouse"))
    assert not error, error
    return wheels


def project_wheel(wheels: Path) -> Path:
    (whl,) = wheels.glob("tracekit_ebpf-*.whl")
    return whl
