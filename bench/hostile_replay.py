"""Time and peak memory of replaying the worst files for each resource (no assertions).

Forges, with tests/tracefuzz.py's framing (valid CRCs), files that are the worst case
for one resource each, and runs ``tracekit info`` and ``tracekit replay --sink hist``
on each in a fresh process, reporting MB/s and peak RSS against the file's size:

* ``wide-strings``: batches of 8,192 rows of 200 two-character strings, each record
  near the 4 MiB cap: the most Python objects per byte;
* ``tiny-records``: empty lost-event records (about 20 bytes each): the most
  records, and so the most per-record work, per byte;
* ``many-symbols``: symbol records up to the file's 2^20 limit: what a replay keeps;
* ``many-keys``: 8 header histograms keyed by a value unique to each row: the most
  histogram counters (``hist.MAX_HIST_CELLS`` each) and printed lines;
* ``wide-keys``: 8 histograms keyed by all 256 ``u8`` fields of rows that all
  differ: the widest keys, each shared by every histogram;
* ``wide-packed``: format-2 batches of 256 two-character strings a row at the
  record cap, which replay joins into one batch (what ``console`` decodes);
* ``valid``: a plain txq-flip recording, for comparison.

Each file runs ``info``, ``replay --sink hist`` and ``replay --sink console``
(``--commands`` picks others).

    .venv/bin/python bench/hostile_replay.py [--mb 40] [--only KIND...]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import msgpack
import tracefuzz

from tracekit.traces.tracefile import BATCH, FOOTER, LOST, MAX_RECORD, SYMBOLS


def forge(kind: str, target: int) -> bytes:
    recs = tracefuzz.base_records(random.Random(1))
    head, foot = recs[0], recs[-1]
    body: list[list[object]] = []
    if kind == "wide-strings":
        fields = [{"name": f"s{i}", "type": "str2", "display": "str"} for i in range(200)]
        head[1]["schema"] = {"fields": fields, "histograms": []}
        row = tuple(f"{i % 100:02d}" for i in range(200))
        rows = [row] * min(8192, (MAX_RECORD - 64) // len(msgpack.packb(row)))
        size = len(msgpack.packb(rows))
        body = [[BATCH, rows] for _ in range(max(1, target // size))]
    elif kind == "many-keys":
        # The most histogram counters per byte: 8 histograms (the header's limit),
        # each keyed by a value that differs in every row, one with 10,000 buckets.
        h = [{"value": "lat", "by": ["ts_ns"], "kind": "log2"} for _ in range(7)]
        h.append(
            {"value": "lat", "by": ["ts_ns"], "kind": "linear", "lo": 0, "hi": 10_000, "step": 1}
        )
        head[1]["schema"]["histograms"] = h
        rng = random.Random(2)
        n = 0
        while n * 30 < target:
            rows = [(n + i, 0, "", 0, 0, rng.randrange(10_000), "") for i in range(8192)]
            n += len(rows)
            body.append([BATCH, rows])
    elif kind in ("wide-keys", "wide-packed"):
        rng = random.Random(3)
        if kind == "wide-keys":
            return tracefuzz.wide_file(rng, max(1, target // (256 * 8192)), ftype="u8", hists=8)
        return tracefuzz.wide_file(rng, max(1, target // (512 * 8192)))
    elif kind == "tiny-records":
        body = [[LOST, {}] for _ in range(target // 20)]
    elif kind == "many-symbols":
        per = 20_000
        n = min(target // 12, 1 << 20) // per
        body = [
            [SYMBOLS, {"symbols": {a: "s" for a in range(i * per, (i + 1) * per)}}]
            for i in range(n)
        ]
    else:
        body = [r for r in recs[1:-1]] * max(1, target // 600)
    events = sum(len(r[1]) for r in body if r[0] == BATCH)  # type: ignore[arg-type]
    foot[1].update(events=events, kernel_agg=[])
    return tracefuzz.serialize([head, *body, [FOOTER, foot[1]]])


def run(argv: list[str]) -> tuple[float, int, int]:
    """Seconds, peak RSS in bytes, and status of one tracekit command in a child.

    The peak is the child's VmHWM, not getrusage's ru_maxrss: the latter keeps the
    parent's peak across fork and exec, and this parent has just built a big file.
    """
    code = (
        "import sys\n"
        "from tracekit.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    status = e.code\n"
        "else:\n"
        "    status = 0\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
        "print(int(hwm.split()[1]) * 1024, status, file=sys.stderr)\n"
    )
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    rss, status = r.stderr.strip().splitlines()[-1].split()
    return took, int(rss), int(status)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=40.0, help="target file size")
    ap.add_argument("--only", nargs="*", default=None, help="these files only")
    ap.add_argument(
        "--commands", nargs="*", default=["info", "hist", "console"], help="info, hist, console"
    )
    a = ap.parse_args()
    _, base_rss, _ = run(["--version"])
    print(f"baseline (python + tracekit imported): {base_rss / 2**20:.0f} MiB RSS")
    print(
        f"{'file':<14}{'MB':>7}  {'command':<13}{'status':>6}{'s':>7}{'MB/s':>7}"
        f"{'peak RSS MiB':>14}{'(RSS-base)/size':>17}"
    )
    with tempfile.TemporaryDirectory() as d:
        for kind in a.only or (
            "valid",
            "wide-strings",
            "tiny-records",
            "many-symbols",
            "many-keys",
            "wide-keys",
            "wide-packed",
        ):
            p = Path(d, f"{kind}.tkt")
            p.write_bytes(forge(kind, int(a.mb * 1e6)))
            size = p.stat().st_size
            argvs = {
                "info": ["info", str(p)],
                "hist": ["replay", str(p), "--sink", "hist"],
                "console": ["replay", str(p), "--sink", "console"],
            }
            for cmd in (argvs[c] for c in a.commands):
                took, rss, status = run(cmd)
                print(
                    f"{kind:<14}{size / 1e6:>7.1f}  {' '.join(cmd[:1] + cmd[2:]):<13}"
                    f"{status:>6}{took:>7.1f}{size / 1e6 / took:>7.1f}{rss / 2**20:>14.0f}"
                    f"{(rss - base_rss) / size:>17.2f}"
                )
            os.unlink(p)


if __name__ == "__main__":
    main()
