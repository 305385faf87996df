"""What both loaders share: a loaded probe's counters, losses and aggregate rows.

``LoadedProbe`` (BCC, compiled per run) and ``CoreProbe`` (a CO-RE object loaded by
libbpf) differ in how they reach the kernel; what they report from its maps is the
same, written once here.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable
from typing import Any

from tracekit.base.session import EventBatch, LostReport
from tracekit.plugin.registry import AttachPoint, ProbeSpec


def import_in_background(module: str) -> threading.Event:
    """Import ``module`` on a thread; the event is set once it is done (or failed:
    the next plain import raises the error where it is needed).

    The loaders start numpy this way just before their long C step (libbpf's load,
    BCC's compile), which releases the GIL: numpy takes seconds to import under
    emulation, and the first events need not wait for it (tracekit.bpf.core).
    """
    done = threading.Event()

    def run() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - raised again by the import that needs it
            pass
        finally:
            done.set()

    threading.Thread(target=run, name=f"import-{module}", daemon=True).start()
    return done


class KernelProbe:
    """The reporting half of a loaded probe; subclasses read the maps."""

    spec: ProbeSpec
    params: dict[str, int]
    output: str
    stream: bool
    aggregate: bool
    sample: int
    page_cnt: int
    attached: list[AttachPoint]
    _reported: dict[str, dict[int, int]]
    # BCC's BPF object (the BCC loader), for probes whose `enrich` reads its tables;
    # on the CO-RE path a stand-in answering the same calls (tracekit/bpf/core_stacks.py).
    bpf: Any

    # -- what each loader implements --------------------------------------------------

    def open_output(self) -> None:
        raise NotImplementedError

    def close_output(self) -> None:
        raise NotImplementedError

    def attach(self, points: list[AttachPoint] | None = None) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def poll(self, timeout_ms: int = 100) -> list[tuple[Any, ...]] | EventBatch:
        raise NotImplementedError

    def read_agg(self) -> list[tuple[tuple[Any, ...], int]]:
        raise NotImplementedError

    def read_percpu(self, name: str, slots: int) -> list[dict[int, int]]:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------

    def kretprobe_misses(self) -> int:
        return 0

    def read_counters(self) -> dict[str, dict[str, dict[int, int]]]:
        out: dict[str, dict[str, dict[int, int]]] = {}
        for cm in self.spec.counters:
            slots = self.read_percpu(cm.map, len(cm.labels))
            out[cm.map] = dict(zip(cm.labels, slots, strict=True))
        return out

    def new_losses(self) -> list[LostReport]:
        """Losses since the last call, one report per mechanism."""
        # Slot 0: outputs that failed (buffer full), counted in the kernel at the
        # failing call, for the perf buffer as for the ring buffer.
        buffer, rl = self.read_percpu("tk_lost", 2)
        current: dict[str, dict[int, int]] = {self.output: buffer, "ratelimit": rl}
        if any(a.kind == "kretprobe" for a in self.attached):
            current["kretprobe"] = {-1: self.kretprobe_misses()}
        reports = []
        for source, per in current.items():
            seen = self._reported.setdefault(source, {})
            delta = {c: n - seen.get(c, 0) for c, n in per.items() if n - seen.get(c, 0) > 0}
            if delta:
                reports.append(LostReport(source, delta))
                seen.update(per)
        return reports

    def agg_rows(
        self, pairs: Iterable[tuple[Iterable[Any], int]]
    ) -> list[tuple[tuple[Any, ...], int]]:
        """(key values in ``agg_fields`` order, count) -> (full row in schema order,
        zero-filled, count): the documented shape of an in-kernel aggregate."""
        schema = self.spec.schema
        blank = [("" if f.is_str else 0) for f in schema.fields]
        idx = [schema.index(n) for n in self.spec.agg_fields]
        out = []
        for values, n in pairs:
            row = list(blank)
            for i, v in zip(idx, values, strict=True):
                row[i] = v
            out.append((tuple(row), n))
        return out
