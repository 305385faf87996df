"""fq-throttle's findings: throttles per flow with their delays, flow_limit drops per
flow and by the kernel's reason, empty dequeues apart, and the settings in force."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from tracekit.base.findings import Finding, Findings, Tally, flow_text, ipv4
from tracekit.base.session import EventBatch, Session, Summary

PROBE = "fq-throttle"
THROTTLE, DROP, EMPTY = 1, 2, 3
NO_MAXRATE = (1 << 64) - 1
TOP = 5
KEY = ("kind", "sk", "saddr", "sport", "daddr", "dport", "ifname", "queue")


def _bucket_text(b: int) -> str:
    """Log2 bucket b (0: [0, 1); b: [2^(b-1), 2^b)) in microseconds."""
    if b == 0:
        return "0 us"
    return f"{1 << (b - 1)}-{(1 << b) - 1} us"


def _rate_text(bytes_per_s: int) -> str:
    if bytes_per_s >= NO_MAXRATE or bytes_per_s in (0, 0xFFFFFFFF):
        return "none"
    bits = bytes_per_s * 8
    for unit, div in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bits >= div:
            return f"{bits / div:g} {unit} ({bytes_per_s} bytes/s)"
    return f"{bits} bit/s"


def _quantile(buckets: Counter[int], q: float) -> int:
    total = sum(buckets.values())
    seen = 0
    for b in sorted(buckets):
        seen += buckets[b]
        if seen >= q * total:
            return b
    return max(buckets)


class FqThrottleFindings(Findings):
    def __init__(self, session: Session) -> None:
        super().__init__(session)
        names = session.schema.names
        self._idx = [names.index(n) for n in KEY]
        self._count = names.index("count")
        self._delay = names.index("delay_us")
        # Recordings of the probe before events carried the settings have neither.
        self._has_limits = "flow_limit" in names and "maxrate" in names
        self._limits = (
            [names.index(n) for n in ("ifname", "queue", "flow_limit", "maxrate")]
            if self._has_limits
            else []
        )
        # (kind, flow...) -> events' count; (flow...) -> delay bucket -> throttles.
        self.by_flow = Tally()
        self.delays: dict[tuple[Any, ...], Counter[int]] = defaultdict(Counter)
        self.settings = Tally()
        self.events: Counter[int] = Counter()

    def add(self, batch: EventBatch) -> None:
        keys = list(zip(*(batch.column_values(i) for i in self._idx), strict=True))
        counts = batch.column_values(self._count)
        kinds = batch.column_values(self._idx[0])
        self.events.update(kinds)
        # Weighted by each event's count: a Counter of (key, count) pairs, then
        # multiplied out per distinct pair (few), never a Python step per event.
        weighted: Counter[tuple[Any, ...]] = Counter()
        for (key, n), m in Counter(zip(keys, counts, strict=True)).items():
            weighted[key] += n * m
        self.by_flow.add_counts(weighted)
        kept = self.by_flow.counts
        d = np.asarray(batch.field_array(self._delay), dtype=np.uint64)
        if len(d):
            b = np.zeros(len(d), dtype=np.int64)
            nz = d > 0
            b[nz] = np.floor(np.log2(d[nz].astype(np.float64))).astype(np.int64) + 1
            pairs = Counter(zip(keys, b.tolist(), counts, strict=True))
            for (key, bucket, n), m in pairs.items():
                if key[0] == THROTTLE and key in kept:
                    self.delays[key[1:]][bucket] += n * m
        if self._has_limits:
            self.settings.update(zip(*(batch.column_values(i) for i in self._limits), strict=True))

    def finish(self, summary: Summary) -> list[Finding]:
        c = {k: sum(v.values()) for k, v in summary.counters.get("fq_counts", {}).items()}
        reasons = {k: sum(v.values()) for k, v in summary.counters.get("fq_drops", {}).items()}
        out = []
        settings = self._settings()
        if settings is not None:
            out.append(settings)
        out.append(self._throttles(c))
        drops = self._drops(c, reasons)
        if drops is not None:
            out.append(drops)
        empty = c.get("empty_dequeues", 0)
        deq = c.get("dequeues", 0)
        if empty or self.events.get(EMPTY):
            n = empty or self.events[EMPTY]
            out.append(
                Finding(
                    PROBE,
                    "empty-dequeues",
                    f"{n} dequeues of {deq} returned nothing while packets waited: every flow "
                    "with packets was throttled (fq is non-work-conserving); not drops, not "
                    "throttles",
                    data={"empty_dequeues": n, "dequeues": deq},
                )
            )
        return out

    def _settings(self) -> Finding | None:
        if not self.settings:
            return None
        per: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
        for (dev, q, limit, rate), _ in self.settings.items():
            per[(limit, rate)].append((dev, q))
        parts, data = [], []
        for (limit, rate), where in sorted(per.items()):
            devs: dict[str, list[int]] = defaultdict(list)
            for dev, q in sorted(set(where)):
                devs[dev].append(q)
            at = "; ".join(f"{d} queues {','.join(map(str, qs))}" for d, qs in devs.items())
            parts.append(f"flow_limit {limit} packets, maxrate {_rate_text(rate)} on {at}")
            data.append(
                {
                    "flow_limit": limit,
                    "maxrate": None if _rate_text(rate) == "none" else rate,
                    "where": {d: qs for d, qs in devs.items()},
                }
            )
        return Finding(
            PROBE, "settings", "fq in force: " + " | ".join(parts), data={"qdiscs": data}
        )

    def _flows(self, kind: int) -> list[tuple[tuple[Any, ...], int]]:
        got: Counter[tuple[Any, ...]] = Counter()
        for key, n in self.by_flow.items():
            if key[0] == kind:
                got[key[1:]] += n
        return sorted(got.items(), key=lambda kv: (-kv[1], kv[0]))

    @staticmethod
    def _who(flow: tuple[Any, ...]) -> str:
        sk, sa, sp, da, dp, dev, q = flow
        if not (sk or sa or sp or da or dp):
            return f"(flow unknown) on {dev} q{q}"
        return f"{flow_text(sa, sp, da, dp)} on {dev} q{q}"

    def _throttles(self, c: dict[str, int]) -> Finding:
        counter = c.get("throttled", 0)
        flows = self._flows(THROTTLE)
        in_events = sum(n for _, n in flows)
        known = [(f, n) for f, n in flows if any(f[:5])]
        unknown = in_events - sum(n for _, n in known)
        events = self.events.get(THROTTLE, 0)
        if not counter and not in_events:
            return Finding(PROBE, "no-throttles", "fq throttled no flow", data={"throttled": 0})
        text = (
            f"fq throttled flows {counter or in_events} times (its counter `throttled`, "
            f"tc -s qdisc's `throttled`): each time it held back a flow whose next packet was "
            f"not due yet (pacing: maxrate or the socket's pacing rate); "
            + (
                f"{len(known)} flows"
                if known
                else "which flows is not in this data (a recording made before throttle "
                "events carried their flow)"
            )
        )
        details = [
            f"{self._who(f)}: throttled {n} times, held {self._delay_text(f)}"
            for f, n in known[:TOP]
        ]
        if len(known) > TOP:
            details.append(f"{len(known) - TOP} more flows: {sum(n for _, n in known[TOP:])}")
        if events == in_events:
            details.append(
                f"{events} throttle events, one per throttle, {in_events} in all"
                + (f" ({in_events}/{counter} of the counter)" if counter != in_events else "")
            )
        else:
            details.append(
                f"{events} throttle events carry {in_events} throttles: an event without a "
                "flow covers one fq_dequeue call, which may throttle several flows (its count)"
            )
        details += self.by_flow.note("events")
        if unknown:
            details.append(f"{unknown} throttles without their flow")
        if counter and in_events < counter:
            details.append(
                f"{counter - in_events} throttles counted but not streamed (sampling or lost "
                "events)"
            )
        return Finding(
            PROBE,
            "throttles",
            text,
            details=details,
            hints=(
                "throttling is fq pacing each flow to its rate (tc-fq(8)); if a flow should go "
                "faster, consider its maxrate (tc qdisc) or the socket's SO_MAX_PACING_RATE",
            ),
            data={
                "throttled": counter,
                "events": events,
                "in_events": in_events,
                "without_flow": unknown,
                "flows": [self._flow_data(f, n, delays=True) for f, n in known[:TOP]],
            },
        )

    def _delay_text(self, flow: tuple[Any, ...]) -> str:
        b = self.delays.get(flow)
        if not b:
            return "for an unknown time"
        return (
            f"median {_bucket_text(_quantile(b, 0.5))}, 90% up to "
            f"{_bucket_text(_quantile(b, 0.9))}, max {_bucket_text(max(b))}"
        )

    def _flow_data(self, flow: tuple[Any, ...], n: int, delays: bool = False) -> dict[str, Any]:
        sk, sa, sp, da, dp, dev, q = flow
        d: dict[str, Any] = {
            "sk": f"{sk:#x}",
            "saddr": ipv4(sa),
            "sport": sp,
            "daddr": ipv4(da),
            "dport": dp,
            "ifname": dev,
            "queue": q,
            "count": n,
        }
        if delays:
            d["delay_us_log2"] = {
                _bucket_text(b): k for b, k in sorted(self.delays.get(flow, {}).items())
            }
        return d

    def _drops(self, c: dict[str, int], reasons: dict[str, int]) -> Finding | None:
        counter = c.get("flow_limit_drops", 0)
        flows = self._flows(DROP)
        if not counter and not flows and not any(reasons.values()):
            return None
        limit = max((k[2] for k in self.settings.counts), default=None)
        top = flows[0] if flows else None
        if top is not None:
            lim = f" {limit}" if limit is not None else ""
            text = (
                f"flow {self._who(top[0])} hit flow_limit{lim}: {top[1]} packets dropped "
                f"(of {counter} flow_limit drops, tc's `flows_plimit`, over {len(flows)} flows)"
            )
        else:
            text = f"{counter} flow_limit drops (tc's `flows_plimit`), their flows not streamed"
        details = [f"{self._who(f)}: {n} dropped at flow_limit" for f, n in flows[1:TOP]]
        if any(reasons.values()):
            details.append(
                "drops by the kernel's reason: "
                + ", ".join(f"{k} {n}" for k, n in reasons.items() if n)
            )
        return Finding(
            PROBE,
            "flow-limit",
            text,
            details=details,
            hints=(
                "fq drops a flow's packets once flow_limit of them are queued (tc-fq(8)): the "
                "flow sends faster than fq lets it out; consider a larger flow_limit, or pacing "
                "at the sender (TCP's small queues keep TCP under it; UDP has none)",
            ),
            data={
                "flow_limit": limit,
                "flow_limit_drops": counter,
                "by_reason": reasons,
                "flows": [self._flow_data(f, n) for f, n in flows[:TOP]],
            },
        )


def findings(session: Session) -> Findings:
    return FqThrottleFindings(session)
