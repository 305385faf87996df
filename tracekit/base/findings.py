"""Findings: what a session's numbers mean, computed from its data.

A probe declares how it reads its own numbers with ``ProbeSpec.findings``: a
factory called once per session with the ``Session``, returning a ``Findings``
object. The pipeline (``tracekit.plugin.pipeline``) hands that object every batch
the sinks get (``add``) and, when the session ends, the ``Summary`` (``finish``),
which returns the findings. A live run and a replay of its recording feed it the
same batches and the same summary (counters, in-kernel aggregate, duration from the
footer), so both end with the same findings, word for word.

A finding states what the data shows (numbers, flows, CPUs, queues) and may add
hints: remedies from the kernel's own documentation and the investigations, worded
as hints ("may", "consider"), never as certainties. ``data`` carries the same
facts as plain values for machines (``--findings json``, the trace footer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracekit.base.session import EventBatch, Session, Summary

# Bounds on a finding, also what a trace footer may hold (tracekit/traces/checks.py).
MAX_FINDINGS = 64
MAX_LINES = 64
MAX_LINE = 4096
MAX_DATA_DEPTH = 6
MAX_DATA_ITEMS = 4096


@dataclass(frozen=True)
class Finding:
    """One thing a session's data shows.

    ``probe`` is the probe whose data it reads, ``what`` a short stable name of the
    kind of finding (``socket-flips``, ``hash-ignores-ports``: what a script tests),
    ``text`` the headline with its numbers, ``details`` the lines that support it,
    ``hints`` what may help (from the kernel's documentation; never certain), and
    ``data`` the same facts as plain values (str, int, float, bool, lists and maps
    with str keys).
    """

    probe: str
    what: str
    text: str
    details: Sequence[str] = ()
    hints: Sequence[str] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", tuple(self.details))
        object.__setattr__(self, "hints", tuple(self.hints))
        object.__setattr__(self, "data", plain(dict(self.data), "data"))

    def lines(self) -> list[str]:
        """The finding as text: headline, indented details, then hints."""
        out = [f"finding ({self.probe}): {self.text}"]
        out += [f"  {d}" for d in self.details]
        out += [f"  hint: {h}" for h in self.hints]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "what": self.what,
            "text": self.text,
            "details": list(self.details),
            "hints": list(self.hints),
            "data": plain(dict(self.data), "data"),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        return cls(
            probe=str(d["probe"]),
            what=str(d["what"]),
            text=str(d["text"]),
            details=tuple(str(x) for x in d.get("details", ())),
            hints=tuple(str(x) for x in d.get("hints", ())),
            data=dict(d.get("data", {})),
        )


def plain(v: Any, where: str, depth: int = 0) -> Any:
    """``v`` as plain JSON-like data (tuples become lists); ValueError otherwise."""
    if depth > MAX_DATA_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DATA_DEPTH}")
    if v is None or type(v) in (bool, int, str):
        return v
    if type(v) is float:
        if not math.isfinite(v):
            raise ValueError(f"{where}: {v} is not a finite number")
        return v
    if isinstance(v, Mapping):
        if len(v) > MAX_DATA_ITEMS:
            raise ValueError(f"{where}: {len(v)} entries (limit {MAX_DATA_ITEMS})")
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise ValueError(f"{where}: keys must be strings, not {type(k).__name__}")
            out[k] = plain(x, f"{where}.{k}", depth + 1)
        return out
    if isinstance(v, (list, tuple)):
        if len(v) > MAX_DATA_ITEMS:
            raise ValueError(f"{where}: {len(v)} entries (limit {MAX_DATA_ITEMS})")
        return [plain(x, f"{where}[]", depth + 1) for x in v]
    raise ValueError(f"{where}: {type(v).__name__} is not plain data")


class Findings:
    """What a probe's ``ProbeSpec.findings`` factory returns, one per session.

    ``add`` gets every batch the sinks get, in order (nothing in a session whose
    probe counted in the kernel: its aggregate is ``summary.kernel_agg``); it must
    not keep a Python step per event (count a batch's columns at once).
    ``finish`` gets the summary once, after the last batch, and returns the
    findings. Subclass it and override either; both do nothing by default.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, batch: EventBatch) -> None:
        """One batch of the session's events."""

    def finish(self, summary: Summary) -> Sequence[Finding]:
        """The session's findings, from what ``add`` saw and ``summary``."""
        return ()


FORMATS = ("text", "json", "off")


def render(findings: Sequence[Finding], fmt: str) -> list[str]:
    """The lines ``--findings FMT`` prints on stderr (without the ``tracekit:`` prefix
    of text lines): text, or one JSON document on one line."""
    if fmt == "off":
        return []
    if fmt == "json":
        return [json.dumps({"findings": [f.to_dict() for f in findings]}, sort_keys=True)]
    return [line for f in findings for line in f.lines()]


def print_findings(findings: Sequence[Finding], fmt: str = "text") -> None:
    """The findings on stderr, after a run's or a replay's summary: text lines
    (``tracekit: finding ...``, escaped for the terminal) or one JSON line."""
    import sys

    from tracekit.base.text import printable

    for line in render(findings, fmt):
        text = line if fmt == "json" else f"tracekit: {printable(line)}"
        print(text, file=sys.stderr, flush=True)


# -- helpers the built-in probes share ------------------------------------------------

# Distinct keys a probe's findings keep (flows, sockets...): a host with many flows
# must not grow a findings object without bound (the hist sink caps its keys too).
MAX_KEYS = 8192


class Tally:
    """Counts per key, at most ``limit`` keys; what new keys bring beyond that is
    counted in ``other`` (a finding says how much it could not tell apart).

    ``update`` takes a batch's keys (one per event) and counts them in C
    (``collections.Counter``); the Python loop is over the batch's distinct keys."""

    def __init__(self, limit: int = MAX_KEYS) -> None:
        self.limit = limit
        self.counts: dict[Any, int] = {}
        self.other = 0

    def update(self, keys: Any) -> None:
        from collections import Counter

        self.add_counts(Counter(keys))

    def add_counts(self, counts: Mapping[Any, int]) -> None:
        mine = self.counts
        for k, n in counts.items():
            if k in mine:
                mine[k] += n
            elif len(mine) < self.limit:
                mine[k] = n
            else:
                self.other += n

    def items(self) -> Any:
        return self.counts.items()

    def __len__(self) -> int:
        return len(self.counts)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def note(self, what: str) -> list[str]:
        """A detail line when keys were folded, else nothing."""
        if not self.other:
            return []
        return [f"{self.other} {what} beyond the first {self.limit} distinct keys not told apart"]


def ipv4(addr: int) -> str:
    """An address as the probes store it (network order read as a little-endian u32)."""
    return ".".join(str((addr >> s) & 0xFF) for s in (0, 8, 16, 24))


def flow_text(saddr: int, sport: int, daddr: int, dport: int) -> str:
    return f"{ipv4(saddr)}:{sport} > {ipv4(daddr)}:{dport}"


def cpumask_cpus(mask: str) -> list[int]:
    """CPUs of a sysfs CPU mask (``xps_cpus``, ``rps_cpus``: hex words, commas)."""
    text = mask.strip().replace(",", "")
    if not text:
        return []
    try:
        bits = int(text, 16)
    except ValueError:
        return []
    return [i for i in range(bits.bit_length()) if bits >> i & 1]


def rate(n: int, seconds: float) -> str:
    """``n`` per second over ``seconds``, as text (``18.2/s``)."""
    if seconds <= 0:
        return "?/s"
    r = n / seconds
    return f"{r:.1f}/s" if r < 1000 else f"{r:,.0f}/s"


def log2_bucket(v: int) -> tuple[int, int]:
    """The power-of-two bucket [lo, hi) holding ``v`` (0 is [0, 1))."""
    if v <= 0:
        return 0, 1
    b = int(v).bit_length() - 1
    return 1 << b, 1 << (b + 1)
