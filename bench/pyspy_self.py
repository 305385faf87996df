"""Self time per function from a py-spy raw profile (the tables in docs/benchmarks.md).

    py-spy record --nonblocking -r 500 -f raw -o prof.txt -- python bench/...
    python bench/pyspy_self.py prof.txt [--within FUNCTION] [--top 10]

``--within`` keeps only the samples whose stack passes through a frame whose name
starts so (the measured loop, without imports and set-up); shares are of those.
(``--nonblocking``: py-spy must not stop the process to sample it, or a BPF program
load under way fails with EAGAIN.)
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--within")
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    own: Counter[str] = Counter()
    total = 0
    with open(a.profile) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            if a.within and not any(fr.startswith(a.within) for fr in frames):
                continue
            n = int(count)
            total += n
            name, _, where = frames[-1].partition(" (")
            own[f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})"] += n
    print(f"{total} samples")
    for name, n in own.most_common(a.top):
        print(f"{100 * n / max(total, 1):5.1f}%  {name}")


if __name__ == "__main__":
    main()
