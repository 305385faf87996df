"""The recordings in examples/traces/ (real, from the VM labs) replay, export and plot.

They are what a new user tries first, without a kernel to trace: every command the
docs show on them works, and what each prints agrees with the kernel's own counters
that the trace's footer carries.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.base.session import Session, Summary
from tracekit.traces.tracefile import TraceReader

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "examples" / "traces"
SAMPLES = {
    "txq-flip": TRACES / "txq-flip.tkt",
    "rss-cpu": TRACES / "rss-cpu.tkt",
    "fq-throttle": TRACES / "fq-throttle.tkt",
    "ooo-okay": TRACES / "ooo-okay.unlimited.tkt",
    "ooo-okay.limited": TRACES / "ooo-okay.limited.tkt",
}
# Each probe's counter of the events it streamed (the kernel counts, the trace streams).
STREAMED_COUNTER = {
    "txq-flip": ("txq_counts", "changes"),
    "rss-cpu": ("rss_counts", "packets"),
    "ooo-okay": ("ooo_counts", "ooo_okay"),
}


def tk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracekit", *args], capture_output=True, text=True, timeout=300
    )


def footer(path: Path) -> tuple[Session, Summary]:
    r = TraceReader(str(path))
    r.verify()
    assert r.footer is not None, f"{path} has no footer"
    return r.session, r.footer


def test_one_small_real_recording_per_probe() -> None:
    sizes = {name: p.stat().st_size for name, p in SAMPLES.items()}
    assert sum(sizes.values()) < 400_000, sizes
    for name, p in SAMPLES.items():
        session, end = footer(p)
        assert session.probe == name.split(".")[0]
        # Recorded live in the VM: a real kernel, not the synthetic tests' "-lab"/"-test".
        assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", session.kernel), session.kernel
        assert end.events > 0 and not end.lost


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_replays_with_hist_and_console(name: str) -> None:
    path = SAMPLES[name]
    _, end = footer(path)
    r = tk("replay", str(path), "--sink", "hist")
    assert r.returncode == 0, r.stderr
    # The kernel's counters, as the footer has them, printed by hist.
    for m, labels in end.counters.items():
        for label, per in labels.items():
            total = sum(per.values())
            if total:
                assert f"@{m}.{label}: total={total} " in r.stdout
    r = tk("replay", str(path), "--sink", "console=json")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(objs) == end.events + 1
    probe = name.split(".")[0]
    if probe in STREAMED_COUNTER:
        m, label = STREAMED_COUNTER[probe]
        # Nothing sampled or lost: one event per count the kernel kept.
        assert len(objs) - 1 == sum(end.counters[m][label].values())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_exports(name: str, tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("pyarrow")
    path = SAMPLES[name]
    _, end = footer(path)
    out = tmp_path / "x.parquet"
    r = tk("export", str(path), "--to", "parquet", str(out))
    assert r.returncode == 0, r.stderr
    assert duckdb.sql(f"SELECT count(*) FROM '{out}'").fetchall()[0][0] == end.events


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_plots(name: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "x.png"
    r = tk("plot", str(SAMPLES[name]), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rss_cpu_sample_plot_names_the_cpu_the_kernel_counted_most_on() -> None:
    """The subtitle's busiest CPU, against hist's per-CPU counts and the kernel's counter."""
    pytest.importorskip("matplotlib")
    from tracekit.fleet.plot import Trace
    from tracekit.plugin.bus import build_bus

    path = SAMPLES["rss-cpu"]
    r = tk("replay", str(path), "--sink", "hist")
    hist = {
        int(c): int(n) for c, n in re.findall(r"^@rx_packets\[cpu=(\d+)\]: (\d+)$", r.stdout, re.M)
    }
    _, end = footer(path)
    kernel = dict(end.counters["rss_counts"]["packets"])
    assert hist == {c: n for c, n in kernel.items() if n}
    cpu = max(hist, key=lambda c: hist[c])
    share = hist[cpu] / sum(hist.values())
    assert share > 0.9  # the seed's situation: the NIC hashed addresses only
    fig = build_bus().probes.get("rss-cpu").plot(Trace(str(path)))
    assert f"overall cpu{cpu} has {100 * share:.1f}%" in fig.axes[1].get_title(loc="left")
    # The lab's 8 UDP flows to the server, on one RX queue with one hash value.
    assert "; 8 share one hash value" in fig.axes[3].get_title(loc="left")
