"""docs/examples.md prints what its commands print on examples/traces/, to the byte."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "examples.md"


def commands(text: str) -> list[tuple[str, str]]:
    """(command, what it printed) for each ``$ tracekit ...`` in the doc's blocks."""
    out = []
    for block in re.findall(r"^```\n(.*?)^```$", text, re.M | re.S):
        for part in re.split(r"^\$ ", block, flags=re.M)[1:]:
            cmd, _, printed = part.partition("\n")
            out.append((cmd, printed))
    return out


def test_examples_doc_prints_what_the_commands_print() -> None:
    found = commands(DOC.read_text())
    assert len(found) >= 5
    for cmd, printed in found:
        argv = shlex.split(cmd)
        assert argv[0] == "tracekit", cmd
        r = subprocess.run(
            [sys.executable, "-m", "tracekit", *argv[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
        assert r.stdout.rstrip("\n") == printed.rstrip("\n"), cmd
