"""Start-up to the first event, every built-in probe: tracekit (CO-RE) beside bpftrace.

Run in the VM, first thing after boot (cold caches are what a user meets):

    vm/run -- python bench/startup.py [--rounds N] [--probes txq-flip,...] [--bcc] [--baseline DIR]

One namespace lab (4-queue veth, an fq qdisc per queue with a low maxrate and
flow_limit, as fq-throttle's lab) carries traffic that fires every probe: a client
in A opens a new TCP connection to B every few milliseconds (each new socket's
first queue pick is a txq-flip event, its SYN and ACK leave through ip_queue_xmit
with ooo_okay set, every packet is a netif_receive_skb on the other side) and sends
bursts of UDP datagrams above fq's maxrate (fq throttles the flow: fq-throttle
events). Each command is timed from its launch to the first event it prints:
``tracekit run PROBE --sink console --loader core`` beside a bpftrace one-liner on
the same attach point (a kprobe on the same function, or the same tracepoint).

Before every command the guest's page cache, dentries and inodes are dropped (in
the VM only), so each run reads its interpreter, libraries and modules afresh, as the
first run after a boot does. Rounds are interleaved (each round runs every case
once, tracekit and bpftrace alternating which goes first); the table gives the
first round (first runs after boot) and the median of all rounds.

``--baseline DIR`` adds ``tracekit (baseline)``: the same command run from an
earlier tree of the project, for before/after figures in one boot. DIR holds that
tree's files, with its ``plugins`` and ``probes`` linked into its package as an
install would place them (run from DIR, Python imports that tree, not this one)::

    git archive BASE | tar -x -C DIR
    ln -s ../plugins DIR/tracekit/plugins; ln -s ../probes DIR/tracekit/probes
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tracekit.lab.netns import ADDR_B, NetnsLab

# probe -> the bpftrace program on the same attach point (its first action prints).
BPFTRACE = {
    "txq-flip": 'kprobe:netdev_pick_tx { printf("%d\\n", cpu); }',
    "ooo-okay": 'kprobe:ip_queue_xmit { printf("%d\\n", cpu); }',
    "fq-throttle": 'kprobe:fq_dequeue { printf("%d\\n", cpu); }',
    "rss-cpu": 'tracepoint:net:netif_receive_skb { printf("%d\\n", cpu); }',
}
# fq paces every flow to MAXRATE: the UDP bursts below exceed it, so fq throttles.
FQ_ARGS = ("flow_limit", "10", "maxrate", "1mbit")

SERVER = (
    "import select, socket\n"
    "t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"t.bind(('{ADDR_B}', 7000)); t.listen(128)\n"
    "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"u.bind(('{ADDR_B}', 7001))\n"
    "while True:\n"
    "    for s in select.select([t, u], [], [])[0]:\n"
    "        if s is t:\n"
    "            c, _ = t.accept(); c.close()\n"
    "        else:\n"
    "            u.recv(2048)\n"
)
CLIENT = (
    "import socket, time\n"
    "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "u.setblocking(False)  # a full send buffer must not stall the connects\n"
    "while True:\n"
    "    c = socket.socket()\n"
    "    try:\n"
    f"        c.connect(('{ADDR_B}', 7000))\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
    "    for _ in range(3):\n"
    "        try:\n"
    f"            u.sendto(b'x' * 1400, ('{ADDR_B}', 7001))\n"
    "        except OSError:\n"
    "            pass\n"
    "    time.sleep(0.005)\n"
)


def drop_caches() -> None:
    """Forget cached files (as after a boot): each command reads its binaries afresh.
    Only in the VM (vm/run sets TRACEKIT_IN_VM): on a shared host it would slow others."""
    if os.environ.get("TRACEKIT_IN_VM") and os.geteuid() == 0:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def first_event(cmd: list[str], header: str, cwd: str | None = None) -> float:
    """Seconds from launching ``cmd`` to its first line that is an event (not blank,
    not starting with ``header``: tracekit's column titles, bpftrace's Attaching)."""
    drop_caches()
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd)
    assert p.stdout is not None
    try:
        for line in p.stdout:
            if line.strip() and not line.lstrip().startswith(header):
                return time.monotonic() - t
        raise SystemExit(f"{' '.join(cmd)}: ended before its first event")
    finally:
        p.terminate()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


Case = tuple[list[str], str, str | None]  # command, header to skip, where to run it


def cases(probes: list[str], bcc: bool, baseline: str | None) -> dict[str, Case]:
    tk = [sys.executable, "-m", "tracekit", "run"]
    out: dict[str, Case] = {}
    for probe in probes:
        core = [*tk, probe, "--sink", "console", "--loader", "core"]
        out[f"tracekit {probe}"] = (core, "ts", None)
        if baseline:
            out[f"tracekit (baseline) {probe}"] = (core, "ts", baseline)
        out[f"bpftrace {probe}"] = (["bpftrace", "-e", BPFTRACE[probe]], "Attach", None)
        if bcc:
            out[f"tracekit-bcc {probe}"] = ([*core[:-1], "bcc"], "ts", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probes", default=",".join(BPFTRACE), help="comma-separated")
    ap.add_argument("--bcc", action="store_true", help="also --loader bcc (minutes a probe)")
    ap.add_argument("--qdisc", default="fq", help="fq (fq-throttle needs it) or pfifo_fast")
    ap.add_argument("--baseline", metavar="DIR", help="an earlier tree to compare (see above)")
    ap.add_argument(
        "--importtime",
        metavar="FILE",
        help="after the rounds, run the first probe once more under python -X importtime, "
        "its stderr to FILE",
    )
    args = ap.parse_args()
    probes = [p for p in args.probes.split(",") if p]
    unknown = [p for p in probes if p not in BPFTRACE]
    if unknown:
        raise SystemExit(f"no bpftrace twin for {unknown}; known: {list(BPFTRACE)}")
    baseline = os.path.abspath(args.baseline) if args.baseline else None
    if baseline and not os.path.isdir(os.path.join(baseline, "tracekit", "plugins")):
        raise SystemExit(f"{baseline}: no tracekit/plugins there (see --baseline in the doc)")
    todo = cases(probes, args.bcc, baseline)
    times: dict[str, list[float]] = {name: [] for name in todo}
    qargs = FQ_ARGS if args.qdisc == "fq" else ()
    with NetnsLab(txqueues=4, qdisc=args.qdisc, qdisc_args=qargs) as lab:
        lab.popen(lab.ns_b, sys.executable, "-c", SERVER)
        # Connects that find no listener yet fail and are retried: no wait needed.
        lab.popen(lab.ns_a, sys.executable, "-c", CLIENT)
        for r in range(args.rounds):
            for probe in probes:
                names = [n for n in todo if n.endswith(f" {probe}")]
                if r % 2:  # alternate which tool meets the probe first
                    names.reverse()
                for name in names:
                    cmd, header, cwd = todo[name]
                    times[name].append(first_event(cmd, header, cwd))
                    print(f"round {r + 1}  {name:<40}{times[name][-1]:8.2f} s", flush=True)
        if args.importtime:
            # The imports of one more run (stopping by itself a moment after attach).
            cmd = [sys.executable, "-X", "importtime", *todo[f"tracekit {probes[0]}"][0][1:]]
            drop_caches()
            with open(args.importtime, "w") as err:
                subprocess.run([*cmd, "--duration", "1"], stdout=subprocess.DEVNULL, stderr=err)
    print()
    print(
        "| probe | tracekit (CO-RE): round 1 | bpftrace: round 1 | ratio | "
        f"tracekit: median of {args.rounds} | bpftrace: median | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for probe in probes:
        tk, bt = times[f"tracekit {probe}"], times[f"bpftrace {probe}"]
        mt, mb = statistics.median(tk), statistics.median(bt)
        print(
            f"| {probe} | {tk[0]:.2f} s | {bt[0]:.2f} s | {tk[0] / bt[0]:.2f}x | "
            f"{mt:.2f} s | {mb:.2f} s | **{mt / mb:.2f}x** |"
        )
    for kind in ("tracekit (baseline)", "tracekit-bcc"):
        for probe in probes:
            if f"{kind} {probe}" not in times:
                continue
            v = times[f"{kind} {probe}"]
            mv = statistics.median(v)
            mt = statistics.median(times[f"tracekit {probe}"])
            mb = statistics.median(times[f"bpftrace {probe}"])
            print(
                f"{kind} {probe}: round 1 {v[0]:.2f} s, median {mv:.2f} s = {mv / mb:.2f}x "
                f"bpftrace; tracekit / {kind}: {mt / mv:.2f}"
            )


if __name__ == "__main__":
    main()
