"""What tracekit writes, attacked as #26 describes: links planted at an output's name
or at its old predictable temp name, devices, modes under root's umask, spreadsheet
formulas in CSV cells, ``$`` in trace strings and a ``matplotlibrc`` in the current
folder for plot, and plugins planted in the current folder for ``python -m tracekit``."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import fleet_data
import pytest

from tracekit.base.session import Session
from tracekit.base.text import csv_cell
from tracekit.plugin.bus import Bus, build_bus
from tracekit.testing import feed

TRACEKIT = [sys.executable, "-m", "tracekit"]


def tk(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRACEKIT, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def one_line_status_2(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("tracekit: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture(scope="module")
def bus() -> Bus:
    return build_bus()


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory, bus: Bus) -> Path:
    p = tmp_path_factory.mktemp("t") / "rss.tkt"
    fleet_data.record(bus, "rss-cpu", p)
    return p


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_bytes(b"root's 0600 file")
    os.chmod(v, 0o600)
    return v


def _intact(v: Path) -> None:
    assert v.read_bytes() == b"root's 0600 file" and _mode(v) == 0o600


# -- recordings --------------------------------------------------------------------


def test_recordings_are_0600_under_a_022_umask_and_mode_shares_them(
    trace: Path, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        assert tk("replay", str(trace), "--sink", f"msgpack={tmp_path / 'a.tkt'}").returncode == 0
        r = tk("replay", str(trace), "--sink", f"msgpack={tmp_path / 'b.tkt'}", "--mode", "0640")
        assert r.returncode == 0, r.stderr
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.tkt") == 0o600 and _mode(tmp_path / "b.tkt") == 0o640
    assert "--mode 0777" in one_line_status_2(
        tk("replay", str(trace), "--sink", f"msgpack={tmp_path / 'c.tkt'}", "--mode", "0777")
    )


def test_force_never_truncates_through_a_link(trace: Path, tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "out.tkt"
    link.symlink_to(victim)
    r = tk("replay", str(trace), "--sink", f"msgpack={link}", "--force")
    assert "symbolic link" in one_line_status_2(r)
    _intact(victim)
    assert link.is_symlink()


def test_force_replaces_a_trace_by_a_new_file(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tkt"
    out.write_bytes(b"old")
    os.link(out, tmp_path / "hardlink")  # another name of the old file keeps its bytes
    assert tk("replay", str(trace), "--sink", f"msgpack={out}", "--force").returncode == 0
    assert out.read_bytes()[:4] != b"old" and (tmp_path / "hardlink").read_bytes() == b"old"
    assert tk("info", str(out)).returncode == 0


# -- export ------------------------------------------------------------------------


def test_export_writes_no_predictable_temp_and_follows_no_link(
    trace: Path, tmp_path: Path, victim: Path
) -> None:
    pytest.importorskip("pyarrow")  # the fleet extra
    out = tmp_path / "rss.parquet"
    # The old temp name, planted as a link to root's file in a shared folder.
    (tmp_path / "rss.parquet.part").symlink_to(victim)
    old = os.umask(0o022)
    try:
        r = tk("export", str(trace), "--to", "parquet", str(out))
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    _intact(victim)
    assert _mode(out) == 0o600 and out.read_bytes()[:4] == b"PAR1"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["rss.parquet", "rss.parquet.part", "victim"]
    # OUT itself a link (live or dangling): refused, --force or not.
    for target in (victim, tmp_path / "made-through-the-link"):
        link = tmp_path / "link.csv"
        link.symlink_to(target)
        for extra in ((), ("--force",)):
            r = tk("export", str(trace), "--to", "csv", str(link), *extra)
            assert "symbolic link" in one_line_status_2(r)
        link.unlink()
    _intact(victim)
    assert not (tmp_path / "made-through-the-link").exists()
    r = tk("export", str(trace), "--to", "jsonl", "/dev/null", "--force")
    assert "not a regular file" in one_line_status_2(r)
    r = tk("export", str(trace), "--to", "jsonl", str(tmp_path / "s.jsonl"), "--mode", "0644")
    assert r.returncode == 0 and _mode(tmp_path / "s.jsonl") == 0o644


FORMULAS = ['=HYPERLINK("x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


def _formula_trace(tmp_path: Path, bus: Bus) -> Path:
    """rss-cpu events whose interface names are spreadsheet formulas (any user names
    an interface in its own network namespace), recorded on such a host."""
    spec = bus.probes.get("rss-cpu")
    rows = fleet_data.rss_cpu_rows(spec.schema, seconds=0.01)
    i = spec.schema.index("ifname")
    rows = [(*r[:i], FORMULAS[n % len(FORMULAS)], *r[i + 1 :]) for n, r in enumerate(rows)]
    p = tmp_path / "formulas.tkt"
    session = Session(
        probe="rss-cpu", schema=spec.schema, hostname="=cmd|' /C calc'!A0", kernel="6.1.0"
    )
    feed(bus, session, [f"msgpack={p}"], [rows])
    return p


def test_csv_export_neutralises_formulas_unless_raw(tmp_path: Path, bus: Bus) -> None:
    pytest.importorskip("pyarrow")  # the fleet extra
    p = _formula_trace(tmp_path, bus)
    out, raw = tmp_path / "n.csv", tmp_path / "raw.csv"
    assert tk("export", str(p), "--to", "csv", str(out)).returncode == 0
    assert tk("export", str(p), "--to", "csv", str(raw), "--raw-csv").returncode == 0
    rows = list(csv.DictReader(out.open(newline="")))
    raws = list(csv.DictReader(raw.open(newline="")))
    assert len(rows) == len(raws) == 40
    for r, w in zip(rows, raws, strict=True):
        assert w["ifname"] in FORMULAS and w["host"] == "=cmd|' /C calc'!A0"
        assert r["ifname"] == "'" + w["ifname"] and r["host"] == "'" + w["host"]
        assert r["ifname"] == csv_cell(w["ifname"])  # one rule, Python and Arrow
        assert r["cpu"] == w["cpu"] and r["sport"] == w["sport"]  # numbers untouched
        assert not r["params"].startswith("'")


def test_csv_cell_follows_owasp_and_keeps_plain_numbers() -> None:
    for s in [*FORMULAS, "-bash", "-", "-5\n", "-.5"]:
        assert csv_cell(s) == "'" + s
    for s in ["-5", "-5.25", "42", "lo", "", "a=b", "'quoted"]:
        assert csv_cell(s) == s


# -- plot --------------------------------------------------------------------------


def test_plot_draws_dollar_strings_as_text(tmp_path: Path, bus: Bus) -> None:
    pytest.importorskip("matplotlib")  # the fleet extra
    spec = bus.probes.get("rss-cpu")
    rows = fleet_data.rss_cpu_rows(spec.schema, seconds=1)
    i = spec.schema.index("ifname")
    rows = [(*r[:i], "v$\\x{$", *r[i + 1 :]) for r in rows]
    p = tmp_path / "dollar.tkt"
    session = Session(probe="rss-cpu", schema=spec.schema, hostname="h$\\frac{$", kernel="6.1")
    feed(bus, session, [f"msgpack={p}"], [rows])
    out = tmp_path / "d.png"
    r = tk("plot", str(p), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x89PNG" and _mode(out) == 0o600


def test_plot_ignores_a_matplotlibrc_in_the_current_folder(trace: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the fleet extra
    cwd = tmp_path / "shared"
    cwd.mkdir()
    (cwd / "matplotlibrc").write_text("text.usetex: True\nfigure.dpi: 7\n")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    marker = tmp_path / "latex-ran"
    for tool in ("latex", "dvipng", "kpsewhich", "gs"):
        (bin_ / tool).write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        os.chmod(bin_ / tool, 0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    # The oracle: matplotlib itself reads that file from there.
    r = subprocess.run(
        [sys.executable, "-c", "import matplotlib; print(matplotlib.rcParams['text.usetex'])"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.stdout.strip() == "True"
    out = tmp_path / "p.png"
    r = tk("plot", str(trace), "-o", str(out), cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    assert not marker.exists() and len(out.read_bytes()) > 20_000  # dpi 110, not 7


def test_plot_to_a_dangling_link_creates_nothing(trace: Path, tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "p.png"
    link.symlink_to(tmp_path / "made-through-the-link.png")
    for extra in ((), ("--force",)):
        assert "symbolic link" in one_line_status_2(tk("plot", str(trace), "-o", str(link), *extra))
    assert not (tmp_path / "made-through-the-link.png").exists()
    link.unlink()
    link.symlink_to(victim)
    assert "symbolic link" in one_line_status_2(tk("plot", str(trace), "-o", str(link), "--force"))
    _intact(victim)


# -- python -m tracekit and the current folder ---------------------------------------


def test_python_m_tracekit_loads_no_plugin_from_the_current_folder(tmp_path: Path) -> None:
    """``python -m`` puts the current folder first on sys.path; a ``*.dist-info``
    planted there with a ``tracekit`` entry point must not run (as root)."""
    marker = tmp_path / "planted-plugin-ran"
    (tmp_path / "evil_plugin.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    )
    info = tmp_path / "evil_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tracekit]\nevil = evil_plugin\n")
    r = tk("list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not marker.exists() and "evil" not in r.stdout
    # The oracle: the same folder on sys.path by choice (PYTHONPATH) does load it.
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            from tracekit.plugin.entry_points import entry_points
            print([e.name for e in entry_points("tracekit")])
        """),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    assert "'evil'" in r.stdout, r.stderr
