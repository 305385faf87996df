"""Pipeline throughput, side by side in one VM boot (a benchmark, not a test).

A driver process calls getppid() in a tight loop on CPU 1 for a fixed time; a
tracepoint emits one event per call. Consumers, each in turn, on CPU 0:

  * bare BCC: perf buffer, a Python callback that does nothing (BCC's defaults,
    one wakeup per event)
  * tracekit, perf buffer, into the msgpack sink (a trace file)
  * tracekit, ring buffer, into the msgpack sink

For each: calls made, events delivered, events lost, delivered per second, and the
ratio to bare BCC. Run inside the VM:

    vm/run -- python bench/pipeline.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes as ct
import io
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe import HERE, SPEC

from tracekit.live.run import RunOptions, compile_probe, run_probe
from tracekit.plugin.bus import build_bus

DRIVER = (
    "import os, time\nend = time.monotonic() + {s}\nn = 0\n"
    "while time.monotonic() < end:\n    for _ in range(1000):\n        os.getppid()\n"
    "    n += 1000\nprint(n)\n"
)


def drive(seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-c", DRIVER.format(s=seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def bare(seconds: float) -> tuple[int, int, int]:
    import bcc

    b = bcc.BPF(src_file=str(HERE / "bare.bpf.c").encode())
    b.attach_tracepoint(tp=b"syscalls:sys_enter_getppid", fn_name=b"bare_bench")
    got, lost = [0], [0]

    def cb(cpu: int, data: ct.c_void_p, size: int) -> None:
        got[0] += 1

    def lost_cb(n: int) -> None:
        lost[0] += n

    b["bare_events"].open_perf_buffer(cb, page_cnt=64, lost_cb=lost_cb)
    d = drive(seconds)
    while d.poll() is None:
        b.perf_buffer_poll(100)
    b.perf_buffer_poll(0)
    calls = int(d.communicate()[0])
    b.cleanup()
    return calls, got[0], lost[0]


def tracekit_run(seconds: float, output: str, compiled: object, out: Path) -> tuple[int, int, int]:
    bus = build_bus(load_entry_points=False)
    d: list[subprocess.Popen[str]] = []
    with contextlib.redirect_stdout(io.StringIO()):
        s = run_probe(
            bus,
            SPEC,
            None,
            (f"msgpack={out}",),
            RunOptions(duration=seconds + 60, output=output, force=True, quiet=True),
            compiled=compiled,  # type: ignore[arg-type]
            on_attached=lambda: d.append(drive(seconds)),
            until=lambda: bool(d) and d[0].poll() is not None,
        )
    calls = int(d[0].communicate()[0])
    return calls, s.events, s.lost_total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    os.sched_setaffinity(0, {0})
    compiled = {
        o: compile_probe(SPEC, {}, RunOptions(output=o, quiet=True)) for o in ("perf", "ringbuf")
    }
    results: dict[str, list[tuple[int, int, int]]] = {
        "bare BCC (perf, no-op callback)": [],
        "tracekit perf -> msgpack": [],
        "tracekit ringbuf -> msgpack": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):  # interleaved rounds: noise hits every case alike
            results["bare BCC (perf, no-op callback)"].append(bare(a.seconds))
            for o in ("perf", "ringbuf"):
                results[f"tracekit {o} -> msgpack"].append(
                    tracekit_run(a.seconds, o, compiled[o], Path(tmp) / f"{o}.tkt")
                )
    base = statistics.median(r[1] for r in results["bare BCC (perf, no-op callback)"]) / a.seconds
    print(f"{a.rounds} rounds of {a.seconds:.0f}s, driver on CPU 1, consumer on CPU 0")
    print(
        f"{'consumer':<34}{'calls':>10}{'delivered':>11}{'lost':>10}{'delivered/s':>13}"
        f"{'vs bare':>9}"
    )
    for name, rs in results.items():
        calls, got, lost = (statistics.median(x[i] for x in rs) for i in range(3))
        rate = got / a.seconds
        print(
            f"{name:<34}{calls:>10.0f}{got:>11.0f}{lost:>10.0f}{rate:>13,.0f}{rate / base:>8.2f}x"
        )
    for c in compiled.values():
        c.probe.close()


if __name__ == "__main__":
    main()
