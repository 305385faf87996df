"""A TCP sender that moves itself between two CPUs, and the sink it sends to.

``test_txq_reselect.py`` runs ``serve`` in the receiver's namespace and ``send`` in
the sender's, each as ``python migrating_sender.py serve|send ...``, so that the test
decides when the socket's writes come from which CPU instead of guessing what iperf3
and the scheduler do.

``send`` writes one small message every ``period_ms`` with ``TCP_NODELAY`` (and the
namespace's autocorking off), so each write is transmitted in ``send()`` itself, on
the CPU the sender runs on, and picked there: XPS gives each CPU its own queue. It
moves itself to the other CPU (``os.sched_setaffinity``) every ``dwell_ms``.
``TCP_TX_DELAY`` holds each of its packets ``tx_delay_ms`` in fq (an earliest
departure time, without orphaning the skb as netem does), so a write made less than
that after the previous one finds that packet still in a host queue (write memory in
flight) and still unacknowledged: ``skb->ooo_okay`` stays clear, and only the
reselection timer can move the socket. The report (one JSON line) has, per dwell,
the CPU, when the sender got there, and the two gaps that decide whether the pipe
can have drained; and every gap between two writes that was long enough to drain it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
import termios
import time

TCP_TX_DELAY = 37  # linux/tcp.h; Python's socket module does not name it


def _cpu_now() -> int:
    # /proc/thread-self/stat field 39 ("processor"): the CPU the thread last ran on.
    # The comm field (2) may hold spaces, so count from after its closing parenthesis.
    with open("/proc/thread-self/stat") as f:
        stat = f.read()
    return int(stat.rsplit(")", 1)[1].split()[36])


def _unacked(s: socket.socket) -> int:
    """Bytes written but not yet acknowledged (SIOCOUTQ, alias TIOCOUTQ)."""
    buf = fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", buf)[0])


def serve(addr: str, port: int) -> None:
    """Accept one connection, read it to its end, report the bytes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(1)
        print("listening", flush=True)  # the test starts the sender on this line
        conn, _ = ls.accept()
        total = 0
        with conn:
            while chunk := conn.recv(65536):
                total += len(chunk)
    print(json.dumps({"bytes": total}), flush=True)


def send(
    addr: str,
    port: int,
    cpus: tuple[int, int],
    dwells: int,
    dwell_ms: float,
    period_ms: float,
    tx_delay_ms: float,
    size: int,
) -> dict[str, object]:
    os.sched_setaffinity(0, {cpus[0]})
    s = socket.create_connection((addr, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Set after the handshake, so the SYN is not held and the connection's first
    # pick happens on cpus[0] at once.
    s.setsockopt(socket.IPPROTO_TCP, TCP_TX_DELAY, int(tx_delay_ms * 1000))
    msg = b"x" * size
    period = int(period_ms * 1e6)
    delay = int(tx_delay_ms * 1e6)
    out: list[dict[str, int]] = []
    drains: list[int] = []
    sent = 0
    # Time before the previous send() began: the packet it made left fq no earlier
    # than this plus the delay.
    prev_start = 0
    for i in range(dwells):
        cpu = cpus[i % 2]
        os.sched_setaffinity(0, {cpu})  # returns once the thread runs on ``cpu``
        arrived = time.monotonic_ns()
        dwell = {"cpu": cpu, "ran_on": _cpu_now(), "t_ns": arrived, "gap_ns": 0}
        end = arrived + int(dwell_ms * 1e6)
        first = True
        nxt = arrived
        while True:
            now = time.monotonic_ns()
            if now >= end:
                break
            if nxt > now:
                time.sleep((nxt - now) / 1e9)
            start = time.monotonic_ns()
            s.sendall(msg)
            done = time.monotonic_ns()
            sent += 1
            # From before the previous write to after this one: an upper bound on the
            # time between the two packets' transmissions. Under the delay, the
            # previous packet was still in fq when this one was picked.
            gap = done - prev_start if prev_start else 0
            if gap >= delay:
                drains.append(done)
            if first:
                dwell["gap_ns"] = gap
                first = False
            prev_start = start
            # A late writer does not catch up in a burst: the next write is a period
            # after this one, whatever the schedule said.
            nxt = max(nxt + period, done)
        out.append(dwell)
    stopped = time.monotonic_ns()
    # The end without held packets: wait (polling the kernel's count) until every
    # byte is acknowledged, then lift the delay, so the FIN and the last ACK pass fq
    # at once and ``tc -s qdisc`` has counted every packet by the time this exits.
    deadline = stopped + 60 * 10**9
    while _unacked(s):
        if time.monotonic_ns() > deadline:
            raise SystemExit("sender: data still unacknowledged after 60 s")
        time.sleep(period / 4e9)
    s.setsockopt(socket.IPPROTO_TCP, TCP_TX_DELAY, 0)
    port_local = s.getsockname()[1]
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096):  # the sink closes once it has read everything: EOF
        pass
    s.close()
    return {
        "t_end_ns": stopped,
        "pid": os.getpid(),
        "sport": port_local,
        "sent": sent,
        "bytes": sent * size,
        "dwells": out,
        "drains_ns": drains,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["send"]:
        a, b = (int(c) for c in argv[3].split(","))
        report = send(
            argv[1],
            int(argv[2]),
            (a, b),
            int(argv[4]),
            float(argv[5]),
            float(argv[6]),
            float(argv[7]),
            int(argv[8]),
        )
        print(json.dumps(report), flush=True)
        return 0
    print(
        "usage: migrating_sender.py serve ADDR PORT | send ADDR PORT CPU,CPU DWELLS "
        "DWELL_MS PERIOD_MS TX_DELAY_MS SIZE",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
