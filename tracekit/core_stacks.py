"""Stack tables and kernel symbols for CO-RE probes, as BCC's BPF object offers them.

A probe's ``enrich`` reads stacks with ``bpf[b"tk_stacks"].walk(stack_id)`` and
names addresses with ``bpf.ksym(addr)`` (tracekit/stacks.py). On the CO-RE path
there is no BCC object: ``CoreTables`` answers the same two calls from the loaded
object's stack map (one lookup per new stack id) and from /proc/kallsyms, read once
and only when a first address needs a name.
"""

from __future__ import annotations

import bisect
import ctypes as ct
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tracekit import kernel

if TYPE_CHECKING:
    from tracekit.libbpf import BpfObject

# BPF stack maps hold up to PERF_MAX_STACK_DEPTH (127) addresses per stack
# (tk_compat.h's BPF_STACK_TRACE declares that value size).
MAX_DEPTH = 127
_TEXT_SYM = re.compile(rb"^([0-9a-f]+) [tT] (\S+)", re.M)


class KernelSymbols:
    """Address -> name of the function containing it, from /proc/kallsyms."""

    def __init__(self, text: bytes) -> None:
        pairs = sorted((int(a, 16), n) for a, n in _TEXT_SYM.findall(text))
        self._addrs = [a for a, _ in pairs]
        self._names = [n for _, n in pairs]

    @classmethod
    def read(cls) -> KernelSymbols:
        return cls(kernel.kallsyms_bytes())

    def name(self, addr: int) -> bytes:
        i = bisect.bisect_right(self._addrs, addr) - 1
        return self._names[i] if i >= 0 and self._addrs[i] else b"[unknown]"


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

    def __init__(self, obj: BpfObject) -> None:
        self._obj = obj
        self._syms: KernelSymbols | None = None

    def __getitem__(self, name: bytes) -> StackTable:
        lib = self._obj.lib
        return StackTable(self._obj.map_fd(name.decode()), lib.lib.bpf_map_lookup_elem)

    def ksym(self, addr: int) -> bytes:
        if self._syms is None:
            self._syms = KernelSymbols.read()
        return self._syms.name(addr)
