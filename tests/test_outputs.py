"""Every output true (issue 24, item 4): help, export, JSON, headings, replay, new."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TRACEKIT = [sys.executable, "-m", "tracekit"]


def tk(*args: str, cwd: Path | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRACEKIT, *args], capture_output=True, text=True, timeout=120, cwd=cwd, **kw
    )


# -- help ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        ((), "Usage: tracekit [OPTIONS] COMMAND"),
        (("lab",), "Usage: tracekit lab [OPTIONS] COMMAND"),
        (("new",), "Usage: tracekit new [OPTIONS] {probe|sink} NAME"),
    ],
)
def test_bare_commands_print_their_help_readably(args: tuple[str, ...], usage: str) -> None:
    r = tk(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(usage + " ") or r.stdout.startswith(usage + "\n")
    assert "\\x0a" not in r.stdout + r.stderr
    # The same text --help prints.
    assert r.stdout == tk(*args, "--help").stdout


@pytest.mark.parametrize(
    "args",
    [(), ("run",), ("replay",), ("export",), ("plot",), ("new",), ("info",), ("lab", "txq-flip")],
)
def test_help_has_examples(args: tuple[str, ...]) -> None:
    r = tk(*args, "--help")
    assert r.returncode == 0, r.stderr
    _, sep, ex = r.stdout.partition("Examples:\n")
    assert sep, r.stdout
    lines = [ln.strip() for ln in ex.splitlines() if ln.strip()]
    assert lines and all(ln.startswith(("tracekit", "sudo tracekit", "pip", "#")) for ln in lines)


def test_a_click_error_is_one_line() -> None:
    r = tk("new", "bogus", "x")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "\\x0" not in r.stderr, r.stderr


# -- tracekit new ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "why"),
    [
        ("sink", "hist", "sink 'hist' exists already"),
        ("sink", "console", "sink 'console' exists already"),
        ("probe", "txq-flip", "probe 'txq-flip' exists already"),
        ("probe", "lab", "a plugin named 'lab'"),
    ],
)
def test_new_refuses_a_name_that_is_taken(tmp_path: Path, kind: str, name: str, why: str) -> None:
    r = tk("new", kind, name, cwd=tmp_path)
    assert r.returncode == 2 and why in r.stderr, r.stderr
    assert r.stderr.startswith("tracekit: ") and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_new_says_pip_install_of_the_folder(tmp_path: Path) -> None:
    r = tk("new", "sink", "statsd-x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pip install ./tracekit-statsd-x," in r.stdout
    assert (tmp_path / "tracekit-statsd-x" / "pyproject.toml").is_file()
