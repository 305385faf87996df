"""rss-cpu's findings: the busiest CPU's share and the imbalance, the flows hashed to
it, whether the NIC's hash covers ports, RPS/RFS state, per-RX-queue counts."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from tracekit.base import kernel
from tracekit.base.findings import Finding, Findings, Tally, cpumask_cpus, flow_text, ipv4
from tracekit.base.session import EventBatch, Session, Summary
from tracekit.base.stats import imbalance

PROBE = "rss-cpu"
NO_QUEUE = 0xFFFF
KEY = (
    "ifname",
    "ifindex",
    "cpu",
    "rx_queue",
    "saddr",
    "daddr",
    "sport",
    "dport",
    "proto",
    "hash",
    "l4_hash",
)
PROTOS = {6: ("TCP", "tcp4"), 17: ("UDP", "udp4")}
# Flows between the same two addresses that differ only in ports: from this many on,
# one hash for all of them is no coincidence (2 flows share a 32-bit hash with
# probability 2^-32).
MIN_FLOWS = 4
# The busiest CPU's share against an even share: from 0.9 x the CPU count on, nearly
# everything is on one CPU; below BALANCED the work is spread.
ONE_CPU = 0.9
BALANCED = 1.5
TOP_FLOWS = 5


def metadata(params: Mapping[str, int]) -> dict[str, Any]:
    """RPS maps and RFS flow counts of this namespace's devices, read at run time."""
    return {"net": kernel.net_queues()}


class RssCpuFindings(Findings):
    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.flows = Tally()
        self._idx = [session.schema.names.index(n) for n in KEY]

    def add(self, batch: EventBatch) -> None:
        if self.session.aggregated:
            return
        self.flows.update(zip(*(batch.column_values(i) for i in self._idx), strict=True))

    def _from_agg(self, summary: Summary) -> None:
        got: Counter[tuple[Any, ...]] = Counter()
        for row, n in summary.kernel_agg:
            got[tuple(row[i] for i in self._idx)] += n
        self.flows.add_counts(got)

    def finish(self, summary: Summary) -> list[Finding]:
        if self.session.aggregated:
            self._from_agg(summary)
        per = dict(summary.counters.get("rss_counts", {}).get("packets", {}))
        if not sum(per.values()):
            # No counters (a recording without a footer): the events' own count.
            per = {}
            for k, n in self.flows.items():
                per[k[2]] = per.get(k[2], 0) + n
        # Every CPU counts, those that received nothing too (counters list them all).
        for c in range(self.session.ncpus):
            per.setdefault(c, 0)
        total = sum(per.values())
        if not total:
            return [Finding(PROBE, "no-packets", "no packets received", data={"packets": 0})]
        out = [self._busiest(per, total)]
        out += self._hashes()
        return out

    def _dev(self, name: str, ifindex: int) -> str:
        if name:
            return name
        for dev, files in self._net_devices().items():
            if isinstance(files, Mapping) and files.get("ifindex") == ifindex:
                return str(dev)
        return f"ifindex {ifindex}"

    def _net_devices(self) -> Mapping[str, Any]:
        net = self.session.metadata.get("net")
        devs = net.get("devices", {}) if isinstance(net, Mapping) else {}
        return devs if isinstance(devs, Mapping) else {}

    def _busiest(self, per: dict[int, int], total: int) -> Finding:
        n = len(per)
        cpu, share, ratio = imbalance(per, n)
        even = 100 / n
        if n > 1 and ratio >= ONE_CPU * n:
            what, how = "one-cpu", "one CPU does nearly all the receive work"
        elif ratio < BALANCED or n == 1:
            what, how = "balanced", "the receive work is spread over the CPUs"
        else:
            what, how = "uneven", "the receive work is uneven"
        text = (
            f"{how}: busiest cpu{cpu} with {100 * share:.1f}% of {total} packets, "
            f"{ratio:.2f}x an even share ({even:.1f}% on {n} CPUs)"
        )
        details = ["packets per CPU: " + "  ".join(f"cpu{c}={k}" for c, k in sorted(per.items()))]
        # Per device: RX queues, the flows on the busiest CPU, RPS/RFS.
        by_dev: dict[tuple[str, int], Counter[int]] = defaultdict(Counter)
        on_busiest: Counter[tuple[Any, ...]] = Counter()
        for k, m in self.flows.items():
            dev, ifx, c, rxq, sa, da, sp, dp, proto = k[:9]
            by_dev[(dev, ifx)][rxq] += m
            if c == cpu:
                on_busiest[(self._dev(dev, ifx), sa, sp, da, dp, proto)] += m
        queues_data = {}
        for (dev, ifx), qs in sorted(by_dev.items()):
            name = self._dev(dev, ifx)
            cells = "  ".join(
                f"{'none' if q == NO_QUEUE else f'q{q}'}={k}" for q, k in sorted(qs.items())
            )
            details.append(f"RX queues of {name}: {cells}")
            queues_data[name] = {("none" if q == NO_QUEUE else str(q)): k for q, k in qs.items()}
        if on_busiest:
            top = on_busiest.most_common(TOP_FLOWS)
            more = len(on_busiest) - len(top)
            details.append(
                f"{len(on_busiest)} flows received on cpu{cpu}: "
                + ", ".join(
                    f"{flow_text(sa, sp, da, dp)} {PROTOS.get(p, (str(p),))[0]} on {d} {k}"
                    for (d, sa, sp, da, dp, p), k in top
                )
                + (f", {more} more" if more > 0 else "")
            )
        details += self.flows.note("packets")
        devs = sorted({self._dev(d, i) for d, i in by_dev})
        rps = self._rps(devs)
        details += rps[0]
        hints = []
        if what == "one-cpu" and not rps[1]:
            hints.append(
                "RPS (rps_cpus of the receiving device's RX queues) may spread this work in "
                "software, hashing ports (Documentation/networking/scaling.rst, RPS)"
            )
        return Finding(
            PROBE,
            what,
            text,
            details=details,
            hints=hints,
            data={
                "busiest_cpu": cpu,
                "share": round(share, 4),
                "imbalance": round(ratio, 3),
                "packets": total,
                "per_cpu": {str(c): k for c, k in sorted(per.items())},
                "rx_queues": queues_data,
                "flows_on_busiest": len(on_busiest),
                "rps": rps[1],
                "balanced": what == "balanced",
            },
        )

    def _rps(self, devs: list[str]) -> tuple[list[str], dict[str, Any]]:
        """Lines on RPS/RFS of ``devs`` from the metadata, and the same as data."""
        net = self.session.metadata.get("net")
        if not isinstance(net, Mapping):
            return ["RPS/RFS: not recorded"], {}
        lines: list[str] = []
        data: dict[str, dict[str, Any]] = {}
        for dev in devs:
            files = self._net_devices().get(dev)
            if not isinstance(files, Mapping) or "rps_cpus" not in files:
                continue
            masks = {q: cpumask_cpus(str(m)) for q, m in files["rps_cpus"].items()}
            on = {q: c for q, c in masks.items() if c}
            flows = {
                q: int(v) for q, v in files.get("rps_flow_cnt", {}).items() if str(v).isdigit()
            }
            if on:
                cells = "; ".join(
                    f"rx-{q} -> cpus {','.join(map(str, c))}"
                    for q, c in sorted(on.items(), key=lambda kv: int(kv[0]))
                )
                lines.append(f"RPS on {dev}: {cells}")
            else:
                queues = "queue" if len(masks) == 1 else "queues"
                lines.append(f"RPS off on {dev} (rps_cpus 0 on its {len(masks)} RX {queues})")
            data[dev] = {
                "rps_cpus": {q: c for q, c in masks.items()},
                "rps_flow_cnt": flows,
            }
        entries = net.get("rps_sock_flow_entries")
        if isinstance(entries, int):
            lines.append(
                f"RFS: rps_sock_flow_entries {entries}" + (" (off)" if entries == 0 else "")
            )
        return lines, {k: v for k, v in data.items() if any(v["rps_cpus"].values())}

    def _hashes(self) -> list[Finding]:
        """Flows between two addresses that differ only in ports, and their hashes."""
        groups: dict[tuple[Any, ...], dict[tuple[int, int], Counter[tuple[int, int, int, int]]]]
        groups = defaultdict(lambda: defaultdict(Counter))
        for k, m in self.flows.items():
            dev, ifx, cpu, rxq, sa, da, sp, dp, proto, h, l4 = k
            if proto not in PROTOS or (sp, dp) == (0, 0):
                continue
            groups[(self._dev(dev, ifx), sa, da, proto)][(sp, dp)][(h, l4, rxq, cpu)] += m
        out = []
        total = sum(n for _, n in self.flows.items()) or 1
        for (dev, sa, da, proto), flows in sorted(groups.items()):
            # A few packets (iperf3's UDP handshakes back to the sender) say nothing.
            if len(flows) < MIN_FLOWS or sum(sum(f.values()) for f in flows.values()) < total / 100:
                continue
            hashes = {h for f in flows.values() for (h, _, _, _) in f}
            l4 = {x for f in flows.values() for (_, x, _, _) in f}
            queues = {q for f in flows.values() for (_, _, q, _) in f}
            cpus = {c for f in flows.values() for (_, _, _, c) in f}
            pkts = sum(sum(f.values()) for f in flows.values())
            name, ethtool = PROTOS[proto]
            where = (
                f"{len(flows)} {name} flows from {ipv4(sa)} to {ipv4(da)} on {dev} that differ "
                "only in ports"
            )
            data = {
                "ifname": dev,
                "saddr": ipv4(sa),
                "daddr": ipv4(da),
                "proto": name,
                "flows": len(flows),
                "packets": pkts,
                "hashes": len(hashes),
                "rx_queues": sorted(queues),
                "cpus": sorted(cpus),
            }
            if len(hashes) == 1 and hashes != {0} and l4 == {0} and len(queues) == 1:
                (h,) = hashes
                (q,) = queues
                qname = "none" if q == NO_QUEUE else str(q)
                out.append(
                    Finding(
                        PROBE,
                        "hash-ignores-ports",
                        f"{where} all carry one hash ({h:#010x}, l4_hash 0) and land on RX "
                        f"queue {qname} (cpu{','.join(map(str, sorted(cpus)))}): the NIC's "
                        "RX hash ignores ports",
                        hints=(
                            f"`ethtool -n {dev} rx-flow-hash {ethtool}` shows the fields the "
                            f"NIC hashes; `ethtool -N {dev} rx-flow-hash {ethtool} sdfn` adds "
                            "the ports "
                            "(ethtool(8): s, d addresses; f, n the L4 bytes 0-1 and 2-3) and "
                            "may spread these flows over the RX queues",
                        ),
                        data={**data, "hash": h},
                    )
                )
            elif hashes == {0} and len(cpus) == 1:
                out.append(
                    Finding(
                        PROBE,
                        "no-rx-hash",
                        f"{where} carry no RX hash (0) and are all processed on "
                        f"cpu{next(iter(cpus))}: {dev} hashed nothing (no RSS on it; a veth "
                        "receives on the sending CPU)",
                        hints=(
                            f"RPS (echo MASK > /sys/class/net/{dev}/queues/rx-*/rps_cpus) may "
                            "spread them in software, hashing ports "
                            "(Documentation/networking/scaling.rst)",
                        ),
                        data=data,
                    )
                )
            elif len(hashes) >= len(flows) and len(queues) == 1 and len(cpus) == 1:
                out.append(
                    Finding(
                        PROBE,
                        "one-queue",
                        f"{where} each have a hash of their own (the hash covers ports) but "
                        f"all land on one RX queue of {dev}",
                        hints=(
                            f"`ethtool -x {dev}` shows the indirection table from hash to RX "
                            "queue; `ethtool -l` the queues in use",
                        ),
                        data=data,
                    )
                )
        return out


def findings(session: Session) -> Findings:
    return RssCpuFindings(session)
