"""Small statistics shared by probes, labs and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping


def imbalance(per_cpu: Mapping[int, int], ncpus: int) -> tuple[int, float, float]:
    """(busiest CPU, its share of the total, that share against an even share).

    1.0 is perfectly even; ``ncpus`` is the worst (everything on one CPU).
    """
    total = sum(per_cpu.values())
    if not total or not per_cpu:
        return -1, 0.0, 0.0
    cpu = max(sorted(per_cpu), key=lambda c: per_cpu[c])
    share = per_cpu[cpu] / total
    return cpu, share, share * max(1, ncpus)
