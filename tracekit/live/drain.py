"""The drain loop of a live run: poll the loaded probe's buffer until told to stop.

One poll returns everything the buffer holds as one batch (no Python step per
event); losses are checked, and live counters read, about once a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tracekit.base.session import EventBatch, LostReport
from tracekit.bpf.probe_base import LoadedProbe

POLL_MS = 100


def drain_for(
    probe: LoadedProbe,
    on_batch: Callable[[list[tuple[Any, ...]] | EventBatch], None],
    on_lost: Callable[[LostReport], None],
    duration: float | None,
    until: Callable[[], bool] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> bool:
    """Poll until ``duration`` passes, ``until()`` is true or a stop signal
    (KeyboardInterrupt, tracekit.live.signals); True if interrupted.

    ``on_tick`` is called about once a second, with the loss check (live counters).
    """
    deadline = None if duration is None else time.monotonic() + duration
    last_loss_check = time.monotonic()
    try:
        while True:
            timeout = POLL_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                timeout = max(1, min(POLL_MS, int(left * 1000)))
            on_batch(probe.poll(timeout))
            now = time.monotonic()
            if now - last_loss_check >= 1.0:
                last_loss_check = now
                for r in probe.new_losses():
                    on_lost(r)
                if on_tick is not None:
                    on_tick()
            if until is not None and until():
                return False
    except KeyboardInterrupt:
        return True
