"""Building the CO-RE loader's kernel symbol table from /proc/kallsyms (host, #14).

    .venv/bin/python bench/kallsyms.py --rounds 6

ooo-okay names the frames of its stacks, so its first event waits for this table.
Compared, on this machine's /proc/kallsyms (as root: addresses shown), in one
process, rounds interleaved:

- ``by number``: each text-symbol line parsed into an (address, name) pair, sorted
  (the table before #14's start-up work, kept here as the reference);
- ``lines as bytes``: ``tracekit.bpf.core_stacks.KernelSymbols``, the text-symbol lines
  kept whole and sorted as bytes.

Both name every address alike (tests/test_core_build.py checks it on this kernel).
Reading the file (the kernel writes it out) is timed apart.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable

from tracekit.bpf.core_stacks import KernelSymbols

_BY_NUMBER = re.compile(rb"^([0-9a-f]+) [tT] (\S+)", re.M)


def by_number(text: bytes) -> object:
    pairs = sorted((int(a, 16), n) for a, n in _BY_NUMBER.findall(text))
    return [a for a, _ in pairs], [n for _, n in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    builders: dict[str, Callable[[bytes], object]] = {
        "by number": by_number,
        "lines as bytes": KernelSymbols,
    }
    times: dict[str, list[float]] = {"read /proc/kallsyms": [], **{k: [] for k in builders}}
    text = b""
    for r in range(args.rounds):
        t = time.perf_counter()
        with open("/proc/kallsyms", "rb") as f:
            text = f.read()
        times["read /proc/kallsyms"].append(time.perf_counter() - t)
        order = list(builders) if r % 2 == 0 else list(reversed(builders))
        for name in order:
            t = time.perf_counter()
            builders[name](text)
            times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["by number"])
    print(f"{len(text.splitlines())} lines, {len(text)} bytes, {args.rounds} rounds")
    print(f"{'case':<22}{'median ms':>10}{'spread':>9}{'vs by number':>14}")
    for name, v in times.items():
        med = statistics.median(v)
        spread = (max(v) - min(v)) / med if med else 0.0
        print(f"{name:<22}{1000 * med:10.1f}{100 * spread:8.0f}%{med / ref:13.2f}x")


if __name__ == "__main__":
    main()
