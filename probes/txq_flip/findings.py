"""txq-flip's findings: which sockets changed TX queue most, between which queues,
on which CPUs, how often, by which cause, and the XPS map of those CPUs."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from tracekit import EventBatch, Session, Summary
from tracekit.base import kernel
from tracekit.base.findings import Finding, Findings, Tally, cpumask_cpus, flow_text, rate

PROBE = "txq-flip"
NO_QUEUE = 0xFFFF
TOP = 3
# Counted per batch: one Counter update over zipped columns (a C loop), never a
# Python step per event.
KEY = (
    "sk",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "ifname",
    "queue_before",
    "queue_after",
    "cpu",
    "cause",
)

HINTS = {
    "ooo_okay": (
        "ooo_okay was set (nothing of the socket in flight: TCP sets it once its data is "
        "acknowledged), so netdev_pick_tx() asked XPS again, and XPS picks the queue of "
        "the CPU that transmits (Documentation/networking/scaling.rst, XPS). This socket "
        "transmits from {cpus}: consider running the application and the NIC interrupt "
        "that processes its ACKs on CPUs that XPS maps to one queue, or mapping those "
        "CPUs to the same queue in xps_cpus. Flips may be an effect of a lower rate "
        "rather than its cause (ooo_okay is set more often when less is in flight): "
        "see ooo-okay and fq-throttle for this socket"
    ),
    "reselect": (
        "the socket's queue mapping outlived net.core.txq_reselection_ms (6.19+) without "
        "ooo_okay: packets in flight may arrive out of order; consider a larger "
        "txq_reselection_ms, or 0 to turn the reselection off"
    ),
    "out_of_range": (
        "the socket's queue was beyond the device's real_num_tx_queues (the number of "
        "queues changed, ethtool -L): the socket moves once and should then stay"
    ),
    "other": (
        "none of netdev_pick_tx()'s conditions held, so the move was not its choice "
        "(a driver's ndo_select_queue or a queue_mapping set by tc may pick the queue)"
    ),
}


def metadata(params: Mapping[str, int]) -> dict[str, Any]:
    """The XPS map of this namespace's devices, read when the run starts."""
    return {"net": kernel.net_queues()}


def xps_of(session: Session, dev: str) -> dict[int, list[int]] | None:
    """CPU -> TX queues XPS maps it to on ``dev``, from the session's metadata."""
    net = session.metadata.get("net")
    if not isinstance(net, Mapping):
        return None
    devs = net.get("devices", {})
    files = devs.get(dev) if isinstance(devs, Mapping) else None
    if not isinstance(files, Mapping) or "xps_cpus" not in files:
        return None
    out: dict[int, list[int]] = defaultdict(list)
    for q, mask in sorted(files["xps_cpus"].items(), key=lambda kv: int(kv[0])):
        for cpu in cpumask_cpus(str(mask)):
            out[cpu].append(int(q))
    return dict(out)


def _q(q: int) -> str:
    return "none" if q == NO_QUEUE else f"q{q}"


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class TxqFlipFindings(Findings):
    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.moves = Tally()
        self.comms = Tally()
        names = session.schema.names
        self._idx = [names.index(n) for n in KEY]
        self._comm = names.index("comm") if "comm" in names else None
        self._sk = names.index("sk")
        self.causes = dict(enumerate(session.schema.field("cause").choices))

    def add(self, batch: EventBatch) -> None:
        self.moves.update(zip(*(batch.column_values(i) for i in self._idx), strict=True))
        if self._comm is not None:
            self.comms.update(
                zip(batch.column_values(self._sk), batch.column_values(self._comm), strict=True)
            )

    def finish(self, summary: Summary) -> list[Finding]:
        counts = summary.counters.get("txq_counts", {})
        calls = sum(counts.get("calls", {}).values())
        changes = sum(counts.get("changes", {}).values())
        dur = summary.duration
        per_sock: dict[tuple[Any, ...], Counter[tuple[Any, ...]]] = defaultdict(Counter)
        firsts = set()
        for (sk, sa, sp, da, dp, dev, qb, qa, cpu, cause), n in self.moves.items():
            name = self.causes.get(cause, str(cause))
            if name == "first":
                firsts.add(sk)
                continue
            per_sock[(sk, sa, sp, da, dp, dev)][(qb, qa, cpu, name)] += n
        if not per_sock:
            first = f"; {len(firsts)} sockets got their first queue" if firsts else ""
            return [
                Finding(
                    PROBE,
                    "no-flips",
                    f"no socket changed TX queue in {calls} picks ({dur:.1f}s){first}",
                    data={"calls": calls, "changes": changes, "first_picks": len(firsts)},
                )
            ]
        ranked = sorted(per_sock.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        out = []
        for (sk, sa, sp, da, dp, dev), moves in ranked[:TOP]:
            out.append(self._socket(sk, sa, sp, da, dp, dev, moves, dur))
        if self.moves.other:
            out[-1] = _with_detail(out[-1], self.moves.note("queue changes")[0])
        if len(ranked) > TOP:
            rest = sum(sum(m.values()) for _, m in ranked[TOP:])
            out[-1] = _with_detail(
                out[-1], f"{len(ranked) - TOP} other sockets changed queue {rest} times"
            )
        return out

    def _socket(
        self,
        sk: int,
        sa: int,
        sp: int,
        da: int,
        dp: int,
        dev: str,
        moves: Counter[tuple[Any, ...]],
        dur: float,
    ) -> Finding:
        n = sum(moves.values())
        queues = sorted({q for qb, qa, _, _ in moves for q in (qb, qa) if q != NO_QUEUE})
        cpus = sorted({cpu for _, _, cpu, _ in moves})
        causes: Counter[str] = Counter()
        per_move: dict[tuple[int, int, int], Counter[str]] = defaultdict(Counter)
        for (qb, qa, cpu, cause), k in moves.items():
            causes[cause] += k
            per_move[(qb, qa, cpu)][cause] += k
        comm = self._comm_of(sk)
        flow = flow_text(sa, sp, da, dp)
        who = f" ({comm})" if comm else ""
        text = (
            f"socket {flow}{who} on {dev} changed TX queue {n} times in {dur:.1f}s "
            f"({rate(n, dur)}), between queues {_and([str(q) for q in queues])}, picked on "
            f"CPUs {_and([str(c) for c in cpus])}; cause: "
            + ", ".join(f"{c} {k}" for c, k in causes.most_common())
        )
        details = []
        moves_data = []
        for (qb, qa, cpu), cs in sorted(
            per_move.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])
        ):
            k = sum(cs.values())
            why = ", ".join(f"{c} {m}" for c, m in cs.most_common())
            details.append(f"{_q(qb)} -> {_q(qa)} picked on cpu{cpu}: {k} ({why})")
            moves_data.append({"from": qb, "to": qa, "cpu": cpu, "count": k, "causes": dict(cs)})
        xps = xps_of(self.session, dev)
        if xps is None:
            details.append(f"XPS map of {dev}: not recorded (read at run time from sysfs)")
        else:
            cells = [
                f"cpu{c} -> " + (",".join(f"q{q}" for q in xps[c]) if c in xps else "none")
                for c in cpus
            ]
            details.append(f"XPS map of {dev} for those CPUs: " + "; ".join(cells))
        hints = []
        for cause, _ in causes.most_common():
            hint = HINTS.get(cause)
            if hint:
                hints.append(hint.format(cpus=_and([f"cpu{c}" for c in cpus])))
        return Finding(
            PROBE,
            "socket-flips",
            text,
            details=details,
            hints=hints,
            data={
                "sk": f"{sk:#x}",
                "flow": {"saddr": _ip(sa), "sport": sp, "daddr": _ip(da), "dport": dp},
                "comm": comm,
                "ifname": dev,
                "changes": n,
                "per_second": round(n / dur, 3) if dur > 0 else 0.0,
                "queues": queues,
                "cpus": cpus,
                "causes": dict(causes),
                "moves": moves_data,
                "xps": {str(c): xps.get(c, []) for c in cpus} if xps is not None else None,
            },
        )

    def _comm_of(self, sk: int) -> str:
        # The task that sent most often on it: the application, not a softirq's
        # interrupted task (kernel threads and idle are left out when others exist).
        best = [
            (n, c)
            for (s, c), n in self.comms.items()
            if s == sk and c and not c.startswith("swapper")
        ]
        return max(best)[1] if best else ""


def _ip(addr: int) -> str:
    from tracekit.base.findings import ipv4

    return ipv4(addr)


def _with_detail(f: Finding, line: str) -> Finding:
    from dataclasses import replace

    return replace(f, details=(*f.details, line))


def findings(session: Session) -> Findings:
    return TxqFlipFindings(session)
