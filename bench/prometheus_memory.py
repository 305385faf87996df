"""The prometheus sink's memory over a long run (a benchmark, not a test; host).

A long stream of batches goes through the live pipeline into ``--sink prometheus``,
as ``tracekit run`` feeds it: batches, the in-kernel counters once per batch, a lost
report now and then. Every event of the stream belongs to a new flow every
``--flow-every`` events (new source address and port): the worst case for a label
per flow. ``/metrics`` is scraped over HTTP every ``--scrape-every`` batches (the
exporter path: collect, format, serve), and the process's RSS is read after each
scrape.

Side by side, each in a fresh interpreter, on the same stream: the default
(bounded labels) and ``labels=all`` (a label per flow, documented as for a short
run on a test bed), for rss-cpu (count histograms) and fq-throttle (a log2
histogram beside a per-flow count). Bounded, RSS and the served series must stay
flat; ``labels=all`` shows what the bound saves, on the stream's first
``--all-batches`` only (its growth is linear: the rest would only take long).

    .venv/bin/python bench/prometheus_memory.py [--batches 2000] [--batch 4096]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tracekit.base.session import LostReport, Session
from tracekit.plugin.bus import build_bus
from tracekit.plugin.pipeline import Pipeline, SinkOptions, build_sinks
from tracekit.testing import synthetic_rows

NCPUS = 4


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> tuple[int, int]:
    """(samples, bytes) of one /metrics scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as resp:
        body = resp.read()
    samples = sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#"))
    return samples, len(body)


def one(probe: str, labels: str, batches: int, size: int, flow_every: int, every: int) -> None:
    """Run one variant in this process; print its samples as one JSON line."""
    bus = build_bus(load_entry_points=False)
    schema = bus.probes.get(probe).schema
    session = Session(probe=probe, schema=schema, params={}, ncpus=NCPUS)
    port = free_port()
    arg = f"prometheus=127.0.0.1:{port}" + (",labels=all" if labels == "all" else "")
    sinks = build_sinks(bus, (arg,), SinkOptions(), schema).objects
    base = synthetic_rows(schema, size, seed=1)
    # A new flow (source address and port) every flow_every events.
    si, pi = schema.index("saddr"), schema.index("sport")
    cpu = schema.index("cpu")
    base = [(*r[:cpu], j % NCPUS, *r[cpu + 1 :]) for j, r in enumerate(base)]
    counter_map = "rss_counts" if probe == "rss-cpu" else "fq_counts"
    samples: list[dict[str, float]] = []
    busy = 0.0  # seconds in the sink (delivering batches), not making rows
    with Pipeline(bus, session, sinks) as pipe:
        for b in range(batches):
            first = b * size
            rows = [
                (*r[:si], k, *r[si + 1 : pi], k % 65536, *r[pi + 1 :])
                for k, r in (((first + j) // flow_every, r) for j, r in enumerate(base))
            ]
            t = time.perf_counter()
            pipe.batch(rows)
            busy += time.perf_counter() - t
            pipe.counters({counter_map: {"x": {c: first + size for c in range(NCPUS)}}})
            if b % 50 == 0:
                pipe.lost(LostReport("ringbuf", {b % NCPUS: 3}))
            if (b + 1) % every == 0:
                n, nbytes = scrape(port)
                samples.append(
                    {
                        "events": (b + 1) * size,
                        "rss_mb": rss_mb(),
                        "samples": n,
                        "bytes": nbytes,
                        "s": busy,
                    }
                )
        pipe.end()
    print(json.dumps(samples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=4096, help="events per batch")
    ap.add_argument("--flow-every", type=int, default=256, help="events per flow")
    ap.add_argument("--scrape-every", type=int, default=100, help="batches between scrapes")
    ap.add_argument("--all-batches", type=int, default=300, help="batches for labels=all")
    ap.add_argument("--probes", default="rss-cpu,fq-throttle")
    ap.add_argument("--one", nargs=2, metavar=("PROBE", "LABELS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        one(a.one[0], a.one[1], a.batches, a.batch, a.flow_every, a.scrape_every)
        return
    total = a.batches * a.batch
    print(
        f"{total / 1e6:.1f} M events in {a.batches} batches of {a.batch}, a new flow every "
        f"{a.flow_every} events ({total // a.flow_every} flows), /metrics scraped every "
        f"{a.scrape_every} batches (labels=all: the first {a.all_batches} batches, scraped "
        f"10 times); RSS after the first scrape, after half, at the end\n"
    )
    print(
        "| probe | labels | events | RSS first | RSS half | RSS end | growth, 2nd half | "
        "samples served first -> end | last scrape | events/s in the sink |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for probe in a.probes.split(","):
        for labels in ("bounded", "all"):
            n = a.batches if labels == "bounded" else min(a.batches, a.all_batches)
            every = a.scrape_every if labels == "bounded" else max(1, n // 10)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    probe,
                    labels,
                    *("--batches", str(n), "--batch", str(a.batch)),
                    *("--flow-every", str(a.flow_every), "--scrape-every", str(every)),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            s: list[dict[str, Any]] = json.loads(out.splitlines()[-1])
            first, half, last = s[0], s[len(s) // 2], s[-1]
            print(
                f"| {probe} | {labels} | {last['events'] / 1e6:.1f} M | "
                f"{first['rss_mb']:.1f} MB | {half['rss_mb']:.1f} MB | "
                f"{last['rss_mb']:.1f} MB | {last['rss_mb'] - half['rss_mb']:+.1f} MB | "
                f"{first['samples']} -> {last['samples']} | {last['bytes'] / 1e3:.0f} kB | "
                f"{last['events'] / last['s'] / 1e3:.0f} k |",
                flush=True,
            )


if __name__ == "__main__":
    main()
