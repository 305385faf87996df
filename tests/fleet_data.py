"""Traces shaped like each built-in probe's real events, for the fleet commands' tests.

Synthetic, but with the structure a lab run has (a socket flipping between two CPUs'
XPS queues, receive load moving from one CPU to all, throttling that comes and
goes), so a plot has something to show and a count has something to check. Each is
recorded through the same pipeline as a live run (``tracekit.testing.feed`` with the
``msgpack`` and ``hist`` sinks), so the hist output returned is what a live run with
both sinks would have printed.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
from pathlib import Path
from typing import Any

from tracekit.base.schema import Schema
from tracekit.base.session import LostReport, Session
from tracekit.plugin.bus import Bus
from tracekit.testing import feed

T0 = 1_000_000_000_000  # ns: a monotonic clock some 17 minutes after boot
SEC = 1_000_000_000


def ip(a: int, b: int, c: int, d: int) -> int:
    """An IPv4 address as the probes store it: network order read as a little-endian u32."""
    return int.from_bytes(bytes((a, b, c, d)), "little")


CLIENT, SERVER = ip(10, 0, 0, 1), ip(10, 0, 0, 2)


def _row(schema: Schema, **values: Any) -> tuple[Any, ...]:
    return tuple(values.get(f.name, "" if f.is_str else 0) for f in schema.fields)


def txq_flip_rows(schema: Schema, seconds: float = 10.0) -> list[tuple[Any, ...]]:
    """Three sockets: the iperf3 data socket flips between queue 0 (moved by the sender
    on cpu0) and queue 1 (moved back by cpu1 processing ACKs), another flips rarely."""
    rng = random.Random(17)
    rows = []
    socks = (
        (0xFFFF8880_0A1B_2C00, 41234, 0.25),
        (0xFFFF8880_0A1B_3D00, 41236, 1.5),
        (0xFFFF8880_0A1B_4E00, 22, 4.0),
    )
    for sk, sport, gap in socks:
        t, q = rng.uniform(0, 0.1), 0xFFFF
        while t < seconds:
            after = 0 if q != 0 else 1
            cpu = after  # XPS: cpu n maps to queue n
            rows.append(
                _row(
                    schema,
                    ts_ns=T0 + int(t * SEC),
                    sk=sk,
                    cpu=cpu,
                    pid=4242 if cpu == 0 else 0,
                    ifindex=5,
                    saddr=CLIENT,
                    daddr=SERVER,
                    sport=sport,
                    dport=5201,
                    family=2,
                    queue_before=q,
                    queue_after=after,
                    ooo_okay=1 if rng.random() < 0.9 else 0,
                    ifname="tk0",
                    comm="iperf3" if cpu == 0 else "swapper/1",
                )
            )
            q = after
            t += rng.expovariate(1 / gap)
    return sorted(rows)


def rss_cpu_rows(schema: Schema, seconds: float = 10.0, rate: int = 4000) -> list[tuple[Any, ...]]:
    """Four UDP flows to 4 CPUs: the first half all land on cpu0 (RSS hashing addresses
    only), the second half spread one flow a CPU (ports hashed too)."""
    rng = random.Random(3)
    rows = []
    n = int(seconds * rate)
    for i in range(n):
        t = i / rate
        flow = rng.randrange(4)
        cpu = 0 if t < seconds / 2 else flow
        rows.append(
            _row(
                schema,
                ts_ns=T0 + int(t * SEC),
                cpu=cpu,
                ifindex=2,
                hash=0x9E3779B9 ^ flow,
                saddr=CLIENT,
                daddr=SERVER,
                len=1200,
                sport=40000 + flow,
                dport=9000,
                rx_queue=cpu,
                proto=17,
                l4_hash=int(t >= seconds / 2),
                ifname="ens4",
            )
        )
    return rows


def fq_throttle_rows(schema: Schema, seconds: float = 10.0) -> list[tuple[Any, ...]]:
    """Throttling on two queues while a rate limit holds (2-7 s); flow_limit drops for
    two flows (3-6 s); empty dequeues while everything is throttled."""
    from tracekit.probes.fq_throttle import KINDS

    rng = random.Random(5)
    rows = []
    t = 0.0
    while t < seconds:
        t += rng.expovariate(400)
        limited = 2 <= t < 7
        queue = rng.randrange(2)
        common = {"ts_ns": T0 + int(t * SEC), "cpu": queue, "ifindex": 5, "queue": queue}
        common |= {"ifname": "tk0", "qlen": rng.randrange(50, 400)}
        if limited and rng.random() < 0.6:
            rows.append(
                _row(
                    schema,
                    **common,
                    kind=KINDS.index("throttle"),
                    count=rng.randrange(1, 4),
                    delay_us=rng.randrange(50, 4000),
                )
            )
        elif limited and rng.random() < 0.3:
            rows.append(_row(schema, **common, kind=KINDS.index("empty_dequeue"), count=1))
        if 3 <= t < 6 and rng.random() < 0.3:
            sport = rng.choice((41000, 41002))
            rows.append(
                _row(
                    schema,
                    **common,
                    kind=KINDS.index("flow_limit_drop"),
                    count=1,
                    sk=0xFFFF8880_1000_0000 + sport,
                    saddr=CLIENT,
                    daddr=SERVER,
                    sport=sport,
                    dport=5201,
                )
            )
    return rows


def ooo_okay_rows(schema: Schema, seconds: float = 10.0, rate: int = 3000) -> list[tuple[Any, ...]]:
    """Every TCP skb (recorded with all=1): ooo_okay on a fifth of them at first, more
    once the rate limit (from 5 s) leaves the socket's queue empty between sends."""
    from tracekit.probes.ooo_okay import PATHS, RULES

    rng = random.Random(9)
    rows = []
    for i in range(int(seconds * rate)):
        t = i / rate
        share = 0.2 if t < 5 else 0.6
        ooo = rng.random() < share
        wmem_low = ooo and rng.random() < 0.8
        path = rng.choice(("sendmsg", "ack-softirq", "ack-softirq", "ack-backlog"))
        rows.append(
            _row(
                schema,
                ts_ns=T0 + int(t * SEC),
                sk=0xFFFF8880_2000_0000,
                cpu=0 if path == "sendmsg" else 1,
                saddr=CLIENT,
                daddr=SERVER,
                sport=41234,
                dport=5201,
                wmem=100 if wmem_low else 90_000,
                threshold=577,
                stack_id=PATHS.index(path),
                ooo_okay=int(ooo),
                wmem_low=int(wmem_low),
                rtx_empty=int(ooo and not wmem_low),
                path=PATHS.index(path),
                rule=RULES.index("tcp_wmem_rtx"),
                comm="iperf3",
            )
        )
    return rows


GENERATORS = {
    "txq-flip": (txq_flip_rows, {"ifindex": 0}),
    "rss-cpu": (rss_cpu_rows, {"ifindex": 0}),
    "fq-throttle": (fq_throttle_rows, {}),
    "ooo-okay": (ooo_okay_rows, {"all": 1}),
}


def counters_for(probe: str, rows: list[tuple[Any, ...]], schema: Schema) -> dict[str, Any]:
    """In-kernel counters consistent with the events (what the kernel would have counted)."""
    if probe == "txq-flip":
        return {"txq_counts": {"calls": {0: 50_000, 1: 900}, "changes": {0: len(rows), 1: 0}}}
    if probe == "rss-cpu":
        ci = schema.index("cpu")
        per: dict[int, int] = {}
        for r in rows:
            per[r[ci]] = per.get(r[ci], 0) + 1
        return {"rss_counts": {"packets": per, "ipv4": dict(per)}}
    if probe == "ooo-okay":
        oi = schema.index("ooo_okay")
        return {
            "ooo_counts": {
                "transmitted": {0: len(rows)},
                "ooo_okay": {0: sum(r[oi] for r in rows)},
            }
        }
    ki, ni = schema.index("kind"), schema.index("count")
    tot = [0, 0, 0, 0]
    for r in rows:
        tot[r[ki]] += r[ni]
    return {
        "fq_counts": {
            "throttled": {0: tot[1]},
            "flow_limit_drops": {0: tot[2]},
            "empty_dequeues": {0: tot[3]},
        }
    }


def record(
    bus: Bus | None,
    probe: str,
    path: Path,
    hostname: str = "lab-a",
    schema: Schema | None = None,
    start_time: float = 1_760_000_000.0,
    extra_sinks: tuple[str, ...] = (),
) -> str:
    """Record a trace of ``probe`` at ``path``; returns what the hist sink printed."""
    from tracekit.plugin.bus import build_bus

    bus = bus or build_bus()
    spec = bus.probes.get(probe)
    gen, params = GENERATORS[probe]
    rows = gen(spec.schema)
    session = Session(
        probe=probe,
        schema=spec.schema,
        params=dict(params),
        kernel="6.1.0-lab",
        ncpus=4,
        hostname=hostname,
        start_time=start_time,
    )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        feed(
            bus,
            session,
            ["hist", f"msgpack={path}", *extra_sinks],
            [rows[i : i + 4096] for i in range(0, len(rows), 4096)],
            lost=[LostReport("perf", {1: 7}), LostReport("ringbuf", {0: 2})],
            counters=counters_for(probe, rows, spec.schema),
            force=True,
        )
    return buf.getvalue()


def hist_counts(text: str) -> dict[tuple[str, str], dict[str, int]]:
    """The hist sink's output as {(histogram, key): {bucket: count}} ("" bucket: a count)."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in text.splitlines():
        m = re.match(r"^@([\w.]+)(\[[^\]]*\])?(?: \([^)]*\))?:\s*(\d+)?$", line)
        if m:
            current = out.setdefault((m[1], m[2] or ""), {})
            if m[3] is not None:
                current[""] = int(m[3])
            continue
        m = re.match(r"^(\[.*?[\])])\s+(\d+) \|", line)
        if m and current is not None:
            current[m[1]] = int(m[2])
    return out


def key_values(key: str) -> dict[str, str]:
    """A hist key as printed, ``[cpu=0, queue_before=1]``, as {field: value}."""
    parts = [p.partition("=") for p in key[1:-1].split(", ")] if key else []
    return {name: value for name, _, value in parts}
