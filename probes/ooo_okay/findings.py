"""ooo-okay's findings: the share of skbs with ooo_okay set, the rule that held and
the path, per socket (overall only, from the counters and the in-kernel aggregate,
when the probe counted in the kernel)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tracekit.base.findings import Finding, Findings, Tally, flow_text, ipv4
from tracekit.base.session import EventBatch, Session, Summary

PROBE = "ooo-okay"
TOP = 3
KEY = (
    "sk",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "ooo_okay",
    "wmem_low",
    "rtx_empty",
    "rule",
    "path",
)
HINT = (
    "ooo_okay lets netdev_pick_tx() move the socket to the TX queue XPS maps the "
    "transmitting CPU to (Documentation/networking/scaling.rst, XPS); a socket sent from "
    "two CPUs (sendmsg on one, ACK processing on another) may then change queue each time "
    "the flag is set: see txq-flip for that socket"
)


class OooOkayFindings(Findings):
    def __init__(self, session: Session) -> None:
        super().__init__(session)
        names = session.schema.names
        self._idx = [names.index(n) for n in KEY]
        self.rules = session.schema.field("rule").choices
        self.paths = session.schema.field("path").choices
        self.skbs = Tally()

    def add(self, batch: EventBatch) -> None:
        if not self.session.aggregated:
            self.skbs.update(zip(*(batch.column_values(i) for i in self._idx), strict=True))

    def _name(self, names: tuple[str, ...], i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    def finish(self, summary: Summary) -> list[Finding]:
        from . import RULE_TEXT

        c = {k: sum(v.values()) for k, v in summary.counters.get("ooo_counts", {}).items()}
        tx, ooo = c.get("transmitted", 0), c.get("ooo_okay", 0)
        if not tx:
            return [Finding(PROBE, "no-skbs", "no skbs transmitted", data={"transmitted": 0})]
        rules = {r: c.get(f"rule_{r}", 0) for r in self.rules if c.get(f"rule_{r}", 0)}
        held = f"wmem low {c.get('wmem_low', 0)}, retransmit queue empty {c.get('rtx_empty', 0)}"
        paths: Counter[str] = Counter()
        if self.session.aggregated:
            pi = self.session.schema.index("path")
            oi = self.session.schema.index("ooo_okay")
            for row, n in summary.kernel_agg:
                if row[oi]:
                    paths[self._name(self.paths, row[pi])] += n
        else:
            for k, n in self.skbs.items():
                if k[5]:
                    paths[self._name(self.paths, k[9])] += n
        text = f"ooo_okay set on {ooo} of {tx} skbs ({100 * ooo / tx:.2f}%); it held by: {held}"
        details = [f"rule {r}: {n} skbs; {RULE_TEXT.get(r, r)}" for r, n in rules.items()]
        if paths:
            details.append(
                "paths of the skbs with ooo_okay: "
                + ", ".join(f"{p} {n}" for p, n in paths.most_common())
            )
        out = [
            Finding(
                PROBE,
                "share",
                text,
                details=details,
                hints=(HINT,),
                data={
                    "transmitted": tx,
                    "ooo_okay": ooo,
                    "share": round(ooo / tx, 6),
                    "wmem_low": c.get("wmem_low", 0),
                    "rtx_empty": c.get("rtx_empty", 0),
                    "rules": rules,
                    "paths": dict(paths),
                },
            )
        ]
        out += self._sockets()
        return out

    def _sockets(self) -> list[Finding]:
        all_skbs = bool(self.session.params.get("all", 0))
        per: dict[tuple[Any, ...], Counter[tuple[Any, ...]]] = defaultdict(Counter)
        for (sk, sa, sp, da, dp, ooo, low, rtx, rule, path), n in self.skbs.items():
            per[(sk, sa, sp, da, dp)][(ooo, low, rtx, rule, path)] += n
        ranked = sorted(
            per.items(), key=lambda kv: (-sum(n for k, n in kv[1].items() if k[0]), kv[0])
        )
        out = []
        for (sk, sa, sp, da, dp), skbs in ranked[:TOP]:
            set_ = sum(n for k, n in skbs.items() if k[0])
            if not set_:
                continue
            seen = sum(skbs.values())
            share = f" of {seen} ({100 * set_ / seen:.1f}%)" if all_skbs else ""
            why: Counter[str] = Counter()
            rules: Counter[str] = Counter()
            paths: Counter[str] = Counter()
            for (ooo, low, rtx, rule, path), n in skbs.items():
                if not ooo:
                    continue
                why["wmem low" if low else ("retransmit queue empty" if rtx else "other")] += n
                rules[self._name(self.rules, rule)] += n
                paths[self._name(self.paths, path)] += n
            text = (
                f"socket {flow_text(sa, sp, da, dp)}: ooo_okay on {set_} skbs{share}; held by "
                + ", ".join(f"{w} {n}" for w, n in why.most_common())
                + "; rule "
                + ", ".join(f"{r} {n}" for r, n in rules.most_common())
                + "; path "
                + ", ".join(f"{p} {n}" for p, n in paths.most_common())
            )
            out.append(
                Finding(
                    PROBE,
                    "socket",
                    text,
                    data={
                        "sk": f"{sk:#x}",
                        "flow": {"saddr": ipv4(sa), "sport": sp, "daddr": ipv4(da), "dport": dp},
                        "ooo_okay": set_,
                        "skbs_seen": seen if all_skbs else None,
                        "held_by": dict(why),
                        "rules": dict(rules),
                        "paths": dict(paths),
                    },
                )
            )
        return out


def findings(session: Session) -> Findings:
    return OooOkayFindings(session)
