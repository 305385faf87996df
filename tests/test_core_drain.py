"""The CO-RE loader's drain end to end on this machine's kernel, both outputs.

rss-cpu attaches to the raw tracepoint net:netif_receive_skb (no kprobes needed)
and counts every received packet in a per-CPU counter before it emits the event.
UDP to 127.0.0.1 makes packets; the kernel's counter is the oracle: every packet
is an event the loader delivered or a loss the kernel counted, on the ring buffer
and on the per-CPU perf buffers alike (tracekit.bpf.ringbuf, tracekit.bpf.perfbuf).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracekit.bpf.core_build as cb
from tracekit.base.errors import TracekitError
from tracekit.bpf.core import CoreProbe
from tracekit.plugin.bus import build_bus
from tracekit.plugin.registry import ProbeSpec


@pytest.fixture(scope="module")
def rss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProbeSpec, Path]]:
    if os.geteuid() != 0 or shutil.which("clang") is None:
        pytest.skip("needs root and clang")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("needs BTF")
    mp = pytest.MonkeyPatch()
    mp.setattr(cb, "CACHE_DIR", tmp_path_factory.mktemp("tk") / "core")
    spec = build_bus().probes.get("rss-cpu").resolved()
    try:
        yield spec, cb.build(spec)
    finally:
        mp.undo()


@pytest.mark.parametrize(
    ("output", "pages", "numpy_ready"),
    [("ringbuf", 64, True), ("ringbuf", 64, False), ("perf", 64, True), ("perf", 1, True)],
)
def test_every_packet_is_an_event_or_counted_lost(
    rss: tuple[ProbeSpec, Path], output: str, pages: int, numpy_ready: bool
) -> None:
    spec, path = rss
    probe = CoreProbe(spec, spec.resolve_params({}), path, output=output, page_cnt=pages)
    if numpy_ready:
        probe._numpy.wait()
    else:
        # As while numpy is still being imported: every poll decodes with struct.
        probe._numpy = threading.Event()
    try:
        probe.open_output()
        try:
            probe.attach()
        except TracekitError as exc:
            pytest.skip(f"cannot attach here: {exc}")
        events = 0
        kinds = set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3000):
                s.sendto(b"x", ("127.0.0.1", 9))
                if i % 100 == 99:
                    got = probe.poll(0)
                    kinds.add(type(got).__name__)
                    events += len(got)
        probe.detach()  # nothing counts or emits after this
        events += len(probe.poll(0))
        assert kinds == {"EventBatch" if numpy_ready else "list"}, kinds
        packets = sum(probe.read_counters()["rss_counts"]["packets"].values())
        lost = sum(r.total for r in probe.new_losses())
        assert packets >= 3000
        assert events + lost == packets, (events, lost, packets)
        if pages == 1:
            # 4 KiB per CPU overruns between polls; the perf rings said so too
            # (PERF_RECORD_LOST, written before the next sample that fitted).
            records = sum(probe.perf_records_lost.values())
            assert lost > 0 and 0 < records <= lost, (lost, probe.perf_records_lost)
        elif output == "ringbuf":
            assert lost == 0
    finally:
        probe.close()
