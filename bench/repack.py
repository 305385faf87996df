"""What dropping a C struct's padding costs the CO-RE drain (issue #16).

The CO-RE loader copies each run of ring buffer records out in one numpy step. When
the probe's struct tk_event has padding members or holes, the fields alone are
repacked instead (``Schema.kernel_dtype`` -> ``Schema.dtype``). Side by side, on
the same bytes: txq-flip's struct as the C declares it (its `pad` byte dropped, the
path today) and the same struct with `pad` kept as a field (the copy path, as
before), and numpy's structured astype for the record. Host only, no kernel: the
runs are built in memory as the kernel writes them.

    .venv/bin/python bench/repack.py --events 8192 --rounds 200
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
import types
from typing import Any

from tracekit.base.schema import Field, Schema
from tracekit.base.session import EventBatch
from tracekit.bpf.core import CoreProbe
from tracekit.bpf.ringbuf import HEADER
from tracekit.probes.txq_flip import SCHEMA


def with_pad_as_field() -> Schema:
    """txq-flip's schema as it was before #16: the C's `pad` a u8 field."""
    fields = list(SCHEMA.fields)
    fields.insert(SCHEMA.index("ooo_okay") + 1, Field("pad", "u8"))
    return Schema(tuple(fields))


def astype_decoder() -> Any:
    import numpy as np

    kernel = SCHEMA.kernel_dtype
    stride = (HEADER + SCHEMA.kernel_size + 7) & ~7
    ring = np.dtype(
        {
            "names": list(kernel.names),
            "formats": [kernel[i] for i in range(len(kernel.names))],
            "offsets": [HEADER + kernel.fields[n][1] for n in kernel.names],
            "itemsize": stride,
        }
    )

    def decode(run: memoryview, n: int) -> EventBatch:
        events = np.frombuffer(run, dtype=ring, count=n)
        return EventBatch("txq-flip", schema=SCHEMA, array=events.astype(SCHEMA.dtype))

    return decode


def ring_run(n: int) -> bytes:
    size = SCHEMA.kernel_size
    stride = (HEADER + size + 7) & ~7
    rec = struct.pack(
        SCHEMA.kernel_struct_format,
        *[b"tk0" if f.is_str else 1 for f in SCHEMA.fields],
    )
    one = struct.pack("=II", size, 0) + rec + bytes(stride - HEADER - size)
    return one * n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=8192, help="records per run")
    ap.add_argument("--rounds", type=int, default=200)
    a = ap.parse_args()
    run = memoryview(ring_run(a.events))
    fake = types.SimpleNamespace(spec=types.SimpleNamespace(name="txq-flip"))
    cases = {
        "pad kept as a field (copy)": with_pad_as_field(),
        "pad dropped (repack)": SCHEMA,
    }
    decoders = {k: CoreProbe._make_decoder(fake, s) for k, s in cases.items()}  # type: ignore[arg-type]
    # The obvious alternative, for the record: numpy's structured astype.
    cases["pad dropped (numpy astype)"] = SCHEMA
    decoders["pad dropped (numpy astype)"] = astype_decoder()
    for k, d in decoders.items():
        b = d(run, a.events)
        assert len(b) == a.events and len(b.rows[0]) == len(cases[k].fields), k
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(a.rounds):  # interleaved: the machine's noise hits both alike
        for k, d in decoders.items():
            t = time.perf_counter()
            d(run, a.events)
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["pad kept as a field (copy)"])
    print(f"{a.events} records of {SCHEMA.kernel_size} bytes per run, {a.rounds} rounds")
    print(f"{'case':32} {'ns/event (median)':>18} {'vs copy':>8}")
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"{k:32} {m / a.events * 1e9:18.1f} {m / base:7.2f}x")


if __name__ == "__main__":
    main()
