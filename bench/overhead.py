"""Tracing overhead and start-up, side by side in one VM boot (a benchmark, not a test).

1. Traced work: iperf3 throughput in the txq-flip lab with no tracing, with tracekit
   txq-flip (hist), and with the seed's bpftrace script; rounds interleaved.
2. Cost per probe hit: getppid() in a tight loop, nanoseconds per call with no
   tracing, tracekit counting in the kernel (hist mode) beside bpftrace count() and
   hist(), and tracekit recording events beside bpftrace printf of the same fields.
3. Start-up: seconds from launching `tracekit run` to its first event, beside
   bpftrace's time to its first output, with the driver already running.

    vm/run -- python bench/overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe import SPEC

from tracekit.lab.netns import NetnsLab
from tracekit.lab.txq_flip import lab_txq_flip
from tracekit.live.run import RunOptions, compile_probe, run_probe
from tracekit.plugin.bus import build_bus

SEED_BT = """
kprobe:netdev_pick_tx {
    $skb = (struct sk_buff *) arg1;
    @before[cpu] = $skb->sk->__sk_common.skc_tx_queue_mapping;
}
kretprobe:netdev_pick_tx {
    if (@before[cpu] != retval) { @flips[cpu, @before[cpu]] = lhist(retval, 0, 16, 1); }
}
END { clear(@before); }
"""

LOOP = (
    "import os, time\nn = {n}\nt = time.perf_counter()\nfor _ in range(n):\n"
    "    os.getppid()\nprint((time.perf_counter() - t) / n * 1e9)\n"
)


def bpftrace(script: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        ["bpftrace", "-e", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert p.stdout is not None
    # bpftrace 0.17 to 0.23 print "Attaching N probes..." just before the probes are live,
    # 0.27 "Attached N probes" just after; the sleep covers the difference.
    for line in p.stdout:
        if line.startswith(("Attaching", "Attached")):
            break
    time.sleep(1.0)
    return p


def stop(p: subprocess.Popen[str]) -> None:
    p.send_signal(2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.communicate(timeout=60)


def ns_per_call(n: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-c", LOOP.format(n=n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out)


def med(xs: list[float]) -> str:
    m = statistics.median(xs)
    return f"{m:10.1f}  (spread {(max(xs) - min(xs)) / m:4.0%})" if m else f"{m:10.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--calls", type=int, default=200_000)
    a = ap.parse_args()
    bus = build_bus(load_entry_points=False)
    quiet = contextlib.redirect_stdout(io.StringIO())

    # 1. iperf3 throughput under tracing ---------------------------------------------
    txq = bus.probes.get("txq-flip")
    txq_c = compile_probe(txq, txq.resolve_params({}), RunOptions(quiet=True))
    iperf: dict[str, list[float]] = {
        "no tracing": [],
        "tracekit txq-flip": [],
        "bpftrace seed script": [],
    }
    for _ in range(a.rounds):
        with NetnsLab(txqueues=4, qdisc="fq") as lab:
            lab.start_server(1)
            c = lab.start_client(0, a.seconds)
            from tracekit.lab.netns import parse_iperf

            iperf["no tracing"].append(parse_iperf(c.communicate()[0]).mbit)
        with quiet:
            r = lab_txq_flip(bus, ("hist",), a.seconds, compiled=txq_c, quiet=True)
        iperf["tracekit txq-flip"].append(r.iperf_mbit)
        bt = bpftrace(SEED_BT)
        with NetnsLab(txqueues=4, qdisc="fq") as lab:
            lab.start_server(1)
            c = lab.start_client(0, a.seconds)
            iperf["bpftrace seed script"].append(parse_iperf(c.communicate()[0]).mbit)
        stop(bt)
    txq_c.probe.close()

    # 2. cost per hit -----------------------------------------------------------------
    agg_c = compile_probe(SPEC, {}, RunOptions(quiet=True), stream=False)
    rec_c = compile_probe(SPEC, {}, RunOptions(quiet=True), stream=True)
    per: dict[str, list[float]] = {
        k: []
        for k in (
            "no tracing",
            "tracekit counting (hist mode)",
            "bpftrace count()",
            "bpftrace hist()",
            "tracekit recording (msgpack)",
            "bpftrace printf",
        )
    }

    def under_tracekit(compiled: object, sinks: tuple[str, ...]) -> float:
        got: list[float] = []
        with quiet:
            run_probe(
                bus,
                SPEC,
                None,
                sinks,
                RunOptions(duration=600, force=True, quiet=True),
                compiled=compiled,  # type: ignore[arg-type]
                on_attached=lambda: got.append(ns_per_call(a.calls)),
                until=lambda: bool(got),
            )
        return got[0]

    def under_bpftrace(script: str) -> float:
        p = bpftrace(script)
        try:
            return ns_per_call(a.calls)
        finally:
            stop(p)

    tp = "tracepoint:syscalls:sys_enter_getppid"
    cases: dict[str, Callable[[], float]] = {
        "no tracing": lambda: ns_per_call(a.calls),
        "tracekit counting (hist mode)": lambda: under_tracekit(agg_c, ("hist",)),
        "bpftrace count()": lambda: under_bpftrace(tp + " { @[cpu] = count(); }"),
        "bpftrace hist()": lambda: under_bpftrace(tp + " { @ = hist(nsecs & 1023); }"),
        "tracekit recording (msgpack)": lambda: under_tracekit(
            rec_c, (f"msgpack={tempfile.mktemp(suffix='.tkt')}",)
        ),
        "bpftrace printf": lambda: under_bpftrace(
            tp + ' { printf("%llu %u %u\\n", nsecs, cpu, pid); }'
        ),
    }
    for _ in range(a.rounds):
        for name, fn in cases.items():
            per[name].append(fn())

    # 3. start-up: the real CLI, a built-in probe, traffic already flowing ---------
    udp = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "while True: s.sendto(b'x', ('127.0.0.1', 9))"
    )
    driver = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", udp])
    try:
        t = time.monotonic()
        p = subprocess.Popen(
            [sys.executable, "-m", "tracekit", "run", "rss-cpu", "--sink", "console"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert p.stdout is not None
        p.stdout.readline()  # the header, printed when the session starts
        p.stdout.readline()  # the first event
        tk_start = time.monotonic() - t
        stop(p)
        t = time.monotonic()
        bt = subprocess.Popen(
            [
                "bpftrace",
                "-e",
                'tracepoint:net:netif_receive_skb { printf("%d\\n", cpu); exit(); }',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        bt.communicate(timeout=600)
        bt_start = time.monotonic() - t
    finally:
        driver.kill()

    print(
        f"== iperf3 throughput in the txq-flip lab, Mbit/s, {a.rounds} rounds of {a.seconds:.0f}s"
    )
    base = statistics.median(iperf["no tracing"])
    for k, v in iperf.items():
        print(f"{k:<32}{med(v)}  {statistics.median(v) / base:6.2f}x of untraced")
    print(f"\n== getppid(): ns per call, {a.calls} calls, {a.rounds} rounds")
    base = statistics.median(per["no tracing"])
    for k, v in per.items():
        print(f"{k:<32}{med(v)}  added {statistics.median(v) - base:8.1f} ns")
    added = {k: statistics.median(v) - base for k, v in per.items()}
    print(
        f"ratio tracekit counting / bpftrace count(): "
        f"{added['tracekit counting (hist mode)'] / added['bpftrace count()']:.2f}"
    )
    print(
        f"ratio tracekit counting / bpftrace hist():  "
        f"{added['tracekit counting (hist mode)'] / added['bpftrace hist()']:.2f}"
    )
    print(
        f"ratio tracekit recording / bpftrace printf: "
        f"{added['tracekit recording (msgpack)'] / added['bpftrace printf']:.2f}"
    )
    print("\n== start-up to the first event, seconds (imports and compile included)")
    print(f"tracekit run rss-cpu --sink console: {tk_start:8.1f}")
    print(f"bpftrace netif_receive_skb printf:   {bt_start:8.1f}")
    print(f"ratio: {tk_start / bt_start:.2f}")
    os.sync()


if __name__ == "__main__":
    main()
