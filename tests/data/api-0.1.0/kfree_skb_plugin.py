"""A plugin written against tracekit 0.1.0's code (not its guide): an skb:kfree_skb
probe whose enrich names the free site's caller, and a sink writing Prometheus text.

Kept as 0.1.0 let it be written: ``tracekit.registry`` and ``tracekit.schema``
paths, ``enrich(bpf, session, rows)`` assigning ``session.symbols[addr]``,
``ProbeSpec.default_histograms()`` and ``Session(symbols=...)``.
"""

from __future__ import annotations

from importlib.resources import files

from tracekit import hookimpl
from tracekit.registry import AttachPoint, ProbeSpec, SinkSpec
from tracekit.schema import Field, HistSpec, Schema
from tracekit.session import Session

SCHEMA = Schema(
    fields=(
        Field("ts_ns", "u64", unit="ns", display="ts"),
        Field("caller", "u64", key=True, display="ksym"),
        Field("reason", "u32", key=True),
        Field("stack_id", "s32"),
    ),
    histograms=(HistSpec(value=None, by=("caller", "reason"), kind="count", title="drops"),),
)
STACK = SCHEMA.index("stack_id")
CALLER = SCHEMA.index("caller")


def enrich(bpf, session, rows):
    out = []
    for r in rows:
        addrs = list(bpf[b"tk_stacks"].walk(r[STACK])) if r[STACK] >= 0 else []
        caller = addrs[1] if len(addrs) > 1 else 0
        if caller and caller not in session.symbols:
            session.symbols[caller] = bpf.ksym(caller).decode()
        out.append((*r[:CALLER], caller, *r[CALLER + 1 :]))
    return out


PROBE = ProbeSpec(
    name="kfree-skb-0-1-0",
    description="skbs freed, by caller (a 0.1.0 plugin)",
    source=files("tracekit.probes").joinpath("tracekit.h"),
    schema=SCHEMA,
    attach=(AttachPoint("tracepoint", "skb:kfree_skb", "tk_kfree_skb"),),
    enrich=enrich,
    enriched_fields=("caller",),
)


class PromText:
    """Counts per caller, written as Prometheus text at the end."""

    def __init__(self, arg):
        self.path = arg
        self.counts = {}

    @hookimpl
    def tracekit_events(self, session, batch):
        for r in batch.rows:
            name = session.symbols.get(r[CALLER], "unknown")
            self.counts[name] = self.counts.get(name, 0) + 1

    @hookimpl
    def tracekit_session_end(self, session, summary):
        with open(self.path, "w") as f:
            for name, n in sorted(self.counts.items()):
                f.write(f'skb_drops_total{{caller="{name}"}} {n}\n')


@hookimpl
def tracekit_register_probes(registry):
    registry.add(PROBE)


@hookimpl
def tracekit_register_sinks(registry):
    registry.add(SinkSpec("promtext", "drops as Prometheus text", PromText, streams=False))


def default_titles():
    return [h.title for h in PROBE.default_histograms()]


def session_with_names(names):
    return Session(probe=PROBE.name, schema=SCHEMA, symbols=dict(names))
