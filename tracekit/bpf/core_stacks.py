"""Stack tables and kernel symbols for CO-RE probes, as BCC's BPF object offers them.

A probe's ``enrich`` reads stacks with ``bpf[b"tk_stacks"].walk(stack_id)`` and
names addresses with ``bpf.ksym(addr)`` (tracekit/bpf/stacks.py). On the CO-RE path
there is no BCC object: ``CoreTables`` answers the same two calls from the loaded
object's stack map (one lookup per new stack id) and from /proc/kallsyms, read once
(on a thread started before the object loads, for probes with an ``enrich``).
"""

from __future__ import annotations

import bisect
import ctypes as ct
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from tracekit.base import kernel

if TYPE_CHECKING:
    from tracekit.bpf.libbpf import BpfObject

# BPF stack maps hold up to PERF_MAX_STACK_DEPTH (127) addresses per stack
# (tk_compat.h's BPF_STACK_TRACE declares that value size).
MAX_DEPTH = 127


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


class StackTable:
    """One BPF_STACK_TRACE map, read as BCC's ``StackTrace`` table is."""

    def __init__(self, fd: int, lookup: object) -> None:
        self._fd = fd
        self._lookup = lookup

    def walk(self, stack_id: int) -> Iterator[int]:
        """The stack's addresses, innermost first; KeyError if the id is not there."""
        key = ct.c_uint32(stack_id)
        vals = (ct.c_uint64 * MAX_DEPTH)()
        if self._lookup(self._fd, ct.byref(key), vals) != 0:  # type: ignore[operator]
            raise KeyError(stack_id)
        for a in vals:
            if not a:
                return
            yield int(a)


class CoreTables:
    """What ``enrich`` reads of BCC's object, for a loaded CO-RE object."""

    def __init__(
        self, obj: BpfObject, symbols: Callable[[], KernelSymbols] = KernelSymbols.read
    ) -> None:
        self._obj = obj
        self._symbols = symbols  # called once, when the first address needs a name
        self._syms: KernelSymbols | None = None

    def __getitem__(self, name: bytes) -> StackTable:
        lib = self._obj.lib
        return StackTable(self._obj.map_fd(name.decode()), lib.lib.bpf_map_lookup_elem)

    def ksym(self, addr: int) -> bytes:
        if self._syms is None:
            self._syms = self._symbols()
        return self._syms.name(addr)
