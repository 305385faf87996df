"""Sinks fed the largest batches replay joins stay within docs/trace-format.md's
memory bound (peak RSS under 32 x the file's size + 100 MiB), measured in a child
process (issue #26)."""

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
