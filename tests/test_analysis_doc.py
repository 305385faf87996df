"""docs/analysis.md runs verbatim on the recordings in examples/traces/.

Its ``sh`` blocks run in order with bash in an empty folder that has the repository's
``examples/`` (``tracekit`` first on PATH); then each ``sql`` block runs in DuckDB
there, and a plain block right after one is what it must print, table for table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "analysis.md"

duckdb = pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order ("" for a plain block)."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def test_the_doc_has_steps_to_run() -> None:
    kinds = [k for k, _ in blocks(DOC.read_text())]
    assert kinds.count("sh") >= 1 and kinds.count("sql") >= 5


def test_analysis_doc_runs_verbatim_on_the_sample_recordings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    found = blocks(DOC.read_text())
    for kind, body in found:
        if kind == "sh":
            r = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", body],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert r.returncode == 0, f"{body}\n{r.stderr}"
    monkeypatch.chdir(tmp_path)
    con = duckdb.connect()
    checked = 0
    for i, (kind, body) in enumerate(found):
        if kind != "sql":
            continue
        want = found[i + 1][1] if i + 1 < len(found) and found[i + 1][0] == "" else None
        if want is None:
            con.execute(body)
            continue
        got = str(con.sql(body))
        assert got.strip() == want.strip(), f"{body}\n--- printed ---\n{got}"
        assert "0 rows" not in got
        checked += 1
    assert checked >= 5
