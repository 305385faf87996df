"""Stop signals of a live run: what ends it cleanly, and when a signal must wait.

SIGINT (Ctrl-C), SIGTERM, SIGHUP (the terminal closed) and SIGQUIT all end a run
the same way: the probe is detached, the last events drained, the summary printed
and the trace file's footer written. A signal arriving while the kernel is being
changed (attach, detach) waits until the step is done. ``exit_with_parent`` asks
the kernel for SIGTERM when the process that started tracekit dies
(``prctl(PR_SET_PDEATHSIG)``), for a run started by a supervisor that may be
killed: without it such a run, with no ``--duration``, would never end.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

# Every signal that ends a run like Ctrl-C.
STOP_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
)

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies (0: no
    longer). OSError when the kernel refuses."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class StopSignals:
    """Turn the stop signals into KeyboardInterrupt during a run, and defer them
    while cleaning up.

    A second Ctrl-C while probes are being detached must not cut the detach short.
    ``exit_with_parent``: SIGTERM when the parent process dies (checked once more
    right after asking, for a parent that died before).
    """

    def __init__(self, *, exit_with_parent: bool = False) -> None:
        self._old: dict[int, Any] = {}
        self.stopping = False
        self.holding = False
        self.received: int | None = None
        self.exit_with_parent = exit_with_parent
        self._parent = os.getppid()

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum
        if not self.stopping and not self.holding:
            self.stopping = True
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold a stop signal while the kernel is changed step by step (attaching).

        Raised between the loader's attach call and our record of it,
        KeyboardInterrupt would leave a point attached that nothing knows to detach.
        Held, the signal takes effect right after the block, when every attached
        point is on record.
        """
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.received is not None and not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def noted(self) -> Iterator[None]:
        """Hold a stop signal through a block and only note it (``received``): the
        caller ends the run normally, as interrupted. For the window between attach
        and the drain loop, where the user was told the probe is attached."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.stopping = True
        yield

    def __enter__(self) -> StopSignals:
        for s in STOP_SIGNALS:
            self._old[s] = signal.signal(s, self._handler)
        if self.exit_with_parent:
            set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != self._parent:
                # The parent died before the kernel was asked: nobody will send it.
                self.received = signal.SIGTERM
        return self

    def __exit__(self, *exc: object) -> None:
        if self.exit_with_parent:
            with contextlib.suppress(OSError):
                set_parent_death_signal(0)
        for s, h in self._old.items():
            signal.signal(s, h)
