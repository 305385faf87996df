"""Progress of a long read on a terminal: replay, export and plot of a large trace.

Shown on stderr only when it is a terminal and the file is large (``LARGE``), at
most a few times a second, one line rewritten in place and cleared at the end;
otherwise (a pipe, a log, a small file) nothing is written at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tracekit.base.text import printable

# Files below this many bytes read in about a second: no progress line.
LARGE = 64 << 20
_EVERY = 0.25  # seconds between updates


class Progress:
    """``update(done)`` as bytes of ``total`` are read; ``close()`` clears the line."""

    def __init__(
        self,
        what: str,
        total: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        large: int | None = None,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.what = printable(what)
        self.total = max(total, 1)
        self.clock = clock
        isatty = getattr(self.stream, "isatty", None)
        self.on = total >= (LARGE if large is None else large) and bool(isatty and isatty())
        self._next = clock() + _EVERY
        self._shown = False

    def update(self, done: int) -> None:
        if not self.on:
            return
        now = self.clock()
        if now < self._next:
            return
        self._next = now + _EVERY
        pct = min(100.0, 100.0 * done / self.total)
        self.stream.write(
            f"\r\x1b[Ktracekit: {self.what}: {pct:5.1f}% of {self.total / 1e6:,.0f} MB"
        )
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
