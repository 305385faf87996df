"""Ready to attach: each probe's CO-RE object loaded, then BCC compiling the same C.

Run in the VM (BCC needs the kernel's headers, which the VM has):

    vm/run -- python bench/load_vs_compile.py [PROBE...]

For each probe (default: every built-in probe with a CO-RE build), the time
``compile_probe()`` takes with ``--loader core`` and then ``--loader bcc`` in the
same process and boot, side by side, and their ratio. sch_fq is loaded first (for
fq-throttle's attach points and BTF).
"""

from __future__ import annotations

import subprocess
import sys
import time

from tracekit.live.run import RunOptions, compile_probe
from tracekit.plugin.bus import build_bus

# Parameters the VM suite loads each probe with.
PARAMS = {"ooo-okay": {"all": "1"}}


def main(argv: list[str]) -> None:
    subprocess.run(["modprobe", "sch_fq"], check=True)
    bus = build_bus()
    names = argv or sorted(s.name for s in bus.probes if s.core)
    print("| probe | CO-RE object loaded | BCC compiled | ratio core / bcc |")
    print("| --- | --- | --- | --- |")
    for name in names:
        spec = bus.probes.get(name)
        params = spec.resolve_params(PARAMS.get(name, {}))
        took = {}
        for loader in ("core", "bcc"):
            t = time.monotonic()
            c = compile_probe(spec, params, RunOptions(quiet=True, loader=loader), True, True)
            took[loader] = time.monotonic() - t
            assert c.loader == loader, (name, c.loader)
            c.probe.close()
        ratio = took["core"] / took["bcc"]
        print(f"| {name} | {took['core']:.1f} s | {took['bcc']:.1f} s | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
