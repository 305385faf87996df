"""Kernel records (the C struct's layout) to packed batches, a run at a time.

Both loaders drain their buffers into runs of records exactly as the program wrote
them: ``struct tk_event`` with whatever padding and holes the C has. Rows and traces
hold the fields only (tracekit/base/schema.py), so a struct that is not packed loses its
padding here, in one numpy copy per stretch of fields for the whole run.
"""

from __future__ import annotations

import struct
from typing import Any

from tracekit.base.schema import Schema
from tracekit.base.session import EventBatch, decode_strings
from tracekit.bpf.ringbuf import HEADER


def rows_from_records(schema: Schema, data: bytes) -> list[tuple[Any, ...]]:
    """Kernel records packed back to back (the C struct's layout) as rows, with
    ``struct`` instead of numpy: the same rows ``record_decoder``'s batch gives, for
    the first events of a run while numpy is still being imported."""
    rows = list(struct.iter_unpack(schema.kernel_struct_format, data))
    strs = [i for i, f in enumerate(schema.fields) if f.is_str]
    if not rows or not strs:
        return rows
    cols: list[Any] = list(zip(*rows, strict=True))
    for i in strs:
        cols[i] = decode_strings(list(cols[i]))
    return list(zip(*cols, strict=True))


def record_decoder(
    probe: str, schema: Schema, header: int = HEADER, stride: int | None = None
) -> Any:
    """``decode(run, n)``: an EventBatch of the ``n`` records in ``run`` (each
    behind a ``header``-byte header, ``stride`` apart: by default as a ring buffer
    lays them out), copied in one numpy operation: no Python step per event.
    Padding and holes of the C struct are dropped on the way."""
    import numpy as np

    size = schema.kernel_size
    if stride is None:
        stride = (header + size + 7) & ~7
    dtype = schema.dtype
    if not schema.kernel_packed:
        # The C struct has padding or holes: each stretch of fields that lies back
        # to back in both layouts is copied as one opaque item, for all records at
        # once (a struct with one `pad` member is two stretches). numpy's
        # structured astype would go field by field, 10x slower (bench/repack.py).
        stretches: list[list[int]] = []  # [offset in the ring, in the row, length]
        packed = schema.offsets()
        for f, off in zip(schema.fields, schema.kernel_offsets(), strict=True):
            k, p = header + off, packed[f.name]
            last = stretches[-1] if stretches else None
            if last and last[0] + last[2] == k and last[1] + last[2] == p:
                last[2] += f.size
            else:
                stretches.append([k, p, f.size])
        names = [f"s{i}" for i in range(len(stretches))]
        formats = [f"V{length}" for _, _, length in stretches]
        ring_side = np.dtype(
            {
                "names": names,
                "formats": formats,
                "offsets": [k for k, _, _ in stretches],
                "itemsize": stride,
            }
        )
        row_side = np.dtype(
            {
                "names": names,
                "formats": formats,
                "offsets": [p for _, p, _ in stretches],
                "itemsize": schema.size,
            }
        )

        def repack(run: memoryview, n: int) -> EventBatch:
            src = np.frombuffer(run, dtype=ring_side, count=n)
            out = np.empty(n, dtype=row_side)
            for name in names:
                out[name] = src[name]
            return EventBatch(probe, schema=schema, array=out.view(dtype))

        return repack
    ring = np.dtype(
        {"names": ["ev"], "formats": [f"V{size}"], "offsets": [header], "itemsize": stride}
    )

    def decode(run: memoryview, n: int) -> EventBatch:
        # Always a copy: the kernel reuses the ring once the consumer moves on, and
        # numpy would hand back a view where the field happens to be contiguous
        # (a run of one record).
        events = np.frombuffer(run, dtype=ring, count=n)["ev"]
        return EventBatch(probe, schema=schema, array=events.copy(order="C").view(dtype))

    return decode
