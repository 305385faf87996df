"""Start-up to the first event: tracekit's CO-RE loader, its BCC loader, bpftrace.

Run in the VM, first thing after boot (cold caches are what a user meets):

    vm/run -- python bench/startup.py

A namespace lab (4-queue veth, as txq-flip's) with a client in A opening a new TCP
connection to B every few milliseconds: each new socket's first queue pick is a
txq-flip event (queue none -> n), and every pick is a netdev_pick_tx call for
bpftrace. Each command is timed from its launch to the first event it prints, in
the same boot, side by side.
"""

from __future__ import annotations

import subprocess
import sys
import time

from tracekit.lab.netns import ADDR_B, NetnsLab

SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('{ADDR_B}', 7000)); s.listen(128)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.close()\n"
)
CLIENT = (
    "import socket, time\n"
    "while True:\n"
    "    c = socket.socket()\n"
    "    try:\n"
    f"        c.connect(('{ADDR_B}', 7000))\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close(); time.sleep(0.005)\n"
)


def first_event(cmd: list[str], header: str) -> float:
    """Seconds from launching ``cmd`` to its first line that is an event (not blank,
    not starting with ``header``: tracekit's column titles, bpftrace's Attaching)."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None
    try:
        for line in p.stdout:
            if line.strip() and not line.lstrip().startswith(header):
                return time.monotonic() - t
        raise SystemExit(f"{cmd[0]} ended before its first event")
    finally:
        p.terminate()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    tk = [sys.executable, "-m", "tracekit", "run", "txq-flip", "--sink", "console"]
    cases = {
        "tracekit run txq-flip --loader core": ([*tk, "--loader", "core"], "ts"),
        "tracekit run txq-flip --loader bcc": ([*tk, "--loader", "bcc"], "ts"),
        "bpftrace kprobe:netdev_pick_tx printf": (
            ["bpftrace", "-e", 'kprobe:netdev_pick_tx { printf("%d\\n", cpu); }'],
            "Attach",
        ),
    }
    out: dict[str, float] = {}
    with NetnsLab(txqueues=4, qdisc="fq") as lab:
        lab.popen(lab.ns_b, sys.executable, "-c", SERVER)
        # Connects that find no listener yet fail and are retried: no wait needed.
        lab.popen(lab.ns_a, sys.executable, "-c", CLIENT)
        for name, (cmd, header) in cases.items():
            out[name] = first_event(cmd, header)
            print(f"{name:<40}{out[name]:8.2f} s", flush=True)
    bt = out["bpftrace kprobe:netdev_pick_tx printf"]
    for name, v in out.items():
        print(f"ratio {name} / bpftrace: {v / bt:.2f}")


if __name__ == "__main__":
    main()
