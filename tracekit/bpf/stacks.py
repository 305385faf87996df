"""Kernel stacks: resolve a stack id to symbol names, stored in the session.

Symbols and stacks go into the session's ``names`` (read by sinks as
``session.symbols`` and ``session.stacks``) so the trace file carries them and replay
never needs this machine's kallsyms.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tracekit.base.session import Session
from tracekit.bpf.probe_base import ProbeContext


def resolve_stack(bpf: Any, table: str, stack_id: int, session: Session | None = None) -> list[str]:
    """Symbol names of a stack, innermost first ([] for a failed stack id).

    ``bpf`` is the ``ProbeContext`` an ``enrich(ctx, rows)`` is given (then
    ``session`` may be left out: the context's is used); or, in the deprecated 0.1.0
    form of ``enrich``, the object it was given, with the session.
    """
    if isinstance(bpf, ProbeContext):
        return bpf.stack_names(stack_id, table)
    if session is None:
        raise TypeError("resolve_stack: give the session with a 0.1.0 bpf object")
    if stack_id < 0:
        return []
    addrs = session.stacks.get(stack_id)
    if addrs is None:
        try:
            addrs = [int(a) for a in bpf[table.encode()].walk(stack_id)]
        except KeyError:
            return []
        session.names.add_stacks({stack_id: addrs})
    known = session.symbols
    new = {a: bpf.ksym(a).decode("utf-8", "replace") for a in addrs if a not in known}
    if new:
        session.names.add_symbols(new)
    return [known[a] for a in addrs]


def classify_stack(frames: list[str], rules: Iterable[tuple[frozenset[str], str]]) -> str | None:
    """The label of the first rule whose set contains a frame, innermost frame first."""
    rules = tuple(rules)
    for f in frames:
        for names, label in rules:
            if f in names:
                return label
    return None
