"""Memory bounds, as peak RSS of a child process (issue #26): sinks fed the largest
batches replay joins stay within docs/trace-format.md's bound (32 x the file's size
+ 100 MiB), and ``tracekit plot`` stays flat in the trace's size."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import tracefuzz

from tracekit.base.schema import format_value
from tracekit.traces.replay import COALESCE_BYTES, COALESCE_ROWS

MiB = 1 << 20

# The child's own peak (VmHWM), not getrusage's ru_maxrss: that one keeps the peak
# of the process image before exec, which here is the test runner's.
CHILD = """
import sys
from tracekit.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    status = e.code
else:
    status = 0
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print("peak", int(hwm.split()[1]) * 1024, status, file=sys.stderr)
"""


def peak_rss(*argv: str) -> tuple[int, int, str]:
    """(peak RSS in bytes, exit status, stderr without the figure) of one command."""
    r = subprocess.run(
        [sys.executable, "-c", CHILD, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    *rest, last = r.stderr.splitlines()
    _, peak, status = last.split()
    return int(peak), int(status), "\n".join(rest)


def bound(path: Path) -> int:
    return 32 * path.stat().st_size + 100 * MiB


@pytest.mark.parametrize("sink", ["console", "console=json"])
def test_console_decodes_merged_batches_in_slices(tmp_path: Path, sink: str) -> None:
    """Two 4 MiB batches of 256 two-character strings a row: replay joins them into
    one batch of 16,384 events, which the console decoded whole (515 MiB, and 633
    with console=json, against a bound of 356 MiB)."""
    p = tmp_path / "wide.tkt"
    p.write_bytes(tracefuzz.wide_file(random.Random(1), batches=2))
    assert COALESCE_ROWS >= 2 * 8192 and p.stat().st_size <= COALESCE_BYTES  # joined
    peak, status, err = peak_rss("replay", str(p), "--sink", sink)
    assert status == 0, err
    assert peak < bound(p), (peak / MiB, bound(p) / MiB)


def test_hist_keeps_a_key_eight_histograms_share_once(tmp_path: Path) -> None:
    """Eight histograms keyed by all 256 fields of 8,192 distinct rows (a 2 MB file)
    kept eight copies of every key: 330 MiB against a bound of 164."""
    p = tmp_path / "keys.tkt"
    p.write_bytes(tracefuzz.wide_file(random.Random(1), batches=1, ftype="u8", hists=8))
    peak, status, err = peak_rss("replay", str(p), "--sink", "hist")
    assert status == 0, err
    assert peak < bound(p), (peak / MiB, bound(p) / MiB)


def test_hist_formats_each_distinct_key_value_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Printing formatted every key field of every counter of every histogram (8 x
    8,192 keys x 256 fields: 16.8 M calls); now each distinct value of a key field,
    once for all the histograms: at most 256 fields x 256 values of a u8."""
    import tracekit.base.hist as hist_mod

    calls = 0

    def counting(*a: object, **kw: object) -> str:
        nonlocal calls
        calls += 1
        return format_value(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(hist_mod, "format_value", counting)
    p = tmp_path / "keys.tkt"
    p.write_bytes(tracefuzz.wide_file(random.Random(1), batches=1, ftype="u8", rows=2048, hists=8))
    r = tracefuzz.run_cli(["replay", str(p), "--sink", "hist"])
    assert r.status == 0, r.stderr
    # Every row is a key of its own (random bytes), printed once per histogram.
    assert r.stdout.count(": 1\n") == 8 * 2048
    assert 0 < calls <= 256 * 256, calls


def _fq_trace(path: Path, n: int) -> None:
    """fq-throttle drops of ``n`` distinct flows, as a live run writes them."""
    import numpy as np

    from tracekit.base.session import EventBatch, Session, Summary
    from tracekit.probes.fq_throttle import KINDS, SCHEMA
    from tracekit.traces.tracefile import TraceWriter

    w = TraceWriter(str(path), Session(probe="fq-throttle", schema=SCHEMA, ncpus=2))
    col = {name: f"f{SCHEMA.index(name)}" for name in ("ts_ns", "kind", "saddr", "count")}
    for lo in range(0, n, 8192):
        a = np.zeros(min(8192, n - lo), dtype=SCHEMA.dtype)
        a[col["ts_ns"]] = np.arange(lo, lo + len(a), dtype=np.uint64) * 1000
        a[col["kind"]] = KINDS.index("flow_limit_drop")
        a[col["saddr"]] = np.arange(lo, lo + len(a))
        a[col["count"]] = 1
        w.write_batch(EventBatch.from_records("fq-throttle", SCHEMA, a.tobytes()))
    w.close(Summary(events=n))


def test_plot_memory_stays_flat_with_distinct_keys(tmp_path: Path) -> None:
    """A row of 150 bins for every distinct flow: 300,000 flows took 1,010 MiB (a
    2.4 GB grid for two million). Now at most fleet.plot.MAX_KEYS keep their bins."""
    pytest.importorskip("matplotlib")
    peaks = []
    for n in (150_000, 300_000):
        p = tmp_path / f"fq{n}.tkt"
        _fq_trace(p, n)
        peak, status, err = peak_rss("plot", str(p), "-o", str(tmp_path / "fq.png"), "--force")
        assert status == 0, err
        peaks.append(peak)
    assert peaks[1] < 200 * MiB, peaks
    # Twice the events and keys, (almost) the same memory: not keys x bins.
    assert peaks[1] - peaks[0] < 16 * MiB, peaks


class _Span:
    def bins(self) -> tuple[float, int]:
        return 1.0, 10


class _Trace:
    """What Binned reads of a trace: numpy and the span's bins."""

    def __init__(self) -> None:
        import numpy as np

        self.np = np

    def span(self) -> _Span:
        return _Span()


def test_binned_keeps_the_heavy_keys_exact_among_many_light_ones() -> None:
    import numpy as np

    from tracekit.fleet.plot import MAX_KEYS, Binned

    b = Binned(_Trace())  # type: ignore[arg-type]
    rng = random.Random(5)
    total = 0
    for batch in range(40):
        # 3 heavy keys (100 events each a batch) among 5,000 new light keys a batch.
        keys: list[object] = [("heavy", i % 3) for i in range(300)]
        keys += [("light", batch, i) for i in range(5000)]
        rng.shuffle(keys)
        t = np.array([rng.random() * 10 for _ in keys])
        b.add(t, keys)
        total += len(keys)
        assert len(b.keys) <= MAX_KEYS and b.grid.shape[1] <= MAX_KEYS
    assert sorted(b.top(3)) == [("heavy", 0), ("heavy", 1), ("heavy", 2)]
    series = b.series()
    assert all(series[("heavy", i)].sum() == 40 * 100 for i in range(3))
    # Nothing lost: what is kept and what was folded add up to every event.
    assert b.grid.sum() + b.other.sum() == total and b.folded > 0


def test_top_keys_keeps_the_busiest_flows_among_millions_bounded() -> None:
    """rss-cpu's per-flow panel counted every flow of the trace (a Counter each)."""
    from tracekit.fleet.plot import MAX_KEYS, TopKeys

    top = TopKeys()
    for batch in range(30):
        keys: list[object] = [("busy", i % 4) for i in range(400)]
        keys += [("once", batch, i) for i in range(6000)]
        top.add(keys, [k[1] if k[0] == "busy" else 0 for k in keys])
        assert len(top.counts) <= MAX_KEYS
    busiest = sorted(top.totals, key=lambda k: -top.totals[k])[:4]
    assert sorted(busiest) == [("busy", i) for i in range(4)]  # type: ignore[comparison-overlap]
    assert all(top.totals[("busy", i)] == 30 * 100 for i in range(4))
    assert top.counts[("busy", 2)] == {2: 3000}
    assert top.seen == 4 + 30 * 6000
