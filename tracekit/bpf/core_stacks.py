"""Kernel symbols for the CO-RE loader: /proc/kallsyms, read once.

``CoreProbe.kernel_symbol`` (one of the two primitives a ``ProbeContext`` is built
on, tracekit/bpf/probe_base.py) names addresses from this table; it is read on a
thread started before the object loads, for probes with an ``enrich``. Stacks are
read from the object's stack map by ``CoreProbe.map_lookup``, like any other map.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable

from tracekit.base import kernel


class KernelSymbols:
    """Address -> name of the function containing it, from /proc/kallsyms.

    The file has over 100,000 lines, and the first events of a probe with stacks wait
    for this table: parsing each line into a number and a name took seconds under
    emulation. The text-symbol lines are kept whole instead (one regular-expression
    pass, in C) and sorted as bytes: the kernel prints every address at one width,
    zero-padded, so byte order is address order, and a lookup formats the address
    the same way.
    """

    def __init__(self, text: bytes) -> None:
        width = text.find(b" ")
        self._width = width if width > 0 else 16
        pattern = rb"^[0-9a-f]{%d} [tT] [^\n]*" % self._width
        self._lines: list[bytes] = sorted(re.findall(pattern, text, re.M))

    @classmethod
    def read(cls) -> KernelSymbols:
        return cls(kernel.kallsyms_bytes())

    def name(self, addr: int) -> bytes:
        key = b"%0*x\xff" % (self._width, addr)  # after every line of this address
        i = bisect.bisect_right(self._lines, key) - 1
        lines, w = self._lines, self._width
        if i < 0 or not lines[i][:w].strip(b"0"):
            return b"[unknown]"  # before the first symbol, or addresses hidden (all 0)
        # Aliases (symbols at one address) sort by their type letter first; the
        # greatest of their names is taken, as a table sorted by (address, name) does.
        at = lines[i][:w]
        names: list[bytes] = [lines[i].split(None, 3)[2]]
        while i > 0 and lines[i - 1][:w] == at:
            i -= 1
            names.append(lines[i].split(None, 3)[2])
        return max(names)


def read_symbols_in_background() -> Callable[[], KernelSymbols]:
    """Start reading /proc/kallsyms on a thread; the function returned waits for it.

    The kernel writes the file out during the read (tens of milliseconds natively,
    seconds under emulation) with the GIL released: started before libbpf's load,
    the table is ready by the first event that needs a name. A failed read is left
    to the plain read the function then makes, which raises where it is needed.
    """
    got: list[KernelSymbols] = []
    done = threading.Event()

    def run() -> None:
        try:
            got.append(KernelSymbols.read())
        except OSError:
            pass
        finally:
            done.set()

    threading.Thread(target=run, name="read-kallsyms", daemon=True).start()

    def table() -> KernelSymbols:
        done.wait()
        return got[0] if got else KernelSymbols.read()

    return table
